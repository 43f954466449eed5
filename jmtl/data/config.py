"""Suite configs: the mapping a user writes, checked and turned into dataclasses.

The keys are documented in the docstring of ``jmtl.data``. Every error names the
offending key (``tasks[1].columns`` ...), so a typo never passes silently.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jmtl.data.errors import DataError
from jmtl.names import nearest
from jmtl.tasks import TaskKind, valid_metrics

SPLITS = ("train", "validation", "test")
# Kept for callers of the old name: the task kinds are ``jmtl.tasks.TaskKind``.
KINDS = tuple(TaskKind)
FORMATS = ("conll", "conllu", "csv", "tsv", "jsonl", "folders", "text", "tfds", "squad")
LAYOUTS = ("same_input", "multi_input")

# CoNLL-U columns a task may name, plus ``comment:KEY`` for a sentence label.
CONLLU_FIELDS = ("upos", "xpos", "deprel", "feats", "lemma", "head_distance")

_SOURCE_KEYS = {"format", "files", "split_ratio", "split_seed", "encoding"}
_FORMAT_KEYS = {
    "conll": {"columns", "separator"},
    "conllu": set(),
    "csv": {"text", "text_pair", "header", "delimiter", "entity_spans", "entity_markers"},
    "tsv": {"text", "text_pair", "header", "delimiter", "entity_spans", "entity_markers"},
    "jsonl": {"text", "text_pair", "tokens", "entity_spans", "entity_markers"},
    "folders": {"glob"},
    "text": set(),
    "tfds": {"dataset", "tfds_data_dir", "splits", "text", "text_pair", "tokens"},
    "squad": {"squad_version", "doc_stride", "max_query_len", "max_answer_length",
              "null_threshold"},
}
_ALL_FORMAT_KEYS = set().union(*_FORMAT_KEYS.values())
_TASK_KEYS = {"name", "kind", "label", "labels", "on_unseen_label", "max_head_distance",
              "metrics", "main_metric", "higher_is_better", "threshold", "label_separator"}
_SUITE_KEYS = {"name", "layout", "tasks", "source", "root"}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """One task of a suite, before the data has been read.

  Attributes:
    name: task name, unique in the suite; also its feature key in the dataset.
    kind: a ``TaskKind``.
    label: where the label is in the source (a column, key or CoNLL-U field).
    labels: an explicit, ordered label set, or None to take it from train.
    on_unseen_label: "error" or "unk" for a dev/test label missing from train.
    max_head_distance: clip of the signed head offset (CoNLL-U ``head_distance``).
    spec: extra ``TaskSpec`` fields (metrics, main_metric, higher_is_better, threshold).
    label_separator: multi_label in csv/tsv: the separator of labels in one cell.
  """

  name: str
  kind: TaskKind
  label: str | int
  labels: tuple[str, ...] | None = None
  on_unseen_label: str = "error"
  max_head_distance: int = 8
  spec: tuple[tuple[str, Any], ...] = ()
  label_separator: str = "|"

  @property
  def token_level(self) -> bool:
    return self.kind == TaskKind.TAGGING

  @property
  def label_lists(self) -> bool:
    """Whether a label is a list of names (tags per word, or a multi-label set)."""
    return self.kind in (TaskKind.TAGGING, TaskKind.MULTI_LABEL)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """Files of one input dataset and the tasks labelled on it.

  Attributes:
    name: the TFDS dataset name (a sanitised task or suite name).
    format: one of ``FORMATS``.
    files: split -> paths; the pseudo-split "all" is divided by ``split_ratio``.
    split_ratio: split -> fraction, for splits carved from "all" or "train".
    split_seed: seed of that division.
    options: the format's own keys (columns, separator, text, ...).
    tasks: tasks labelled on this source.
    where: config path of this source, for error messages.
  """

  name: str
  format: str
  files: tuple[tuple[str, tuple[Path, ...]], ...]
  split_ratio: tuple[tuple[str, float], ...] | None
  split_seed: int
  options: tuple[tuple[str, Any], ...]
  tasks: tuple[TaskConfig, ...]
  where: str

  def option(self, key: str, default: Any = None) -> Any:
    return dict(self.options).get(key, default)

  @property
  def token_level(self) -> bool:
    """Whether examples are word lists (else raw text)."""
    if self.format in ("conll", "conllu"):
      return True
    return self.format in ("jsonl", "tfds") and self.option("tokens") is not None


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  name: str
  layout: str
  sources: tuple[SourceConfig, ...]

  @property
  def tasks(self) -> tuple[TaskConfig, ...]:
    return tuple(t for s in self.sources for t in s.tasks)


def dataset_name(name: str) -> str:
  """A TFDS-valid dataset name (snake_case identifier) for a task or suite name."""
  clean = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") or "data"
  return clean if clean[0].isalpha() else f"d_{clean}"


def _check_keys(mapping: Mapping, allowed: set[str], where: str,
                elsewhere: Mapping[str, str] | None = None) -> None:
  """Refuses keys outside ``allowed``; ``elsewhere`` maps a key that is valid in
  another place to where it belongs, and a typo gets the nearest valid key."""
  for key in sorted(set(mapping) - allowed, key=str):
    if elsewhere and key in elsewhere:
      raise DataError(f"{where}.{key}: {elsewhere[key]}")
    close = nearest(key, sorted(allowed))
    hint = f"did you mean {close!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
    raise DataError(f"{where}.{key}: unknown key; {hint}")


def _check_source_keys(mapping: Mapping, allowed: set[str], where: str) -> None:
  """Keys of a source (or a multi-input task): typos first, then keys that only
  another format reads, so a misspelt ``format`` is named as such."""
  _check_keys(mapping, allowed | _SOURCE_KEYS | _ALL_FORMAT_KEYS, where)
  fmt = mapping.get("format")
  if fmt in _FORMAT_KEYS:
    own = _FORMAT_KEYS[fmt]
    reads = f"it reads {', '.join(sorted(own))}" if own else "it has no options"
    _check_keys(mapping, allowed | _SOURCE_KEYS | own, where, dict.fromkeys(
        _ALL_FORMAT_KEYS - own, f"not an option of format {fmt!r} ({reads})"))


def _require(mapping: Mapping, key: str, where: str, kind: type | tuple = str) -> Any:
  if key not in mapping:
    raise DataError(f"{where}.{key}: required key is missing")
  value = mapping[key]
  if not isinstance(value, kind) or (isinstance(value, str) and not value):
    raise DataError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
  return value


def _paths(value: Any, root: Path, where: str) -> tuple[Path, ...]:
  values = [value] if isinstance(value, (str, os.PathLike)) else value
  if not isinstance(values, Sequence) or not values:
    raise DataError(f"{where}: expected a path or a list of paths, got {value!r}")
  return tuple((root / Path(v)).expanduser() for v in values)


def _parse_files(source: Mapping, root: Path, where: str):
  files = source.get("files")
  if source.get("format") == "tfds":
    return (), None  # a named TFDS dataset has no local files
  if files is None:
    raise DataError(f"{where}.files: required key is missing")
  if isinstance(files, Mapping):
    bad = sorted(set(files) - set(SPLITS))
    if bad:
      raise DataError(f"{where}.files.{bad[0]}: unknown split (use {', '.join(SPLITS)})")
    if "train" not in files:
      raise DataError(f"{where}.files.train: required key is missing")
    parsed = {split: _paths(v, root, f"{where}.files.{split}") for split, v in files.items()}
  else:
    parsed = {"all": _paths(files, root, f"{where}.files")}
  ratio = source.get("split_ratio")
  if ratio is None:
    if "all" in parsed:
      raise DataError(f"{where}.split_ratio: required when files is not a split mapping")
    return tuple(parsed.items()), None
  if not isinstance(ratio, Mapping) or not ratio:
    raise DataError(f"{where}.split_ratio: expected a mapping split -> fraction")
  for split, fraction in ratio.items():
    if split not in SPLITS:
      raise DataError(f"{where}.split_ratio.{split}: unknown split (use {', '.join(SPLITS)})")
    if split != "train" and split in parsed:
      raise DataError(f"{where}.split_ratio.{split}: that split already has its own file")
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1 + 1e-9:
      raise DataError(f"{where}.split_ratio.{split}: expected a fraction in (0, 1]")
  if "train" not in ratio or abs(sum(ratio.values()) - 1.0) > 1e-6:
    raise DataError(f"{where}.split_ratio: fractions must include train and sum to 1")
  return tuple(parsed.items()), tuple((s, float(f)) for s, f in ratio.items())


def _parse_task(task: Mapping, fmt: str, where: str) -> TaskConfig:
  name = _require(task, "name", where)
  kind = _require(task, "kind", where)
  if kind not in tuple(TaskKind):
    raise DataError(f"{where}.kind: {kind!r} is not one of {', '.join(TaskKind)}")
  kind = TaskKind(kind)
  default_label = {"conll": name, "conllu": name, "folders": "folder"}.get(fmt, "label")
  label = task.get("label", default_label)
  if not isinstance(label, (str, int)) or label == "":
    raise DataError(f"{where}.label: expected a column or key name, got {label!r}")
  if fmt == "conllu" and kind != TaskKind.MLM:
    ok = label in CONLLU_FIELDS or (isinstance(label, str) and label.startswith("comment:"))
    if not ok:
      raise DataError(f"{where}.label: CoNLL-U field {label!r} is not one of "
                      f"{', '.join(CONLLU_FIELDS)} or comment:KEY")
  labels = task.get("labels")
  if labels is not None:
    if (not isinstance(labels, Sequence) or isinstance(labels, str) or not labels
        or len(set(labels)) != len(labels)):
      raise DataError(f"{where}.labels: expected a list of distinct label names")
    labels = tuple(str(x) for x in labels)
  unseen = task.get("on_unseen_label", "error")
  if unseen not in ("error", "unk"):
    raise DataError(f"{where}.on_unseen_label: expected 'error' or 'unk', got {unseen!r}")
  distance = task.get("max_head_distance", 8)
  if not isinstance(distance, int) or distance < 1:
    raise DataError(f"{where}.max_head_distance: expected a positive integer")
  spec = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(task.items())
               if k in ("metrics", "main_metric", "higher_is_better", "threshold"))
  threshold = task.get("threshold", 0.5)
  if kind != TaskKind.MULTI_LABEL and "threshold" in task:
    raise DataError(f"{where}.threshold: only a multi_label task has a threshold")
  if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
    raise DataError(f"{where}.threshold: expected a number in (0, 1), got {threshold!r}")
  separator = task.get("label_separator", "|")
  if kind != TaskKind.MULTI_LABEL and "label_separator" in task:
    raise DataError(f"{where}.label_separator: only a multi_label task has one")
  if not isinstance(separator, str) or not separator:
    raise DataError(f"{where}.label_separator: expected a non-empty string")
  metrics = dict(spec).get("metrics", ())
  metrics = [metrics] if isinstance(metrics, str) else metrics
  if unknown := [m for m in metrics if m not in valid_metrics(kind)]:
    raise DataError(f"{where}.metrics: unknown metric(s) {unknown} for a {kind} task; "
                    f"valid metrics are {list(valid_metrics(kind))}")
  return TaskConfig(name=name, kind=kind, label=label,
                    labels=labels, on_unseen_label=unseen, max_head_distance=distance,
                    spec=spec, label_separator=separator)


def _parse_source(source: Mapping, tasks: Sequence[Mapping], name: str, root: Path,
                  where: str, task_where: Sequence[str]) -> SourceConfig:
  fmt = _require(source, "format", where)
  if fmt not in FORMATS:
    raise DataError(f"{where}.format: {fmt!r} is not one of {', '.join(FORMATS)}")
  files, ratio = _parse_files(source, root, where)
  parsed_tasks = tuple(_parse_task(t, fmt, w) for t, w in zip(tasks, task_where))
  options = {k: source[k] for k in _FORMAT_KEYS[fmt] if k in source}
  options["encoding"] = source.get("encoding", "utf-8")
  try:
    codecs.lookup(options["encoding"])
  except (LookupError, TypeError):
    raise DataError(f"{where}.encoding: unknown encoding {options['encoding']!r} (e.g. "
                    "\"utf-8\", \"latin-1\", \"cp1252\")") from None
  if fmt == "conll":
    columns = _require(source, "columns", where, Mapping)
    if "token" not in columns:
      raise DataError(f"{where}.columns.token: required key is missing")
    for key, index in columns.items():
      if not isinstance(index, int) or index < 0:
        raise DataError(f"{where}.columns.{key}: expected a column index >= 0, got {index!r}")
    for task, w in zip(parsed_tasks, task_where):
      if task.kind != TaskKind.MLM and task.label not in columns:
        raise DataError(f"{w}.label: column {task.label!r} is not in {where}.columns")
    options["columns"] = tuple(sorted(columns.items()))
  if fmt == "tfds":
    _require(source, "dataset", where)
  for key in ("entity_spans", "entity_markers"):
    value = options.get(key)
    if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 4
                              or len(set(value)) != 4 or not all(value)):
      raise DataError(f"{where}.{key}: expected four distinct names (e1 start, e1 end, "
                      f"e2 start, e2 end), got {value!r}")
    if value is not None:
      if "tokens" in options:
        raise DataError(f"{where}.{key}: entity markers go into text input, not 'tokens'")
      options[key] = tuple(value)
  for key in ("doc_stride", "max_query_len", "max_answer_length"):
    if key in options and (not isinstance(options[key], int) or options[key] < 1):
      raise DataError(f"{where}.{key}: expected a positive integer, got {options[key]!r}")
  if options.get("squad_version") not in (None, "1.1", "2.0"):
    raise DataError(f"{where}.squad_version: expected \"1.1\" or \"2.0\"")
  if not isinstance(options.get("null_threshold", 0.0), (int, float)):
    raise DataError(f"{where}.null_threshold: expected a number (the no-answer margin)")
  if fmt in ("csv", "tsv", "jsonl", "tfds") and "tokens" not in options:
    options.setdefault("text", "text")
  seed = source.get("split_seed", 0)
  if not isinstance(seed, int):
    raise DataError(f"{where}.split_seed: expected an integer, got {seed!r}")
  config = SourceConfig(name=dataset_name(name), format=fmt, files=files, split_ratio=ratio,
                        split_seed=seed, options=tuple(sorted(options.items())),
                        tasks=parsed_tasks, where=where)
  if fmt == "squad" and len(parsed_tasks) != 1:
    raise DataError(f"{where}: a squad source holds one span_qa task, got {len(parsed_tasks)}")
  for task, w in zip(parsed_tasks, task_where):
    if task.kind == TaskKind.TAGGING and not config.token_level:
      raise DataError(f"{w}.kind: a tagging task needs word-level input "
                      f"(conll, conllu, or jsonl/tfds with 'tokens'), not {fmt}")
    if fmt == "folders" and task.kind != TaskKind.CLASSIFICATION:
      raise DataError(f"{w}.kind: a folders source only gives classification labels")
    if fmt == "text" and task.kind != TaskKind.MLM:
      raise DataError(f"{w}.kind: a text source has no labels; only mlm reads it")
    if task.kind == TaskKind.MULTI_LABEL and fmt not in ("csv", "tsv", "jsonl"):
      raise DataError(f"{w}.kind: multi_label reads csv/tsv (label_separator) or jsonl "
                      f"(a list), not {fmt}")
    if (task.kind == TaskKind.SPAN_QA) != (fmt == "squad"):
      raise DataError(f"{w}.kind: span_qa tasks read SQuAD JSON (format squad) and a squad "
                      f"source has only span_qa tasks; got a {task.kind} task on {fmt}")
  return config


def parse_suite(config: Mapping) -> SuiteConfig:
  """Checks a suite mapping (see ``jmtl.data``) and returns a ``SuiteConfig``.

  Reads no file: a schema error surfaces before any download or build.
  """
  if not isinstance(config, Mapping):
    raise DataError(f"suite config: expected a mapping, got {type(config).__name__}")
  _check_keys(config, _SUITE_KEYS, "suite", dict.fromkeys(
      _TASK_KEYS | _SOURCE_KEYS | _ALL_FORMAT_KEYS, "belongs to a task (or to 'source')"))
  name = _require(config, "name", "suite")
  if "/" in name or name.startswith((".", "_")):
    raise DataError(f"suite.name: {name!r} cannot be a folder name")
  layout = config.get("layout", "multi_input")
  if layout not in LAYOUTS:
    raise DataError(f"suite.layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
  tasks = _require(config, "tasks", "suite", (list, tuple))
  if not tasks:
    raise DataError("suite.tasks: needs at least one task")
  root = Path(config.get("root", ".")).expanduser()
  task_where = [f"tasks[{i}]" for i in range(len(tasks))]
  source_keys = _SOURCE_KEYS | _ALL_FORMAT_KEYS
  for task, where in zip(tasks, task_where):
    if not isinstance(task, Mapping):
      raise DataError(f"{where}: expected a mapping, got {task!r}")
    if layout == "same_input":
      _check_keys(task, _TASK_KEYS, where, dict.fromkeys(
          source_keys, "a same_input suite reads its input from 'source'; move the key there"))
    else:
      _check_source_keys(task, _TASK_KEYS, where)
  names = [_require(t, "name", w) for t, w in zip(tasks, task_where)]
  for i, task_name in enumerate(names):
    if task_name == "tokenizer":  # a key of Suite.fingerprints
      raise DataError(f"{task_where[i]}.name: 'tokenizer' is reserved; choose another name")
    if task_name in names[:i]:
      raise DataError(f"{task_where[i]}.name: duplicate task name {task_name!r}")
  if layout == "same_input":
    source = _require(config, "source", "suite", Mapping)
    _check_source_keys(source, set(), "source")
    for task, where in zip(tasks, task_where):
      if task.get("kind") == TaskKind.MLM:
        raise DataError(f"{where}.kind: mlm needs its own input; use layout multi_input")
    sources = (_parse_source(source, tasks, name, root, "source", task_where),)
  else:
    if "source" in config:
      raise DataError("suite.source: only a same_input suite has one shared source")
    sources = []
    for task, where in zip(tasks, task_where):
      src = {k: v for k, v in task.items() if k not in _TASK_KEYS}
      sources.append(_parse_source(src, [task], task["name"], root, where, [where]))
    sources = tuple(sources)
    dataset_names = [s.name for s in sources]
    if len(set(dataset_names)) != len(dataset_names):
      raise DataError(f"suite.tasks: task names {names} clash once made dataset names "
                      f"{dataset_names}")
  return SuiteConfig(name=name, layout=layout, sources=sources)


def build_trigger(config: Mapping, suite: SuiteConfig) -> str:
  """Hash of the config and of the size and mtime of every input file.

  Cheap (no file is read): a changed file or config rebuilds the suite on the
  next load. What the data IS is ``jmtl.data.fingerprints``' job.
  """
  digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
  for source in suite.sources:
    for _, paths in source.files:
      for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
          if file.exists():
            stat = file.stat()
            digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
  return digest.hexdigest()

"""``prepare`` and ``load_suite``: from a suite name or config to a ``Suite``."""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jmtl.data import fingerprints, report, spec
from jmtl.data.config import SPLITS, SuiteConfig, TaskConfig, parse_suite
from jmtl.data.errors import DataError
from jmtl.data.feed import encode, tokenize
from jmtl.data.feed.pipeline import Suite, _Source
from jmtl.data.sources import extras, store, suites
from jmtl.data.sources.builders import relations
from jmtl.tasks import TaskKind, TaskSpec

SUITES = tuple(suites.STAGES) + tuple(extras.STAGES)
Log = Callable[[str], None]


def _ensure(suite: str | Mapping[str, Any], data_dir, *, force: bool, log: Log):
  if spec.is_suite_file(suite):  # schema errors name the file, before any work
    spec.validate_suite_spec(suite)
    suite = spec.read_suite_file(suite)
  data_dir = store.resolve(data_dir)
  if isinstance(suite, Mapping):
    name = suite.get("name")
    if not isinstance(name, str) or not name:
      raise DataError("suite.name: required key is missing")
    return data_dir, store.ensure(suite, data_dir, name, force=force, log=log)
  if suite in suites.STAGES or suite in extras.STAGES:
    stage = suites.STAGES.get(suite) or extras.STAGES[suite]
    version = suites.VERSIONS.get(suite) or extras.VERSIONS[suite]
    downloads = data_dir / "_downloads"
    return data_dir, store.ensure(None, data_dir, suite, fingerprint=version, force=force,
                                  stage=lambda raw: stage(raw, downloads, log), log=log)
  manifest = store.read_manifest(data_dir / str(suite))
  if manifest is None:
    raise DataError(f"suite {suite!r}: not a built-in suite ({', '.join(SUITES)}) and not "
                    f"built in {data_dir}; pass a suite .json file or mapping to build it")
  return data_dir, (parse_suite(manifest["config"]), manifest)


def prepare(suite: str | Mapping[str, Any], data_dir: str | os.PathLike | None = None, *,
            force: bool = False, log: Log = print, min_label_count: int = 5,
            **tokenizer: Any) -> dict[str, dict[str, int]]:
  """Builds (or reuses) a suite, tokenizes it, and reports what is in it.

  Args:
    suite: a name in ``SUITES``, a suite ``.json`` file, or a suite config
      mapping (see ``jmtl.data``).
    data_dir: defaults to ``$JMTL_DATA_DIR`` or ``~/.cache/jmtl/data``.
    force: rebuild even when an up-to-date build exists.
    log: receives the build's progress, then per task and split the examples,
      labels with their counts, truncation, and label warnings
      (``jmtl.data.report``).
    min_label_count: labels seen fewer times in train are warned about.
    **tokenizer: ``max_len``, ``lowercase``, ``vocab_size``, ``vocab_file`` as in
      ``load_suite`` (they decide truncation).

  Returns:
    ``{task: {"train": n, "validation": n, "test": n, "labels": k}}``.
  """
  data_dir, (parsed, manifest) = _ensure(suite, data_dir, force=force, log=log)
  loaded = _tokenized(parsed, manifest, data_dir, log=log, **tokenizer)
  for line in report.prepare_lines(loaded, manifest, min_label_count):
    log(line)
  return store.summary(parsed, manifest, loaded.vocab_size)


def _spec(task: TaskConfig, entry: Mapping[str, Any], vocab_size: int) -> TaskSpec:
  extra = dict(task.spec)
  if "metrics" in extra:
    extra["metrics"] = tuple(extra["metrics"])
  if task.kind == TaskKind.MLM:
    return TaskSpec(task.name, task.kind, num_labels=vocab_size, **extra)
  if task.kind in (TaskKind.REGRESSION, TaskKind.SPAN_QA):
    return TaskSpec(task.name, task.kind, **extra)
  names = tuple(entry["labels"][task.name])
  return TaskSpec(task.name, task.kind, num_labels=len(names), label_names=names, **extra)


def load_suite(name_or_config: str | Mapping[str, Any],
               data_dir: str | os.PathLike | None = None, *, max_len: int = 64,
               lowercase: bool = True, vocab_size: int = 8000,
               vocab_file: str | os.PathLike | None = None,
               buckets: Sequence[int] = (16, 32, 64), log: Log = print) -> Suite:
  """A tokenized ``Suite``, preparing it first if needed.

  Args:
    name_or_config: a name in ``SUITES``, the name of a suite built earlier in
      ``data_dir``, a suite ``.json`` file, or a config mapping describing
      local files.
    data_dir: defaults to ``$JMTL_DATA_DIR`` or ``~/.cache/jmtl/data``.
    max_len: longest sequence in tokens, [CLS] and [SEP] included.
    lowercase: lowercase before WordPiece.
    vocab_size: size of the WordPiece vocabulary trained on the suite.
    vocab_file: a BERT ``vocab.txt`` to use instead of training one.
    buckets: padded lengths of batches (``max_len`` is always added).
    log: receives progress and truncation lines.
  """
  data_dir, (parsed, manifest) = _ensure(name_or_config, data_dir, force=False, log=log)
  suite = _tokenized(parsed, manifest, data_dir, max_len=max_len, lowercase=lowercase,
                     vocab_size=vocab_size, vocab_file=vocab_file, buckets=buckets, log=log)
  for source in suite.sources:
    cut = {split: int(data.truncated.sum()) for split, data in source.splits.items()}
    if any(cut.values()):
      log(f"{parsed.name}/{','.join(t.name for t in source.tasks)}: truncated to "
          f"max_len={max_len}: " + ", ".join(
              f"{split} {count}/{len(source.splits[split])}" for split, count in cut.items()))
    cut_answers = {split: int(data.qa["cut_off"]) for split, data in source.splits.items()
                   if "cut_off" in data.qa}
    if any(cut_answers.values()):
      log(f"{parsed.name}/{source.tasks[0].name}: answers cut in two by a window (those "
          "windows are labelled no-answer; a smaller doc_stride or larger max_len avoids it): "
          + ", ".join(f"{split} {count}" for split, count in cut_answers.items()))
  return suite


def _tokenized(parsed: SuiteConfig, manifest: Mapping[str, Any], data_dir: Path, *,
               max_len: int = 64, lowercase: bool = True, vocab_size: int = 8000,
               vocab_file: str | os.PathLike | None = None,
               buckets: Sequence[int] = (16, 32, 64), log: Log = print) -> Suite:
  suite_dir = data_dir / parsed.name
  read = encode.SplitReader()
  if vocab_file is not None:
    tokenizer = tokenize.from_vocab_file(vocab_file, lowercase=lowercase)
  else:
    tokenizer = encode.tokenizer_for(suite_dir, parsed, manifest, vocab_size=vocab_size,
                                    lowercase=lowercase, log=log, read=read)
  # Entity markers of relation sources are special tokens, so WordPiece never splits them.
  markers = sorted({m for source in parsed.sources for m in relations.markers_of(source)})
  if markers:
    tokenizer.add_special_tokens(markers)
  wordpiece = tokenize.WordPiece(tokenizer, max_len)
  key = encode.cache_key(tokenizer.to_str(), max_len)
  sources = []
  for source, entry in zip(parsed.sources, manifest["sources"]):
    splits = {split: encode.load_or_encode(suite_dir, source, entry, split, wordpiece, key,
                                          read=read)
              for split in SPLITS if split in entry["sizes"]}
    specs = tuple(_spec(task, entry, wordpiece.vocab_size) for task in source.tasks)
    sources.append(_Source(source, specs, splits))
  identity = {fingerprints.TOKENIZER: fingerprints.tokenizer_fingerprint(
      tokenizer.get_vocab(), lowercase=lowercase, vocab_file=vocab_file)}
  identity.update(fingerprints.task_fingerprints(parsed.sources, manifest["sources"],
                                                 where=str(suite_dir)))
  return Suite(parsed.name, parsed.layout, sources, wordpiece, buckets, fingerprints=identity)

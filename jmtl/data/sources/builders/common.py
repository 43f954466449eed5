"""Parsed examples, split division, label sets, and the TFDS array_record builder.

Readers (``conll``, ``conllu``, ``tabular``, ``folders``) turn files into
``Example``s and raise ``DataError`` at the first bad line. This module checks
the splits and label sets, then writes one TFDS dataset per source with
``file_format="array_record"``, read back with ``tfds.data_source`` (no
TensorFlow needed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import types
from pathlib import Path
from typing import Any

import numpy as np

from jmtl.data import report
from jmtl.data.config import SPLITS, SourceConfig, TaskConfig
from jmtl.data.errors import DataError, at
from jmtl.data.sources.builders import conll, conllu, folders, squad, tabular
from jmtl.data.sources.builders.reading import Example
from jmtl.tasks import TaskKind

UNK_LABEL = "<unk>"
VERSION = "1.0.0"
# Kinds whose labels are names, turned into class ids through a label set.
_NAMED_LABELS = (TaskKind.CLASSIFICATION, TaskKind.TAGGING, TaskKind.MULTI_LABEL)
READERS = {"conll": conll.read, "conllu": conllu.read, "csv": tabular.read_csv,
           "tsv": tabular.read_csv, "jsonl": tabular.read_jsonl, "text": tabular.read_text,
           "folders": folders.read, "squad": squad.read}


def read_source(source: SourceConfig) -> dict[str, list[Example]]:
  """Reads every file of a source and divides it into splits."""
  read = READERS[source.format]
  by_split: dict[str, list[Example]] = {}
  for split, paths in source.files:
    examples = []
    for path in paths:
      if not path.exists():
        raise DataError(f"{source.where}.files.{split}: {path} does not exist")
      file_examples = read(path, source)
      if not file_examples:
        raise at(path, None, f"no examples in this file ({source.where}, split {split})")
      examples.extend(file_examples)
    by_split[split] = examples
  if source.split_ratio:
    by_split = _divide(by_split, dict(source.split_ratio), source.split_seed, source.where)
  return by_split


def _divide(by_split, ratio, seed, where):
  """Carves splits out of "all" (or "train") with a seeded permutation."""
  pool_name = "all" if "all" in by_split else "train"
  pool = by_split.pop(pool_name)
  order = np.random.default_rng(seed).permutation(len(pool))
  start = 0
  for split in SPLITS[1:]:
    if split in ratio:
      count = int(np.floor(ratio[split] * len(pool)))
      if count == 0:
        raise DataError(f"{where}.split_ratio.{split}: {len(pool)} examples give an empty "
                        f"{split} split")
      by_split[split] = [pool[i] for i in sorted(order[start:start + count])]
      start += count
  by_split["train"] = [pool[i] for i in sorted(order[start:])]
  return {split: by_split[split] for split in SPLITS if split in by_split}


def label_sets(source: SourceConfig, by_split: dict[str, list[Example]]) -> dict[str, list[str]]:
  """Label names per classification/tagging task, from train or the config.

  Labels seen outside train are an error naming file and line, or become
  ``<unk>`` when the task says ``on_unseen_label: unk``. Mutates ``by_split``
  to apply that mapping.
  """
  result = {}
  for task in source.tasks:
    if task.kind not in _NAMED_LABELS:
      continue
    if task.labels is not None:
      names = list(task.labels)
    else:
      seen = set()
      for example in by_split["train"]:
        value = example.values[task.name]
        seen.update(value if task.label_lists else [value])
      names = sorted(seen)
    if task.on_unseen_label == "unk" and UNK_LABEL not in names:
      names.append(UNK_LABEL)
    known = set(names)
    for split, examples in by_split.items():
      for example in examples:
        _check_labels(task, example, known, split)
    if len(names) < 2 and task.kind != TaskKind.MULTI_LABEL:
      raise DataError(f"{source.where}: task {task.name!r} has a single label {names} in "
                      "train; a classifier needs at least two")
    result[task.name] = names
  return result


def _check_labels(task: TaskConfig, example: Example, known: set[str], split: str) -> None:
  value = example.values[task.name]
  values = value if task.label_lists else [value]
  unseen = [v for v in values if v not in known]
  if not unseen:
    return
  if task.on_unseen_label == "unk":
    mapped = [v if v in known else UNK_LABEL for v in values]
    example.values[task.name] = mapped if task.label_lists else mapped[0]
    return
  origin = "the config's labels" if task.labels is not None else "train"
  raise at(example.file, example.line,
           f"label {unseen[0]!r} of task {task.name!r} ({split}) never appears in {origin}; "
           "add it to the task's labels or set on_unseen_label: unk")


@contextlib.contextmanager
def quiet_tfds():
  """Silences TFDS progress bars and INFO logs while building."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  loggers = [logging.getLogger(n) for n in ("absl", "tensorflow_datasets")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.WARNING)
  try:
    yield tfds
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def features_of(source: SourceConfig, labels: dict[str, list[str]], has_pair: bool):
  """The TFDS ``FeaturesDict`` of a source: the input plus one feature per task."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  feats: dict[str, Any] = {}
  if source.token_level:
    feats["tokens"] = tfds.features.Sequence(tfds.features.Text())
  else:
    feats["text"] = tfds.features.Text()
    if has_pair:
      feats["text_pair"] = tfds.features.Text()
  for task in source.tasks:
    if task.label_lists:
      feats[task.name] = tfds.features.Sequence(tfds.features.ClassLabel(names=labels[task.name]))
    elif task.kind == TaskKind.CLASSIFICATION:
      feats[task.name] = tfds.features.ClassLabel(names=labels[task.name])
    elif task.kind == TaskKind.SPAN_QA:
      feats[task.name] = tfds.features.FeaturesDict({
          "id": tfds.features.Text(), "texts": tfds.features.Sequence(tfds.features.Text()),
          "starts": tfds.features.Sequence(np.int32)})
    elif task.kind == TaskKind.REGRESSION:
      feats[task.name] = tfds.features.Scalar(np.float32)
  return tfds.features.FeaturesDict(feats)


def _builder_class(tfds, dataset: str):
  """A GeneratorBasedBuilder subclass named ``dataset`` that writes given examples."""

  class _LocalCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, features, by_split, description, **kwargs):
      self._features = features
      self._by_split = by_split
      self._description = description
      super().__init__(**kwargs)

    def _info(self):
      # Built directly: create_dataset_info() looks for a README beside the module.
      return tfds.core.DatasetInfo(builder=self, description=self._description,
                                   features=self._features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(examples)
              for split, examples in self._by_split.items()}

    def _generate_examples(self, examples):
      for index, example in enumerate(examples):
        yield index, example

  return types.new_class(dataset, (_LocalCorpus,), {"skip_registration": True},
                         lambda namespace: namespace.update(name=dataset))


def _record(source: SourceConfig, example: Example, has_pair: bool) -> dict[str, Any]:
  record: dict[str, Any] = {}
  if source.token_level:
    record["tokens"] = example.tokens
  else:
    record["text"] = example.text
    if has_pair:
      record["text_pair"] = example.text_pair or ""
  for task in source.tasks:
    if task.kind != TaskKind.MLM:
      record[task.name] = example.values[task.name]
  return record


def _first_empty(task: str, by_split: dict[str, list[Example]]) -> dict[str, str]:
  """Per split, ``file:line`` of the first example whose label list is empty (for the report)."""
  first = {}
  for split, examples in by_split.items():
    empty = next((e for e in examples if not e.values[task]), None)
    if empty is not None:
      first[split] = f"{empty.file}:{empty.line}" if empty.line is not None else str(empty.file)
  return first


def build_source(source: SourceConfig, data_dir: Path,
                 by_split: dict[str, list[Example]] | None = None) -> dict[str, Any]:
  """Reads, checks and writes one source as a TFDS array_record dataset.

  Args:
    source: the source config.
    data_dir: TFDS data_dir to build into (a temporary folder of the suite).
    by_split: already read examples, else they are read from ``source.files``.

  Returns:
    The manifest entry: dataset name, per-task label names, and split sizes.
  """
  by_split = read_source(source) if by_split is None else by_split
  for split, examples in by_split.items():
    if not examples:
      raise DataError(f"{source.where}: split {split!r} is empty")
  # Counted before label_sets maps unseen labels to <unk>: the report names them.
  label_counts = {t.name: report.count_labels(t.name, t.label_lists, by_split)
                  for t in source.tasks if t.kind in _NAMED_LABELS}
  labels = label_sets(source, by_split)
  has_pair = any(e.text_pair is not None for ex in by_split.values() for e in ex)
  with quiet_tfds() as tfds:
    cls = _builder_class(tfds, source.name)
    records = {split: [_record(source, e, has_pair) for e in examples]
               for split, examples in by_split.items()}
    builder = cls(features=features_of(source, labels, has_pair), by_split=records,
                  description=f"jmtl source {source.name} ({source.format})",
                  data_dir=str(data_dir), file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its banners
      builder.download_and_prepare(download_dir=str(data_dir / "_tfds_downloads"))
  return {"dataset": source.name, "version": VERSION, "format": source.format,
          "token_level": source.token_level,
          "labels": labels, "label_counts": label_counts,
          "empty_label_lists": {t.name: {split: sum(not e.values[t.name] for e in examples)
                                         for split, examples in by_split.items()}
                                for t in source.tasks if t.kind == TaskKind.MULTI_LABEL},
          "empty_label_first": {t.name: _first_empty(t.name, by_split)
                                for t in source.tasks if t.kind == TaskKind.MULTI_LABEL},
          "sizes": {split: len(e) for split, e in by_split.items()}}

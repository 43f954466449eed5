"""Named TFDS datasets (``glue/sst2``, ``conll2003``, ...) prepared by the user.

A ``tfds`` source keeps TFDS's own loading path: ``tfds.data_source(dataset,
data_dir=tfds_data_dir, split=...)`` on a dataset already built as array_record
(TFDS's downloads need the internet; this project never triggers them). Options:
``dataset`` (name/config), ``tfds_data_dir`` (default: TFDS's own default),
``splits`` (our split -> the dataset's split; default: train, validation or dev,
test, when present), ``text``/``text_pair`` or ``tokens`` (feature names of the
input), and each task's ``label`` (its feature name). Label names come from the
dataset's ``ClassLabel`` features.
"""

from __future__ import annotations

from typing import Any

from jmtl.data.config import SPLITS, SourceConfig
from jmtl.data.errors import DataError
from jmtl.data.sources.builders.common import quiet_tfds
from jmtl.tasks import TaskKind


def _builder(source: SourceConfig):
  with quiet_tfds() as tfds:
    try:
      return tfds.builder(source.option("dataset"), data_dir=source.option("tfds_data_dir"))
    except Exception as error:  # TFDS raises many types for "not found / not prepared"
      raise DataError(f"{source.where}.dataset: cannot open TFDS dataset "
                      f"{source.option('dataset')!r}: {str(error).splitlines()[0]}") from None


def split_names(source: SourceConfig, builder) -> dict[str, str]:
  available = set(builder.info.splits.keys())
  wanted = source.option("splits")
  if wanted is None:
    wanted = {}
    for ours, candidates in (("train", ["train"]), ("validation", ["validation", "dev"]),
                             ("test", ["test"])):
      found = [c for c in candidates if c in available]
      if found:
        wanted[ours] = found[0]
  for ours, theirs in wanted.items():
    if ours not in SPLITS:
      raise DataError(f"{source.where}.splits.{ours}: unknown split (use {', '.join(SPLITS)})")
    if theirs not in available:
      raise DataError(f"{source.where}.splits.{ours}: dataset has no split {theirs!r} "
                      f"(it has {sorted(available)})")
  if "train" not in wanted:
    raise DataError(f"{source.where}.splits.train: the dataset has no train split")
  return dict(wanted)


def describe(source: SourceConfig) -> dict[str, Any]:
  """The manifest entry of a named dataset: labels and sizes from its DatasetInfo."""
  builder = _builder(source)
  features = builder.info.features
  labels = {}
  for task in source.tasks:
    if task.kind == TaskKind.MLM:
      continue
    if task.label not in features:
      raise DataError(f"{source.where}.label: feature {task.label!r} not in "
                      f"{sorted(features.keys())}")
    feature = features[task.label]
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
    if task.kind in (TaskKind.CLASSIFICATION, TaskKind.TAGGING):
      names = getattr(feature, "names", None)
      if not names:
        raise DataError(f"{source.where}.label: feature {task.label!r} is not a ClassLabel")
      labels[task.name] = list(names)
  for key in ("tokens", "text", "text_pair"):
    name = source.option(key)
    if name is not None and name not in features:
      raise DataError(f"{source.where}.{key}: feature {name!r} not in {sorted(features.keys())}")
  splits = split_names(source, builder)
  sizes = {ours: builder.info.splits[theirs].num_examples for ours, theirs in splits.items()}
  return {"dataset": source.option("dataset"), "format": "tfds", "labels": labels,
          "sizes": sizes, "splits": splits, "token_level": source.token_level}


def data_source(source: SourceConfig, their_split: str):
  """Random-access records of one split through ``tfds.data_source``."""
  with quiet_tfds() as tfds:
    return tfds.data_source(source.option("dataset"), split=their_split,
                            data_dir=source.option("tfds_data_dir"))

"""Reading a suite's TFDS records and tokenizing them into flat arrays, cached on disk.

A split is tokenized once per (tokenizer, max_len) and kept as flat int32
arrays with row offsets (``EncodedSplit``); batches are then NumPy slicing.
The cache lives in ``<suite_dir>/encoded/<tokenizer hash>-L<max_len>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jmtl.data.config import SourceConfig, SuiteConfig
from jmtl.data.errors import DataError
from jmtl.data.feed import tokenize, windows
from jmtl.data.sources.builders import named
from jmtl.data.sources.builders.common import quiet_tfds
from jmtl.tasks import TaskKind


@dataclasses.dataclass
class EncodedSplit:
  """Tokenized examples of one source and split.

  Attributes:
    offsets: int64 [n + 1]; example i spans ``ids[offsets[i]:offsets[i + 1]]``.
    ids: int32 token ids of all examples, concatenated.
    type_ids: int32 segment ids, same layout.
    token_labels: tagging task -> int32 per-token labels (-1 = none), same layout.
    labels: sentence task -> [n] int32 (classes) or float32 (regression).
    truncated: bool [n], whether example i was cut to fit max_len.
    qa: for a span_qa source, whose rows are windows of questions (``windows``):
      ``question`` [n] (question of each row), ``char_starts``/``char_ends`` (same layout
      as ``ids``), per question ``ids``, ``contexts`` and ``golds`` (JSON lists of
      answer texts), and ``cut_off`` (answers the windows cut in two).
  """

  offsets: np.ndarray
  ids: np.ndarray
  type_ids: np.ndarray
  token_labels: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  truncated: np.ndarray
  qa: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def save(self, path: Path) -> None:
    arrays = {"offsets": self.offsets, "ids": self.ids, "type_ids": self.type_ids,
              "truncated": self.truncated}
    arrays.update({f"token_labels/{k}": v for k, v in self.token_labels.items()})
    arrays.update({f"labels/{k}": v for k, v in self.labels.items()})
    arrays.update({f"qa/{k}": v for k, v in self.qa.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp.npz", delete=False) as handle:
      np.savez(handle, **arrays)
    os.replace(handle.name, path)

  @classmethod
  def load(cls, path: Path) -> EncodedSplit:
    with np.load(path) as data:
      arrays = {k: data[k] for k in data.files}
    return cls(offsets=arrays["offsets"], ids=arrays["ids"], type_ids=arrays["type_ids"],
               truncated=arrays["truncated"],
               token_labels={k.split("/", 1)[1]: v for k, v in arrays.items()
                             if k.startswith("token_labels/")},
               labels={k.split("/", 1)[1]: v for k, v in arrays.items()
                       if k.startswith("labels/")},
               qa={k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("qa/")})


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_split(suite_dir: Path, source: SourceConfig, entry: dict[str, Any], split: str):
  """Random-access records of a split: ``tfds.data_source`` semantics."""
  if source.format == "tfds":
    return named.data_source(source, entry["splits"][split])
  with quiet_tfds() as tfds:
    builder = tfds.builder_from_directory(str(suite_dir / entry["dataset"] / entry["version"]))
    return builder.as_data_source(split=split)


def read_split(suite_dir: Path, source: SourceConfig, entry: dict[str, Any], split: str
               ) -> list[dict[str, Any]]:
  """All records of a split as plain dicts: tokens or text (+ pair), and labels."""
  records = open_split(suite_dir, source, entry, split)
  raw = records.__getitems__(list(range(len(records))))
  if source.format == "tfds":
    keys = {"tokens": source.option("tokens"), "text": source.option("text"),
            "text_pair": source.option("text_pair")}
    label_keys = {t.name: t.label for t in source.tasks}
  else:
    keys = {"tokens": "tokens", "text": "text", "text_pair": "text_pair"}
    label_keys = {t.name: t.name for t in source.tasks}
  result = []
  for record in raw:
    item: dict[str, Any] = {}
    if source.token_level:
      item["tokens"] = [_text(w) for w in record[keys["tokens"]]]
    else:
      item["text"] = _text(record[keys["text"]])
      if keys["text_pair"] and keys["text_pair"] in record:
        item["text_pair"] = _text(record[keys["text_pair"]])
    for task in source.tasks:
      if task.kind != TaskKind.MLM:
        item[task.name] = record[label_keys[task.name]]
    result.append(item)
  return result


class SplitReader:
  """``read_split`` that can keep a split it read for its next reader.

  A new suite's train split is read once to train its tokenizer and once more to encode
  it; keeping the first read's records skips the second (TFDS decoding brown's 45,872
  examples again): `jmtl data prepare brown` 50 -> 43 s of user CPU.
  """

  def __init__(self) -> None:
    self._kept: dict[tuple[str, str], list[dict[str, Any]]] = {}

  def __call__(self, suite_dir: Path, source: SourceConfig, entry: dict[str, Any], split: str,
               *, keep: bool = False) -> list[dict[str, Any]]:
    """The split's records; ``keep`` holds them for the next call (which releases them)."""
    key = (source.name, split)  # source names are unique in a suite (config checks)
    records = self._kept.pop(key, None)
    if records is None:
      records = read_split(suite_dir, source, entry, split)
    if keep:
      self._kept[key] = records
    return records


def training_texts(records: list[dict[str, Any]]):
  """The text of records, for training a tokenizer."""
  for record in records:
    if "tokens" in record:
      yield " ".join(record["tokens"])
    else:
      yield record["text"]
      if record.get("text_pair"):
        yield record["text_pair"]


def tokenizer_path(suite_dir: Path, vocab_size: int, lowercase: bool) -> Path:
  case = "uncased" if lowercase else "cased"
  return suite_dir / f"tokenizer-wordpiece-{vocab_size}-{case}.json"


def tokenizer_for(suite_dir: Path, suite: SuiteConfig, manifest: Mapping[str, Any], *,
                  vocab_size: int, lowercase: bool, read: SplitReader,
                  log: Callable[[str], None] = print):
  """The suite's trained tokenizer for these settings, training it on first use.

  The train records read for training are kept in ``read`` for their encoding.
  """
  path = tokenizer_path(suite_dir, vocab_size, lowercase)
  if path.exists():
    return tokenize.load(path)
  log(f"{suite.name}: training a WordPiece vocabulary of {vocab_size} on the train split")
  records = []
  for source, entry in zip(suite.sources, manifest["sources"]):
    records.extend(read(suite_dir, source, entry, "train", keep=True))
  tokenizer = tokenize.train(training_texts(records), vocab_size=vocab_size,
                             lowercase=lowercase)
  tokenize.save(tokenizer, path)
  return tokenizer


def encode_records(records: list[dict[str, Any]], source: SourceConfig,
                   wordpiece: tokenize.WordPiece,
                   num_labels: Mapping[str, int] | None = None) -> EncodedSplit:
  """Tokenizes records and aligns word-level tags to their first sub-word."""
  if any(task.kind == TaskKind.SPAN_QA for task in source.tasks):
    return encode_questions(records, source, wordpiece)
  if source.token_level:
    encoded = wordpiece.encode_words([r["tokens"] for r in records])
  else:
    pairs = [r.get("text_pair", "") for r in records]
    encoded = wordpiece.encode_texts([r["text"] for r in records],
                                     pairs if any(pairs) else None)
  lengths = np.array([len(e.ids) for e in encoded], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  concat = lambda parts: (np.concatenate(parts) if parts else np.zeros(0, np.int32))
  token_labels, labels = {}, {}
  for task in source.tasks:
    if task.kind == TaskKind.TAGGING:
      token_labels[task.name] = concat([tokenize.align_tags(e.word_ids, r[task.name])
                                        for e, r in zip(encoded, records)])
    elif task.kind == TaskKind.CLASSIFICATION:
      labels[task.name] = np.array([int(r[task.name]) for r in records], np.int32)
    elif task.kind == TaskKind.REGRESSION:
      labels[task.name] = np.array([float(r[task.name]) for r in records], np.float32)
    elif task.kind == TaskKind.MULTI_LABEL:  # class ids -> multi-hot [n, C]
      multi_hot = np.zeros((len(records), num_labels[task.name]), np.float32)
      for row, record in enumerate(records):
        multi_hot[row, np.asarray(record[task.name], np.int64)] = 1.0
      labels[task.name] = multi_hot
  return EncodedSplit(offsets=offsets, ids=concat([e.ids for e in encoded]),
                      type_ids=concat([e.type_ids for e in encoded]),
                      token_labels=token_labels, labels=labels,
                      truncated=np.array([e.truncated for e in encoded], bool))


def default_max_query_len(source: SourceConfig, wordpiece: tokenize.WordPiece) -> int:
  """The source's ``max_query_len``, or a quarter of ``max_len`` (at most 64 tokens)."""
  return source.option("max_query_len") or max(1, min(64, wordpiece.max_len // 4))


def encode_questions(records: list[dict[str, Any]], source: SourceConfig,
                     wordpiece: tokenize.WordPiece) -> EncodedSplit:
  """Questions with their contexts as window rows labelled with (start, end) tokens."""
  (task,) = source.tasks  # a squad source has exactly one span_qa task (config checks)
  values = [r[task.name] for r in records]
  answers = [(int(v["starts"][0]), int(v["starts"][0]) + len(_text(v["texts"][0])))
             if len(v["texts"]) else None for v in values]
  max_query_len = default_max_query_len(source, wordpiece)
  try:
    rows = windows.make_windows(wordpiece, [r["text"] for r in records],
                                [r["text_pair"] for r in records], answers,
                                doc_stride=source.option("doc_stride"),
                                max_query_len=max_query_len)
  except DataError as error:  # name the config key's place: "tasks[0].doc_stride: ..."
    raise DataError(f"{source.where}.{error}") from None
  lengths = np.array([len(ids) for ids in rows.ids], np.int64)
  golds = [json.dumps([_text(t) for t in v["texts"]]) for v in values]
  qa = {"question": rows.question, "char_starts": np.concatenate(rows.char_starts),
        "char_ends": np.concatenate(rows.char_ends),
        "ids": np.array([_text(v["id"]) for v in values]),
        "contexts": np.array([r["text_pair"] for r in records]), "golds": np.array(golds),
        "cut_off": np.array(rows.cut_off, np.int64)}
  return EncodedSplit(offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                      ids=np.concatenate(rows.ids), type_ids=np.concatenate(rows.type_ids),
                      token_labels={}, labels={task.name: rows.spans},
                      truncated=np.zeros(len(lengths), bool), qa=qa)


def cache_key(tokenizer_json: str, max_len: int) -> str:
  digest = hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]
  return f"{digest}-L{max_len}"


def load_or_encode(suite_dir: Path, source: SourceConfig, entry: dict[str, Any], split: str,
                   wordpiece: tokenize.WordPiece, key: str,
                   read: Callable[..., list[dict[str, Any]]] = read_split) -> EncodedSplit:
  path = suite_dir / "encoded" / key / f"{source.name}.{split}.npz"
  if path.exists():
    return EncodedSplit.load(path)
  encoded = encode_records(read(suite_dir, source, entry, split), source, wordpiece,
                           {name: len(names) for name, names in entry["labels"].items()})
  encoded.save(path)
  return encoded

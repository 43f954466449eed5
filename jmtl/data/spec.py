"""A suite as a user names it: a built-in name, a JSON file, or a mapping.

Everything here is checked without downloading or building anything, so a
runner can refuse a bad suite (or a config naming tasks a suite lacks) before
it spends a minute on data: ``validate_suite_spec`` reads at most the JSON file.
A JSON file's relative paths (and a relative ``root``) are relative to the file,
so the same file named from anywhere describes the same suite.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jmtl.data import extras, suites
from jmtl.data.config import parse_suite
from jmtl.data.errors import DataError

BUILTIN_TASKS: dict[str, tuple[str, ...]] = {**suites.TASKS, **extras.TASKS}


def is_suite_file(spec: Any) -> bool:
  return isinstance(spec, (str, os.PathLike)) and str(spec).endswith(".json")


def read_suite_file(path: str | os.PathLike) -> dict[str, Any]:
  """The suite mapping in a JSON file, its ``root`` made absolute (default: the
  file's folder). Bad JSON is an error naming the file and line."""
  path = Path(path).expanduser().resolve()
  if not path.is_file():
    raise DataError(f"suite file {path}: does not exist")
  try:
    spec = json.loads(path.read_text(encoding="utf-8"))
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not UTF-8 text ({error.reason}); a suite file is JSON in "
                    "UTF-8") from None
  except json.JSONDecodeError as error:
    raise DataError(f"{path}:{error.lineno}: invalid JSON: {error.msg} (column "
                    f"{error.colno})") from None
  if not isinstance(spec, dict):
    raise DataError(f"{path}: expected a JSON object describing a suite, got "
                    f"{type(spec).__name__}")
  root = spec.get("root", ".")
  if isinstance(root, str):
    spec["root"] = str((path.parent / Path(root).expanduser()).resolve())
  return spec


def resolve(spec: str | os.PathLike | Mapping[str, Any]) -> str | Mapping[str, Any]:
  """A name stays a name; a ``.json`` path becomes its mapping."""
  return read_suite_file(spec) if is_suite_file(spec) else spec


def validate_suite_spec(spec: str | os.PathLike | Mapping[str, Any]) -> tuple[str, ...] | None:
  """Checks a suite's schema without touching its data; returns its task names.

  Args:
    spec: a built-in suite name, a path to a suite ``.json`` file, or a suite
      mapping (see ``jmtl.data``).

  Returns:
    The task names in suite order, or None for a name that is neither built in
    nor a file (a suite prepared earlier: its tasks are known from its data_dir).

  Raises:
    DataError: naming the file (if any) and the key path, e.g.
      ``suite.json: tasks[1].fromat: unknown key; did you mean 'format'?``.
  """
  if isinstance(spec, Mapping):
    return tuple(t.name for t in parse_suite(spec).tasks)
  if not isinstance(spec, (str, os.PathLike)) or not str(spec):
    raise DataError(f"suite: expected a suite name, a .json file or a mapping, got {spec!r}")
  if str(spec) in BUILTIN_TASKS:
    return BUILTIN_TASKS[str(spec)]
  if not is_suite_file(spec):
    return None
  mapping = read_suite_file(spec)
  try:
    return tuple(t.name for t in parse_suite(mapping).tasks)
  except DataError as error:
    raise DataError(f"{Path(spec).expanduser().resolve()}: {error}") from None

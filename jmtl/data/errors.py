"""The one exception type of the data package."""

from __future__ import annotations


class DataError(Exception):
  """Bad input data, a bad suite config, or a download that failed.

  The message says where (file and line, or config key) and what is wrong, so
  the command line can print it as one line.
  """


class SourceUnavailable(DataError):
  """An optional suite whose tool (apt-get, npm) is missing on this machine."""


class DataMismatchError(DataError):
  """Data that differs from the data a run was trained on (see ``compare_fingerprints``)."""


def at(path, line: int | None, problem: str) -> DataError:
  """A ``DataError`` that names the file, the 1-based line and the problem."""
  where = f"{path}:{line}" if line is not None else f"{path}"
  return DataError(f"{where}: {problem}")

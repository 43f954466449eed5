"""What every format reader shares: the ``Example`` it returns and decoded text.

Kept apart from ``common`` (which checks splits and labels, then writes TFDS
datasets, and so imports the readers): the readers import only this module,
so nothing imports in a circle.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

from jmtl.data.config import SourceConfig
from jmtl.data.errors import at


@dataclasses.dataclass
class Example:
  """One parsed example and where it came from.

  Attributes:
    file: source file, for error messages.
    line: 1-based line where the example starts.
    tokens: words of a word-level example.
    text: text of a text-level example.
    text_pair: second text of a pair.
    values: task name -> label (a str, a float, or a list of str per word).
  """

  file: str
  line: int
  tokens: list[str] | None = None
  text: str | None = None
  text_pair: str | None = None
  values: dict[str, Any] = dataclasses.field(default_factory=dict)


def decoded(path: Path, source: SourceConfig) -> str:
  """The file's text in the source's ``encoding``; a byte it cannot decode is
  one error naming the file, the line and the config key to change."""
  raw = path.read_bytes()
  encoding = source.option("encoding")
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as error:
    line = raw[:error.start].count(b"\n") + 1
    byte = raw[error.start:error.start + 1].hex()
    raise at(path, line, f"byte 0x{byte} cannot be decoded as {encoding} ({error.reason}); "
             f"set {source.where}.encoding to the file's encoding (e.g. \"latin-1\" or "
             "\"cp1252\")") from None


def text_lines(path: Path, source: SourceConfig, newline: str | None = None) -> io.StringIO:
  """The decoded file as a text stream: universal newlines, as ``open`` reads it,
  or ``newline=""`` for the csv module."""
  return io.StringIO(decoded(path, source), newline=newline)

"""Relation classification input: two entities of a sentence marked with special tokens.

The relation between two entities is classified from the sentence with markers around
them (``[E1] Paris [/E1] is the capital of [E2] France [/E2]``, Baldini Soares et al.
2019); the markers become special tokens of the tokenizer (``jmtl.data.loading``), so
WordPiece never splits them. A csv/tsv/jsonl source either names ``entity_spans`` (four
columns or keys holding the character offsets e1 start, e1 end, e2 start, e2 end; ends
exclusive) and the markers are inserted here, or its text already carries the markers,
which is then checked per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jmtl.data.config import SourceConfig
from jmtl.data.errors import at

DEFAULT_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")


def markers_of(source: SourceConfig) -> tuple[str, ...]:
  """The source's four entity markers, or () if it is not a relation source."""
  if source.option("entity_spans") is None and source.option("entity_markers") is None:
    return ()
  return tuple(source.option("entity_markers") or DEFAULT_MARKERS)


def _offset(value: Any, path: Path, line: int, name: str) -> int:
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise at(path, line, f"entity offset {name}: expected an integer, got {value!r}") from None
  return number


def mark(text: str, offsets: Sequence[Any], markers: Sequence[str], path: Path, line: int,
         names: Sequence[str]) -> str:
  """``text`` with the markers around the two entities at ``offsets`` (characters)."""
  e1_start, e1_end, e2_start, e2_end = (_offset(v, path, line, n)
                                        for v, n in zip(offsets, names, strict=True))
  for start, end, which in ((e1_start, e1_end, "e1"), (e2_start, e2_end, "e2")):
    if not 0 <= start < end <= len(text):
      raise at(path, line, f"entity {which} span [{start}, {end}) is empty or outside the "
               f"{len(text)}-character text")
  if e1_start < e2_end and e2_start < e1_end:
    raise at(path, line, f"entities e1 [{e1_start}, {e1_end}) and e2 [{e2_start}, {e2_end}) "
             "overlap")
  inserts = sorted([(e1_start, markers[0]), (e1_end, markers[1]), (e2_start, markers[2]),
                    (e2_end, markers[3])], key=lambda item: item[0], reverse=True)
  for position, marker in inserts:  # from the end, so earlier offsets stay valid
    text = f"{text[:position]} {marker} {text[position:]}"
  return " ".join(text.split())


def check_marked(text: str, markers: Sequence[str], path: Path, line: int) -> None:
  """A text that should already carry each marker exactly once."""
  for marker in markers:
    if text.count(marker) != 1:
      raise at(path, line, f"entity marker {marker!r} appears {text.count(marker)} times in "
               "the text (expected once; or name entity_spans to insert the markers)")

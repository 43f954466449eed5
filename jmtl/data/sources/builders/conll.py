"""CoNLL files: one word per line, columns for the word and its tags.

Options of a ``conll`` source: ``columns`` maps ``token`` and every tag field to a
0-based column index (``{"token": 0, "pos": 1, "ner": 3}``); ``separator`` is
``null`` (any run of whitespace, the default), ``"\\t"`` or ``" "``. A blank or
whitespace-only line ends a sentence; ``-DOCSTART-`` lines are skipped. Every
token line of a file must have the same number of columns as its first one.
"""

from __future__ import annotations

from pathlib import Path

from jmtl.data.config import SourceConfig
from jmtl.data.errors import at
from jmtl.data.sources.builders.reading import Example, text_lines
from jmtl.tasks import TaskKind


def read(path: Path, source: SourceConfig) -> list[Example]:
  columns = dict(source.option("columns"))
  separator = source.option("separator")
  needed = max(columns.values()) + 1
  fields = {t.name: columns[t.label] for t in source.tasks if t.kind != TaskKind.MLM}
  examples: list[Example] = []
  expected: int | None = None
  current: Example | None = None
  with text_lines(path, source) as lines:
    for number, line in enumerate(lines, start=1):
      line = line.rstrip("\r\n")
      if not line.strip() or line.startswith("-DOCSTART-"):
        if current is not None:
          examples.append(current)
          current = None
        continue
      cells = line.split() if separator is None else line.split(separator)
      if expected is None:
        expected = len(cells)
        if expected < needed:
          raise at(path, number, f"{expected} columns, but {source.where}.columns needs "
                   f"{needed} (found {cells!r})")
      if len(cells) != expected:
        raise at(path, number, f"wrong column count: expected {expected}, found "
                 f"{len(cells)} in {line!r}")
      token = cells[columns["token"]]
      if not token.strip():
        raise at(path, number, "empty token")
      if current is None:
        current = Example(file=str(path), line=number, tokens=[],
                          values={name: [] for name in fields})
      current.tokens.append(token)
      for name, index in fields.items():
        tag = cells[index].strip()
        if not tag:
          raise at(path, number, f"empty tag in column {index} (task {name!r})")
        current.values[name].append(tag)
  if current is not None:
    examples.append(current)
  return examples

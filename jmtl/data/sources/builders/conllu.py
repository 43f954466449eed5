"""CoNLL-U files (Universal Dependencies): ten tab-separated columns per word.

Task ``label`` fields: ``upos``, ``xpos``, ``deprel``, ``feats`` (the whole FEATS
string as one tag), ``lemma``, ``head_distance`` (the signed offset from a word
to its head, clipped to +-``max_head_distance``, ``root`` for the root), or
``comment:KEY`` for a sentence label read from a ``# KEY = value`` comment.
Multi-word token lines (``1-2``) and empty nodes (``1.1``) are skipped, as
usual for word-level tagging. Label sets come from the data.
"""

from __future__ import annotations

from pathlib import Path

from jmtl.data.config import SourceConfig, TaskConfig
from jmtl.data.errors import at
from jmtl.data.sources.builders.reading import Example, text_lines
from jmtl.tasks import TaskKind

_COLUMN = {"lemma": 2, "upos": 3, "xpos": 4, "feats": 5, "deprel": 7}


def head_distance_label(index: int, head: int, max_distance: int) -> str:
  """``root``, or the signed offset head - index clipped to +-max_distance."""
  if head == 0:
    return "root"
  offset = max(-max_distance, min(max_distance, head - index))
  return f"{offset:+d}"


def _finish(path: Path, example: Example, comments: dict[str, str],
            sentence_tasks: list[TaskConfig]) -> Example:
  for task in sentence_tasks:
    key = str(task.label)[len("comment:"):]
    if key not in comments:
      raise at(path, example.line, f"sentence has no '# {key} = ...' comment "
               f"(task {task.name!r})")
    example.values[task.name] = comments[key]
  return example


def read(path: Path, source: SourceConfig) -> list[Example]:
  word_tasks = [t for t in source.tasks if t.kind == TaskKind.TAGGING]
  sentence_tasks = [t for t in source.tasks if str(t.label).startswith("comment:")]
  examples: list[Example] = []
  current: Example | None = None
  comments: dict[str, str] = {}
  start = None
  with text_lines(path, source) as lines:
    for number, line in enumerate(lines, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        if current is not None:
          examples.append(_finish(path, current, comments, sentence_tasks))
        current, comments, start = None, {}, None
        continue
      start = number if start is None else start
      if line.startswith("#"):
        key, sep, value = line[1:].partition("=")
        if sep:
          comments[key.strip()] = value.strip()
        continue
      cells = line.split("\t")
      if len(cells) != 10:
        raise at(path, number, f"wrong column count: CoNLL-U needs 10 tab-separated "
                 f"columns, found {len(cells)}")
      word_id = cells[0]
      if "-" in word_id or "." in word_id:
        continue
      if not word_id.isdigit():
        raise at(path, number, f"ID {word_id!r} is not an integer")
      if not cells[1].strip():
        raise at(path, number, "empty token (FORM column)")
      if current is None:
        current = Example(file=str(path), line=start, tokens=[],
                          values={t.name: [] for t in word_tasks})
      current.tokens.append(cells[1])
      for task in word_tasks:
        if task.label == "head_distance":
          head = cells[6]
          if not head.isdigit():
            raise at(path, number, f"HEAD {head!r} is not an integer")
          value = head_distance_label(int(word_id), int(head), task.max_head_distance)
        else:
          value = cells[_COLUMN[task.label]].strip()
          if not value:
            raise at(path, number, f"empty {task.label.upper()} column")
        current.values[task.name].append(value)
  if current is not None:
    examples.append(_finish(path, current, comments, sentence_tasks))
  return examples

"""SQuAD-format JSON (v1.1, and v2.0 with unanswerable questions) for extractive QA.

The file is ``{"version": ..., "data": [{"paragraphs": [{"context": ..., "qas": [{"id",
"question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}``. Each question
becomes an ``Example`` with the question as ``text`` and the context as ``text_pair``; its
task value holds the question id and every gold answer (text and character start).

An answer that is not at its stated character offset is an error naming the file, the
question id and its line: an off-by-one export would otherwise train on wrong spans. A
question without answers is unanswerable; it is an error unless the file is v2.0 (its
``version`` field, or the source's ``squad_version``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jmtl.data.config import SourceConfig
from jmtl.data.errors import at
from jmtl.data.sources.builders.reading import Example, decoded
from jmtl.tasks import TaskKind


def _line_of(raw: str, qid: str) -> int | None:
  """The line of a question id in the raw JSON (for messages); None if not found."""
  index = raw.find(json.dumps(qid))
  return raw.count("\n", 0, index) + 1 if index >= 0 else None


def _version(data: dict[str, Any], source: SourceConfig) -> str:
  version = source.option("squad_version") or str(data.get("version", "1.1"))
  return "2.0" if version.lstrip("v").startswith("2") else "1.1"


def read(path: Path, source: SourceConfig) -> list[Example]:
  raw = decoded(path, source)
  try:
    data = json.loads(raw)
  except json.JSONDecodeError as error:
    raise at(path, error.lineno, f"invalid JSON: {error.msg}") from None
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise at(path, None, 'expected a SQuAD JSON object with a "data" list of articles')
  version = _version(data, source)
  tasks = [t for t in source.tasks if t.kind == TaskKind.SPAN_QA]
  examples = []
  for article in data["data"]:
    for paragraph in article.get("paragraphs", []):
      context = paragraph.get("context")
      if not isinstance(context, str) or not context.strip():
        raise at(path, None, f"a paragraph of article {article.get('title', '?')!r} has no "
                 "context text")
      for qa in paragraph.get("qas", []):
        qid = str(qa.get("id", ""))
        line = _line_of(raw, qid) if qid else None
        question = str(qa.get("question", "")).strip()
        if not qid or not question:
          raise at(path, line, f"question {qid or '?'!r}: needs an id and a question text")
        texts, starts = [], []
        for answer in [] if qa.get("is_impossible") else qa.get("answers", []):
          text, start = answer.get("text"), answer.get("answer_start")
          if not isinstance(text, str) or not isinstance(start, int) or not text:
            raise at(path, line, f"question {qid!r}: an answer needs a text and an integer "
                     "answer_start")
          if context[start:start + len(text)] != text:
            found = context[start:start + len(text)]
            raise at(path, line, f"question {qid!r}: answer {text!r} is not at character "
                     f"{start} of its context (found {found!r})")
          texts.append(text)
          starts.append(start)
        if not texts and version != "2.0":
          raise at(path, line, f"question {qid!r} has no answer; unanswerable questions need "
                   "SQuAD v2.0 (the file's version, or squad_version: \"2.0\")")
        value = {"id": qid, "texts": texts, "starts": starts}
        examples.append(Example(file=str(path), line=line or 0, text=question,
                                text_pair=context, values={t.name: value for t in tasks}))
  return examples

"""The input and output files of ``jmtl predict``: text (one input per line), JSON lines (a
``text``, ``text`` + ``text_pair``, ``question`` + ``context`` or ``tokens`` field) and CoNLL
(one token per line in the first column); predictions are written as JSON lines, whole or
not at all. A bad file or line is one DataError naming the file and the line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any

FORMATS = {".txt": "text", ".jsonl": "jsonl", ".conll": "conll", ".conllu": "conll",
           ".bio": "conll", ".iob": "conll"}


def input_format(path: str, explicit: str | None = None) -> str:
  if explicit:
    return explicit
  extension = os.path.splitext(path)[1].lower()
  if extension not in FORMATS:
    raise _data_error(
        f"input {path}: unknown format {extension or '(no extension)'!r}; use .txt (one text "
        "per line), .jsonl (a 'text' field, or 'text' + 'text_pair', 'question' + 'context', "
        "or 'tokens') or .conll (one token per line in the first column, a blank line between "
        "sentences), or pass --format text|jsonl|conll")
  return FORMATS[extension]


def _data_error(message: str):
  from jmtl.data import DataError
  return DataError(message)


def read_inputs(path: str, fmt: str) -> list[Any]:
  """Inputs for ``Predictor.predict`` from a file; a bad line raises naming file and line."""
  if not os.path.isfile(path):
    raise _data_error(f"input {path}: no such file")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if fmt == "text":
    return lines
  if fmt == "jsonl":
    return [_jsonl_item(path, number, line) for number, line in enumerate(lines, 1)
            if line.strip()]
  if fmt == "conll":
    sentences, words = [], []
    for line in lines + [""]:
      fields = line.split()
      if fields and fields[0] == "-DOCSTART-":
        continue
      if fields:
        words.append(fields[0])
      elif words:
        sentences.append(words)
        words = []
    return sentences
  raise _data_error(f"input {path}: unknown format {fmt!r}; use text, jsonl or conll")


def _jsonl_item(path: str, number: int, line: str):
  try:
    item = json.loads(line)
  except json.JSONDecodeError as e:
    raise _data_error(f"input {path} line {number}: invalid JSON: {e.msg}") from None
  if not isinstance(item, dict):
    raise _data_error(f"input {path} line {number}: expected a JSON object")
  if isinstance(item.get("question"), str) and isinstance(item.get("context"), str):
    return (item["question"], item["context"])
  if isinstance(item.get("tokens"), list):
    return [str(w) for w in item["tokens"]]
  if not isinstance(item.get("text"), str):
    raise _data_error(f"input {path} line {number}: no string 'text' field (or 'tokens' list)")
  if "text_pair" in item:
    return (item["text"], str(item["text_pair"]))
  return item["text"]


def write_jsonl(records: Iterable[dict], path: str) -> None:
  """JSON lines to ``path`` ("-" = stdout), written whole or not at all."""
  if path == "-":
    for record in records:
      sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  os.replace(tmp, path)

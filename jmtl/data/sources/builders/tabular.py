"""CSV, TSV, JSON-lines and plain-text files.

``csv``/``tsv`` options: ``text`` and optional ``text_pair`` name the input
columns (header names, or 0-based indices with ``header: false``); each task's
``label`` names its column; ``delimiter`` defaults to ``,`` or a tab. TSV is
read without quote handling (quotes are text), as GLUE-style TSVs expect.

``jsonl`` options: one JSON object per line; ``text``/``text_pair`` keys for text
input, or ``tokens`` (a key holding a list of words) for word-level input whose
tagging labels are lists of the same length.

``text``: one example per non-blank line; no labels (for mlm).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from jmtl.data.config import SourceConfig, TaskConfig
from jmtl.data.errors import at
from jmtl.data.sources.builders import relations
from jmtl.data.sources.builders.reading import Example, text_lines
from jmtl.tasks import TaskKind


def _label(path, line: int, task: TaskConfig, value: Any) -> Any:
  """Checks one raw label: a number for regression, a non-empty string otherwise."""
  if task.kind == TaskKind.REGRESSION:
    try:
      number = float(value)
    except (TypeError, ValueError):
      raise at(path, line, f"non-numeric target {value!r} for regression task "
               f"{task.name!r}") from None
    if number != number or abs(number) == float("inf"):
      raise at(path, line, f"target {value!r} of task {task.name!r} is not finite")
    return number
  if task.kind == TaskKind.MULTI_LABEL:
    if isinstance(value, str):  # a csv cell; an empty cell is an empty label set
      value = [v for v in value.split(task.label_separator) if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
      raise at(path, line, f"task {task.name!r}: expected a list of labels, got {value!r}")
    labels = [str(v).strip() for v in value]
    if any(not label for label in labels):
      raise at(path, line, f"empty label in the label list of task {task.name!r}")
    return sorted(set(labels))
  if task.kind == TaskKind.TAGGING:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
      raise at(path, line, f"task {task.name!r}: expected a list of tags, got {value!r}")
    tags = [str(v).strip() for v in value]
    if any(not tag for tag in tags):
      raise at(path, line, f"empty tag for task {task.name!r}")
    return tags
  text = "" if value is None else str(value).strip()
  if not text:
    raise at(path, line, f"empty label for task {task.name!r}")
  return text


def read_csv(path: Path, source: SourceConfig) -> list[Example]:
  tsv = source.format == "tsv"
  header = source.option("header", True)
  delimiter = source.option("delimiter", "\t" if tsv else ",")
  quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
  examples = []
  with text_lines(path, source, newline="") as handle:
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
    names = None
    if header:
      try:
        names = next(reader)
      except StopIteration:
        return []
      names = [n.strip() for n in names]
    wanted = {"text": source.option("text"), "text_pair": source.option("text_pair")}
    wanted.update({t.name: t.label for t in source.tasks if t.kind != TaskKind.MLM})
    span_names = source.option("entity_spans") or ()
    wanted.update({f"entity_spans[{i}]": column for i, column in enumerate(span_names)})
    markers = relations.markers_of(source)
    index = {}
    for key, column in wanted.items():
      if column is None:
        continue
      if names is not None:
        if column not in names:
          raise at(path, 1, f"column {column!r} ({key}) not in header {names}")
        index[key] = names.index(column)
      elif not isinstance(column, int):
        raise at(path, None, f"with header: false, {key} must be a column index, "
                 f"got {column!r}")
      else:
        index[key] = column
    expected = len(names) if names is not None else None
    separated = set()  # multi_label tasks whose separator appears in the file
    line = reader.line_num
    for row in reader:
      start, line = line + 1, reader.line_num
      if not row or all(not cell.strip() for cell in row):
        continue
      expected = len(row) if expected is None else expected
      if len(row) != expected:
        raise at(path, start, f"wrong column count: expected {expected}, found {len(row)}")
      if max(index.values()) >= len(row):
        raise at(path, start, f"row has {len(row)} columns, the config reads column "
                 f"{max(index.values())}")
      text = row[index["text"]]
      if span_names:  # offsets count in the cell as written, so mark before stripping
        text = relations.mark(text, [row[index[f"entity_spans[{i}]"]] for i in range(4)],
                              markers, path, start, span_names)
      text = text.strip()
      if not text:
        raise at(path, start, f"empty text in column {wanted['text']!r}")
      if markers and not span_names:
        relations.check_marked(text, markers, path, start)
      pair = row[index["text_pair"]].strip() if "text_pair" in index else None
      if pair is not None and not pair:
        raise at(path, start, f"missing second text: column {wanted['text_pair']!r} is empty")
      values = {t.name: _label(path, start, t, row[index[t.name]])
                for t in source.tasks if t.kind != TaskKind.MLM}
      examples.append(Example(file=str(path), line=start, text=text, text_pair=pair,
                              values=values))
      for task in source.tasks:
        if task.kind == TaskKind.MULTI_LABEL and task.label_separator in row[index[task.name]]:
          separated.add(task.name)
  for task in source.tasks:
    if task.kind == TaskKind.MULTI_LABEL and examples and task.name not in separated:
      raise at(path, None, f"label_separator {task.label_separator!r} of task {task.name!r} "
               f"never appears in column {wanted[task.name]!r}: every example would have one "
               "label; set the task's label_separator to the file's separator")
  return examples


def read_jsonl(path: Path, source: SourceConfig) -> list[Example]:
  tokens_key = source.option("tokens")
  text_key, pair_key = source.option("text"), source.option("text_pair")
  examples = []
  with text_lines(path, source) as lines:
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise at(path, number, f"invalid JSON: {error.msg}") from None
      if not isinstance(record, dict):
        raise at(path, number, "expected a JSON object")
      keys = [tokens_key] if tokens_key else [text_key] + ([pair_key] if pair_key else [])
      keys += [t.label for t in source.tasks if t.kind != TaskKind.MLM]
      keys += list(source.option("entity_spans") or ())
      for key in keys:
        if key not in record:
          raise at(path, number, f"missing key {key!r}")
      example = Example(file=str(path), line=number)
      if tokens_key:
        words = record[tokens_key]
        if not isinstance(words, list) or not words:
          raise at(path, number, f"{tokens_key!r} must be a non-empty list of words")
        if any(not isinstance(w, str) or not w.strip() for w in words):
          raise at(path, number, "empty token")
        example.tokens = words
      else:
        example.text = str(record[text_key])
        markers = relations.markers_of(source)
        if spans := source.option("entity_spans"):
          example.text = relations.mark(example.text, [record[k] for k in spans], markers, path,
                                        number, spans)
        example.text = example.text.strip()
        if not example.text:
          raise at(path, number, f"empty text in key {text_key!r}")
        if markers and not spans:
          relations.check_marked(example.text, markers, path, number)
        if pair_key:
          pair = record[pair_key]
          example.text_pair = pair.strip() if isinstance(pair, str) else ""
          if not example.text_pair:
            raise at(path, number, f"missing second text: key {pair_key!r} is "
                     f"{'empty' if isinstance(pair, str) else repr(pair)}")
      for task in source.tasks:
        if task.kind == TaskKind.MLM:
          continue
        example.values[task.name] = _label(path, number, task, record[task.label])
        if task.kind == TaskKind.TAGGING and len(example.values[task.name]) != len(example.tokens):
          raise at(path, number, f"task {task.name!r}: {len(example.values[task.name])} tags "
                   f"for {len(example.tokens)} tokens")
      examples.append(example)
  return examples


def read_text(path: Path, source: SourceConfig) -> list[Example]:
  with text_lines(path, source) as lines:
    return [Example(file=str(path), line=number, text=line.strip())
            for number, line in enumerate(lines, start=1) if line.strip()]

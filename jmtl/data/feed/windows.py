"""Question + context pairs cut into overlapping windows, answers mapped to sub-word spans.

A context longer than fits beside its question is read in windows of ``max_len`` tokens
(``[CLS] question [SEP] context piece [SEP]``) whose starts are ``doc_stride`` context
tokens apart, so every answer of up to ``max_len - doc_stride`` tokens lies whole in some
window. An answer's characters become tokens through the tokenizer's character offsets
(never by re-tokenizing the answer, which can split differently in context). A window
that does not hold the whole answer is labelled "no answer" (the [CLS] position 0, as in
BERT); one that holds only part of it is counted as *cut off*, so a stride that is too
large shows in the report instead of silently teaching the model wrong spans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jmtl.data.errors import DataError
from jmtl.data.feed.tokenize import WordPiece


@dataclasses.dataclass
class QARows:
  """Window rows of a set of questions.

  Attributes:
    ids, type_ids: int32 token ids and segment ids of each row.
    char_starts, char_ends: int32 per row token: its context characters, -1 outside.
    question: int [R], the question (example) index of each row.
    spans: int32 [R, 2], the (start, end) token label of each row ((0, 0) = no answer).
    cut_off: number of (row, answer) pairs whose answer the window cut in two.
    truncated_questions: questions cut to ``max_query_len`` tokens.
  """

  ids: list[np.ndarray]
  type_ids: list[np.ndarray]
  char_starts: list[np.ndarray]
  char_ends: list[np.ndarray]
  question: np.ndarray
  spans: np.ndarray
  cut_off: int
  truncated_questions: int


def answer_tokens(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int]:
  """First and last context token overlapping the characters ``[char_start, char_end)``.

  Returns (-1, -1) if no token overlaps (an answer made only of dropped whitespace).
  """
  overlapping = np.flatnonzero((offsets[:, 1] > char_start) & (offsets[:, 0] < char_end))
  if overlapping.size == 0:
    return -1, -1
  return int(overlapping[0]), int(overlapping[-1])


def make_windows(wordpiece: WordPiece, questions: Sequence[str], contexts: Sequence[str],
                 answers: Sequence[tuple[int, int] | None], *, doc_stride: int | None,
                 max_query_len: int) -> QARows:
  """Window rows for questions with their contexts and (first) gold answer.

  Args:
    wordpiece: the suite's tokenizer; its ``max_len`` is the window length.
    questions, contexts: text per question.
    answers: per question the answer's characters ``(start, end)`` in its context, or
      None for an unanswerable question (every window is labelled "no answer").
    doc_stride: context tokens between the starts of consecutive windows; None for
      half of the context room of each window.
    max_query_len: questions are cut to this many tokens.
  """
  max_len = wordpiece.max_len
  if max_query_len < 1 or max_query_len + 4 > max_len:
    raise DataError(f"max_query_len: {max_query_len} leaves no context room in "
                    f"max_len={max_len}")
  tokenizer = wordpiece.tokenizer
  question_codes = tokenizer.encode_batch(list(questions), add_special_tokens=False)
  context_codes = tokenizer.encode_batch(list(contexts), add_special_tokens=False)
  ids, type_ids, char_starts, char_ends, owner, spans = [], [], [], [], [], []
  cut_off = truncated = 0
  cls_id, sep_id = wordpiece.cls_id, wordpiece.sep_id
  for index, (q, c, answer) in enumerate(zip(question_codes, context_codes, answers,
                                             strict=True)):
    q_ids = q.ids[:max_query_len]
    truncated += len(q.ids) > max_query_len
    room = max_len - len(q_ids) - 3
    stride = doc_stride or max(1, room // 2)
    if stride > room:
      raise DataError(f"doc_stride: {doc_stride} must be in [1, {room}] (context tokens per "
                      f"window beside a {len(q_ids)}-token question at max_len={max_len})")
    offsets = np.asarray(c.offsets, np.int64).reshape(-1, 2)
    first, last = answer_tokens(offsets, *answer) if answer is not None else (-1, -1)
    head = [cls_id, *q_ids, sep_id]
    start = 0
    while True:
      stop = min(start + room, len(c.ids))
      row = np.asarray(head + c.ids[start:stop] + [sep_id], np.int32)
      ids.append(row)
      type_ids.append(np.concatenate([np.zeros(len(head), np.int32),
                                      np.ones(stop - start + 1, np.int32)]))
      outside = np.full(len(head), -1, np.int32)
      char_starts.append(np.concatenate([outside, offsets[start:stop, 0].astype(np.int32), [-1]]))
      char_ends.append(np.concatenate([outside, offsets[start:stop, 1].astype(np.int32), [-1]]))
      owner.append(index)
      if first >= 0 and start <= first and last < stop:
        spans.append((len(head) + first - start, len(head) + last - start))
      else:
        spans.append((0, 0))
        cut_off += first >= 0 and first < stop and last >= start  # overlaps, not whole
      if stop >= len(c.ids):
        break
      start += stride
  return QARows(ids=ids, type_ids=type_ids, char_starts=char_starts, char_ends=char_ends,
                question=np.asarray(owner, np.int64), spans=np.asarray(spans, np.int32).reshape(-1, 2),
                cut_off=int(cut_off), truncated_questions=int(truncated))

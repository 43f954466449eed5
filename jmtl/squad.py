"""Extractive QA on the host: best-span decoding over windows, and the official SQuAD scores.

A long context is read in overlapping windows (``jmtl.data.feed.windows``); the model gives
start and end logits per window token. Decoding here picks one answer per *question*: the
best valid span (end >= start, at most ``max_answer_length`` tokens, both ends in the
context) over all its windows, mapped back to context characters through the tokenizer's
offsets. Two independent argmaxes would pick spans that end before they start or cross
windows. It runs in NumPy at evaluation, never inside a jitted step.

Scores follow the official SQuAD v1.1/v2.0 evaluation script: answers are compared as
normalised text (lower case, no punctuation, no articles a/an/the, single spaces); EM and
token-bag F1 are the maximum over the gold answers; an unanswerable question (v2.0) has the
empty string as its only gold answer, and an empty prediction means "no answer".
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """The official script's normalisation: lower, drop punctuation, drop articles, fix spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
  """Token-bag F1 of normalised texts; 1 if both are empty, 0 if only one is (no-answer)."""
  predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if not predicted or not expected:
    return float(predicted == expected)
  same = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(expected)
  return 2 * precision * recall / (precision + recall)


def _gold_answers(answers: Sequence[str]) -> list[str]:
  """The gold answers to score against; [""] for an unanswerable question (v2.0)."""
  return [a for a in answers if normalize_answer(a)] or [""]


def squad_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]
                 ) -> dict[str, float]:
  """Mean ``exact_match`` and ``f1`` (fractions in [0, 1]) over the questions of ``golds``.

  Args:
    predictions: question id -> predicted answer text ("" = no answer). A question
      without a prediction scores 0, as in the official script.
    golds: question id -> gold answer texts; an empty list is an unanswerable question.
  """
  if not golds:
    return {"exact_match": float("nan"), "f1": float("nan")}
  em_total = f1_total = 0.0
  for qid, answers in golds.items():
    answers = _gold_answers(answers)
    if qid not in predictions:
      continue
    em_total += max(exact_match(predictions[qid], a) for a in answers)
    f1_total += max(f1(predictions[qid], a) for a in answers)
  return {"exact_match": em_total / len(golds), "f1": f1_total / len(golds)}


class Window(NamedTuple):
  """What decoding needs of one window row.

  Attributes:
    question: index of the question (example) the window belongs to.
    char_starts, char_ends: int [L]; the context characters of each token, -1 outside
      the context (question, [CLS], [SEP], padding).
  """

  question: int
  char_starts: np.ndarray
  char_ends: np.ndarray


class Answer(NamedTuple):
  text: str
  score: float  # start + end logit of the chosen span (-inf if no valid span)
  null_score: float  # best "no answer" score: min over windows of the [CLS] start + end


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, in_context: np.ndarray,
              max_answer_length: int) -> tuple[int, int, float]:
  """The best valid (start, end, score) in one window, or (-1, -1, -inf) if none.

  Valid: both ends are context tokens, start <= end < start + max_answer_length.
  """
  length = start_logits.shape[0]
  scores = start_logits[:, None].astype(np.float64) + end_logits[None, :].astype(np.float64)
  offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # end - start
  valid = (offset >= 0) & (offset < max_answer_length) & in_context[:, None] & in_context[None, :]
  if not valid.any():
    return -1, -1, -np.inf
  scores = np.where(valid, scores, -np.inf)
  flat = int(np.argmax(scores))
  start, end = divmod(flat, length)
  return start, end, float(scores[start, end])


def decode(start_logits: np.ndarray, end_logits: np.ndarray, windows: Sequence[Window],
           contexts: Sequence[str], *, max_answer_length: int = 30,
           null_threshold: float | None = None) -> list[Answer]:
  """One answer per question from the logits of all its windows.

  Args:
    start_logits, end_logits: ``[R, L]`` per window row (rows may be padded longer than
      a window's char arrays; the extra positions are not context).
    windows: the ``Window`` of each row.
    contexts: context text of each question.
    max_answer_length: longest answer in tokens.
    null_threshold: None for SQuAD v1.1 (always answer). For v2.0, answer "" when
      ``null_score - best_score > null_threshold`` (BERT's rule; 0 is the usual default).

  Returns:
    An ``Answer`` per question, in question order; a question with no window gets "".
  """
  best: dict[int, tuple[float, str]] = {}
  null: dict[int, float] = {}
  for row, window in enumerate(windows):
    width = len(window.char_starts)
    starts, ends = start_logits[row, :width], end_logits[row, :width]
    in_context = window.char_starts >= 0
    null[window.question] = min(null.get(window.question, np.inf),
                                float(starts[0]) + float(ends[0]))
    first, last, score = best_span(starts, ends, in_context, max_answer_length)
    if first >= 0 and score > best.get(window.question, (-np.inf, ""))[0]:
      text = contexts[window.question][window.char_starts[first]:window.char_ends[last]]
      best[window.question] = (score, text)
  answers = []
  for question in range(len(contexts)):
    score, text = best.get(question, (-np.inf, ""))
    null_score = null.get(question, np.inf)
    if null_threshold is not None and null_score - score > null_threshold:
      text = ""
    answers.append(Answer(text, score, null_score))
  return answers


def best_null_threshold(answers: Sequence[Answer], golds: Sequence[Sequence[str]]
                        ) -> tuple[float, float]:
  """The null threshold with the best mean F1 on a validation set, and that F1.

  Candidates are the observed ``null_score - score`` gaps (and one below all of them,
  i.e. always answer); ties go to the smallest threshold.
  """
  gaps = np.array([a.null_score - a.score for a in answers], np.float64)
  finite = np.sort(gaps[np.isfinite(gaps)])
  candidates = np.concatenate([[(finite[0] - 1.0) if finite.size else 0.0], finite])
  golds = [_gold_answers(gs) for gs in golds]
  answer_f1 = np.array([max(f1(a.text, g) for g in gs) for a, gs in zip(answers, golds)])
  null_f1 = np.array([float(gs == [""]) for gs in golds])
  best_threshold, best_score = 0.0, -np.inf
  for threshold in candidates:
    score = float(np.mean(np.where(gaps > threshold, null_f1, answer_f1)))
    if score > best_score + 1e-12:
      best_threshold, best_score = float(threshold), score
  return best_threshold, best_score

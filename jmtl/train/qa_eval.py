"""Answer-text scores of extractive QA tasks: decode every question, score it officially.

``evaluate`` scores a span_qa task per window row on token indices (a proxy). A question's
real answer needs all its windows and its context text, which only the ``Suite`` holds, so
this pass runs the QA heads over each QA source, decodes the best valid span per question
(``jmtl.squad.decode``) and replaces ``exact_match`` and ``f1`` with the official SQuAD
scores on normalised answer text. Decoding runs in NumPy on the host.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

import jax
import numpy as np

from jmtl import squad
from jmtl.tasks import TaskKind


def _logits_fn(model):
  @functools.partial(jax.jit, static_argnames="name")
  def logits(params, batch, name):
    spec = next(s for s in model.tasks if s.name == name)
    features = model.encode(params[model.shared_key], batch)
    return model.head(spec, params[model.task_key][name], features, batch)  # [B, L, 2]
  return logits


def answer_scores(model, params, suite, split: str, batch_size: int
                  ) -> dict[str, dict[str, float]]:
  """``{task: {"exact_match", "f1", ...}}`` for the span_qa tasks of ``suite``; on SQuAD
  v2.0 data also ``best_null_threshold`` and its ``best_f1`` (tune ``null_threshold`` on
  validation with them)."""
  logits = _logits_fn(model)
  known = set(model.names)
  results = {}
  for index, source in enumerate(suite.sources):
    qa_tasks = [t for t in source.tasks if t.kind == TaskKind.SPAN_QA and t.name in known]
    if not qa_tasks or split not in source.splits:
      continue
    (task,) = qa_tasks
    data = source.splits[split]
    starts, ends = [], []
    for first in range(0, len(data), batch_size):
      rows = [suite.row(index, split, i) for i in range(first, min(first + batch_size, len(data)))]
      out = np.asarray(jax.device_get(logits(params, suite.collate(rows, batch_size, (task,)),
                                             task.name)))
      for r, row in enumerate(rows):
        starts.append(out[r, :len(row.ids), 0])
        ends.append(out[r, :len(row.ids), 1])
    width = max(len(s) for s in starts)
    pad = lambda xs: np.stack([np.pad(x, (0, width - len(x)), constant_values=-np.inf)
                               for x in xs])
    windows = [squad.Window(int(q), data.qa["char_starts"][a:b], data.qa["char_ends"][a:b])
               for q, a, b in zip(data.qa["question"], data.offsets[:-1], data.offsets[1:])]
    golds = [json.loads(str(g)) for g in data.qa["golds"]]
    threshold = source.config.option("null_threshold")
    if threshold is None and any(not g for g in golds):
      threshold = 0.0  # SQuAD v2.0: unanswerable questions exist, BERT's default margin
    contexts = [str(c) for c in data.qa["contexts"]]
    decode = functools.partial(squad.decode, pad(starts), pad(ends), windows, contexts,
                               max_answer_length=source.config.option("max_answer_length") or 30)
    answers = decode(null_threshold=threshold)
    ids = [str(i) for i in data.qa["ids"]]
    scores = squad.squad_scores({i: a.text for i, a in zip(ids, answers)}, dict(zip(ids, golds)))
    if threshold is not None:  # v2.0: the no-answer margin that would be best on this split
      scores["best_null_threshold"], scores["best_f1"] = squad.best_null_threshold(
          decode(null_threshold=None), golds)
    results[task.name] = scores
  return results


def with_answer_scores(results: Mapping[str, Mapping[str, float]], model, params, suite,
                       split: str, batch_size: int) -> dict[str, dict[str, float]]:
  """``results`` of ``evaluate`` with each span_qa task's EM/F1 on answer text."""
  merged = {name: dict(metrics) for name, metrics in results.items()}
  for name, scores in answer_scores(model, params, suite, split, batch_size).items():
    spec = next(s for s in model.tasks if s.name == name)
    merged.setdefault(name, {}).update({k: v for k, v in scores.items() if k in spec.metrics})
  return merged

"""Evaluation: a jitted forward per batch, metrics on the host over the whole split."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import jax
import numpy as np

from jmtl import metrics as metrics_lib
from jmtl.models.multitask import MultiTaskModel
from jmtl.tasks import TaskSpec


def make_eval_fn(model: MultiTaskModel):
  """``eval_fn(params, batch, names) -> {task: (predictions, loss_sum, count)}``.

  ``names`` is static: a multi-input suite's batches carry one task, and only that head
  runs (the MLM head is the largest part of the model).
  """
  specs = {spec.name: spec for spec in model.tasks}

  @functools.partial(jax.jit, static_argnames="names")
  def eval_fn(params, batch, names):
    features = model.encode(params[model.shared_key], batch)
    out = {}
    for name in names:
      outputs = model.head(specs[name], params[model.task_key][name], features, batch)
      loss_sum, count = specs[name].loss_sum(outputs, batch)
      out[name] = (specs[name].predict(outputs), loss_sum, count)
    return out

  return eval_fn


def _pad_to(x: np.ndarray, length: int) -> np.ndarray:
  """Token-level arrays to a common length, so batches of different buckets concatenate."""
  if x.ndim < 2 or x.shape[1] == length:
    return x
  return np.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


class _Accumulator:
  def __init__(self, spec: TaskSpec):
    self.spec = spec
    self.predictions, self.labels, self.masks = [], [], []
    self.loss_sum = 0.0
    self.count = 0.0

  def add(self, predictions, loss_sum, count, batch):
    self.predictions.append(np.asarray(predictions))
    self.labels.append(np.asarray(batch[self.spec.label_key]))
    self.masks.append(np.asarray(batch[self.spec.mask_key]))
    self.loss_sum += float(loss_sum)
    self.count += float(count)

  def result(self) -> dict[str, float]:
    concat = lambda xs: np.concatenate([_pad_to(x, max(y.shape[1] if y.ndim > 1 else 0 for y in xs))
                                        for x in xs]) if xs else np.zeros((0,))
    if self.spec.kind == "span_qa":  # spans are [N, 2], not token-level
      concat = lambda xs: np.concatenate(xs) if xs else np.zeros((0, 2))
    return metrics_lib.task_metrics(self.spec, concat(self.predictions), concat(self.labels),
                                    concat(self.masks), self.loss_sum, self.count)


def evaluate(model: MultiTaskModel, eval_fn, params,
             batches: Iterable[tuple[str | None, Mapping[str, np.ndarray]]]
             ) -> dict[str, dict[str, float]]:
  """``{task: {metric: value}}`` over every batch; tasks the model lacks are skipped."""
  accumulators = {spec.name: _Accumulator(spec) for spec in model.tasks}
  for task_name, batch in batches:
    names = model.names if task_name is None else (task_name,)
    names = tuple(n for n in names if n in accumulators)
    if not names:
      continue
    outputs = jax.device_get(eval_fn(params, batch, names))
    for name, (predictions, loss_sum, count) in outputs.items():
      accumulators[name].add(predictions, loss_sum, count, batch)
  return {name: acc.result() for name, acc in accumulators.items() if acc.count > 0}


def selection_score(results: Mapping[str, Mapping[str, float]], tasks, baselines=None) -> float:
  """One number to pick the best checkpoint: Δm% with baselines, else the signed mean of
  each task's main metric."""
  present = [t for t in tasks if t.name in results]
  main, directions = metrics_lib.main_metric_results(present, results)
  if baselines:
    return metrics_lib.delta_m(main, baselines, directions)
  values = [(1 if directions[name] else -1) * value for name, value in main.items()]
  return float(np.mean(values)) if values else float("nan")

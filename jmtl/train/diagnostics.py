"""Training diagnostics for every method: per-task gradient norms, pairwise cosines, conflicts,
and (optionally) inter-task affinity, computed OUTSIDE the train step.

The train step of a loss-only method (equal weighting, uncertainty, DWA, FAMO, ...) does one
backward of the weighted loss and never forms per-task gradients. ``Diagnostics`` is a
separate compiled function the loop calls only at logging steps, on the state and batch the
step is about to use, so the step itself (its jaxpr, its outputs, its speed) does not change:

* per-task gradients of the SHARED parameters the balancer sees: frozen leaves
  (``optim.trainable_mask``) are constants, task-specific (head) parameters are left out;
  computed by ``grad_paths.task_gram`` (the Gram methods' own code: a declared token table
  stays per-token rows), with the step's dropout key, so for a Gram method the cosines equal
  the G the balancer weighed at that step. Under pmap / a mesh they are the global batch's.
* ``task_grad_norms`` ``[T]`` = ``sqrt(G_ii)``, ``cosines`` ``[T, T]`` = ``G_ij / (|g_i||g_j|)``.
  A task with no labelled unit in the (global) batch gets NaN (``null`` in metrics.jsonl)
  for its norm, its cosines and its affinities.
* ``affinity`` ``[T, T]`` (Fifty et al. 2021, "Efficiently Identifying Task Groupings"):
  ``Z[i, j] = 1 - L_j(theta_s - lr g_i) / L_j(theta_s)``, the relative change of task j's loss
  on the same batch after an SGD lookahead step of the shared params along task i's gradient
  alone (heads fixed). Positive: i's step helps j. ``lr`` is ``train.affinity_lr``, or the
  optimizer's ``learning_rate`` when 0 (a plain SGD lookahead, not the optimizer's update).

A logged step has a conflicting pair when some cosine between two present tasks is negative;
``summarize`` gives the fraction of logged steps that do (steps with fewer than two present
tasks are not counted) and each affinity pair's mean, for ``results.json``.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jmtl import gradients as grads_lib
from jmtl.models.protocol import MultiTaskProtocol, token_table_path
from jmtl.train.grad_paths import TaskGram, _psum, task_gram
from jmtl.train.parallel import AXIS, CompiledStep
from jmtl.train.state import TrainState
from jmtl.train.step import cosines_from_gram, masked_model, step_rng


def _task_direction(model: MultiTaskProtocol, shared_params, tg: TaskGram, i: int,
                    table_frozen: bool, axis_name):
  """Task ``i``'s global gradient of every shared param (the token table densified)."""
  grad = jax.tree.map(lambda g: g[i], tg.shared)
  if not tg.compact:
    return grad
  path = token_table_path(model)
  table, _ = grads_lib.split_token_table(shared_params, path)
  if table_frozen:
    table_grad = jnp.zeros_like(table)
  else:
    one_hot = jnp.zeros(tg.losses.shape, table.dtype).at[i].set(1)
    table_grad = _psum(grads_lib.token_table_gradient(
        one_hot, tg.task.token_rows, tg.task.token_ids, table.shape,
        same_ids=model.layout == "same_input"), axis_name)
  return grads_lib.with_token_table(grad, table_grad, path)


def lookahead_affinity(model: MultiTaskProtocol, params, tg: TaskGram, batch, rng,
                       lr: float, *, table_frozen: bool = False, axis_name=None) -> jax.Array:
  """``Z[i, j] = 1 - L_j(shared - lr g_i) / L_j(shared)`` on the same batch (heads fixed)."""
  shared = params[model.shared_key]
  rows = []
  for i in range(tg.losses.shape[0]):
    direction = _task_direction(model, shared, tg, i, table_frozen, axis_name)
    moved = jax.tree.map(lambda p, d: p - jnp.asarray(lr, p.dtype) * d.astype(p.dtype),
                         shared, direction)
    after = _psum(grads_lib.task_losses(model, {**params, model.shared_key: moved}, batch,
                                        rng, axis_name), axis_name)
    rows.append(1.0 - after / tg.losses)
  return jnp.stack(rows)


def gradient_diagnostics(state: TrainState, batch, *, model: MultiTaskProtocol, trainable=None,
                         dropout: bool = True, affinity_lr: float | None = None,
                         axis_name: str | None = None) -> dict[str, jax.Array]:
  """``{"task_grad_norms": [T], "cosines": [T, T]}`` (+ ``"affinity"`` when ``affinity_lr``
  is set) at ``state`` on ``batch``, as the train step would see them; NaN for absent tasks."""
  rng = step_rng(state, axis_name) if dropout else None
  model, table_frozen = masked_model(model, trainable)
  present = grads_lib.label_counts(model, batch, axis_name) > 0
  both = present[:, None] & present[None, :]
  tg = task_gram(model, state.params, batch, rng, axis_name=axis_name,
                 table_frozen=table_frozen)
  out = {"task_grad_norms": jnp.where(present, jnp.sqrt(jnp.maximum(jnp.diagonal(tg.gram), 0)),
                                      jnp.nan),
         "cosines": jnp.where(both, cosines_from_gram(tg.gram), jnp.nan)}
  if affinity_lr is not None:
    z = lookahead_affinity(model, state.params, tg, batch, rng, affinity_lr,
                           table_frozen=table_frozen, axis_name=axis_name)
    out["affinity"] = jnp.where(both, z, jnp.nan)
  return out


class Diagnostics:
  """``diagnostics(state, batch, affinity=False) -> {name: numpy array}`` for a train step's
  parallel layout (call it BEFORE the step: the step donates ``state``). Compiled on first
  use, once without and once with affinity; never part of the step's own computation."""

  def __init__(self, step: CompiledStep, model: MultiTaskProtocol, *, trainable=None,
               dropout: bool = True, affinity_lr: float = 0.0):
    self._step = step
    self._kwargs = dict(model=model, trainable=trainable, dropout=dropout)
    self._affinity_lr = float(affinity_lr)
    self._fns: dict[bool, Any] = {}

  def _compile(self, affinity: bool):
    fn = functools.partial(gradient_diagnostics, **self._kwargs,
                           affinity_lr=self._affinity_lr if affinity else None)
    step = self._step
    if step.parallelism == "pmap":
      return jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS,
                      devices=jax.local_devices()[:step.num_devices])
    if step.parallelism == "sharded":
      return jax.jit(fn, out_shardings=NamedSharding(step.mesh, P()))
    return jax.jit(fn)

  def __call__(self, state: TrainState, batch, *, affinity: bool = False) -> dict[str, Any]:
    if affinity not in self._fns:
      self._fns[affinity] = self._compile(affinity)
    out = self._fns[affinity](state, batch)
    return jax.tree.map(np.asarray, jax.device_get(self._step.unreplicate_metrics(out)))


def from_config(config, step: CompiledStep, model: MultiTaskProtocol, trainable
                ) -> Diagnostics | None:
  """The run's diagnostics (None when ``train.log_cosines`` and ``train.affinity_every``
  are both off)."""
  t = config.train
  if not t.log_cosines and not t.affinity_every:
    return None
  return Diagnostics(step, model, trainable=trainable,
                     affinity_lr=t.affinity_lr or config.optimizer.learning_rate)


def due(train_config, step: int, total: int) -> bool | None:
  """At the step numbered ``step`` (1-based, the one about to run): None (no diagnostics),
  False (norms and cosines), True (also affinity). Only logging steps carry diagnostics."""
  t = train_config
  logged = step % t.log_every == 0 or step == total
  affinity = bool(t.affinity_every) and step % t.affinity_every == 0
  if not logged or not (t.log_cosines or affinity):
    return None
  return affinity


def record_fields(host: dict[str, Any], names) -> dict[str, Any]:
  """A metrics.jsonl record's diagnostics: ``task_grad_norms`` ``{task: v}``, ``cosines``
  ``{"a|b": v}`` (a before b in task order), ``affinity`` ``{"a->b": Z[a, b]}``."""
  n = len(names)
  out = {"task_grad_norms": dict(zip(names, np.asarray(host["task_grad_norms"], float).tolist()))}
  c = np.asarray(host["cosines"], float)
  out["cosines"] = {f"{names[i]}|{names[j]}": float(c[i, j])
                    for i in range(n) for j in range(i + 1, n)}
  if "affinity" in host:
    z = np.asarray(host["affinity"], float)
    out["affinity"] = {f"{names[i]}->{names[j]}": float(z[i, j])
                       for i in range(n) for j in range(n) if i != j}
  return out


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(v)]


def has_conflict(cosines: dict[str, float | None]) -> bool | None:
  """Whether some pair's cosine is negative; None when no pair has one (< 2 tasks present)."""
  values = _finite(cosines.values())
  return None if not values else min(values) < 0


def summarize(records) -> dict[str, Any]:
  """From a run's metrics.jsonl records: ``conflict_fraction`` (logged steps with a
  conflicting pair / logged steps with at least one pair; None without any), the two counts,
  and ``affinity`` (each pair's mean over the steps that logged it)."""
  train = {r["step"]: r for r in records if r.get("split") == "train"}  # a resume logs again
  flags = [has_conflict(r["cosines"]) for _, r in sorted(train.items()) if r.get("cosines")]
  judged = [f for f in flags if f is not None]
  affinity: dict[str, list[float]] = {}
  for r in train.values():
    for pair, value in (r.get("affinity") or {}).items():
      affinity.setdefault(pair, []).extend(_finite([value]))
  return {"conflict_fraction": sum(judged) / len(judged) if judged else None,
          "conflict_steps": int(sum(judged)), "judged_steps": len(judged),
          "affinity": {pair: float(np.mean(v)) if v else None for pair, v in affinity.items()}}


def run_summary(workdir: str, say=print) -> dict[str, Any]:
  """``summarize`` over ``workdir``'s metrics.jsonl, with one line said about conflicts."""
  from jmtl.train.logging import read_jsonl
  summary = summarize(read_jsonl(os.path.join(workdir, "metrics.jsonl")))
  if summary["judged_steps"]:
    say(f"conflicting gradients (a negative cosine) at {summary['conflict_steps']} of "
        f"{summary['judged_steps']} logged steps")
  return summary

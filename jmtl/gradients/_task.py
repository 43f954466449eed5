"""Per-task losses and per-task gradients of the shared params, for any protocol model.

Losses are masked sums divided by the task's label count, and that count can be summed
across devices first (``axis_name``): every data-parallel layout then computes exactly the
gradient of the global batch mean, and a task without labels gets loss 0 and gradient 0
(``label_counts(...) > 0`` tells the step which tasks are present).
Each task's own params get its own task's unweighted gradient (they belong to one task).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jmtl.models.protocol import (MultiTaskProtocol, feature_readers, task_aux_loss_sum,
                                  task_batches, task_loss_sum)

PyTree = Any
Batch = Mapping[str, jax.Array]


class TaskGradients(NamedTuple):
  losses: jax.Array  # [T] masked mean losses
  shared: PyTree  # per-task gradients of the shared params, leading axis T
  heads: dict[str, PyTree]  # each task's own params' gradient of its own task's loss


class RepresentationGradients(NamedTuple):
  losses: jax.Array  # [T]
  shared: PyTree  # per-task gradients w.r.t. the shared representation, leading axis T
  heads: dict[str, PyTree]
  backward: Callable[[PyTree], PyTree]  # representation cotangent -> shared param grads
  # Per leaf of ``shared``: the tasks whose loss reads that leaf (None: every task); the
  # other rows are zero, and ``gram_matrix(shared, rows)`` / ``weighted_sum`` skip them.
  rows: tuple[tuple[int, ...], ...] | None


def label_counts(model: MultiTaskProtocol, batch, axis_name: str | None = None) -> jax.Array:
  """``[T]`` labelled units per task in the (global, with ``axis_name``) batch; 0 = absent."""
  counts = jnp.stack([model.label_count(name, task_batch).astype(jnp.float32)
                      for name, task_batch in zip(model.names, task_batches(model, batch))])
  return counts if axis_name is None else lax.psum(counts, axis_name)


class _HostView(Mapping):
  """A batch whose arrays are read on the host when a key is read (nested task batches too)."""

  def __init__(self, batch: Mapping):
    self._batch = batch

  def __getitem__(self, key):
    value = self._batch[key]
    return _HostView(value) if isinstance(value, Mapping) else np.asarray(value)

  def __iter__(self):
    return iter(self._batch)

  def __len__(self):
    return len(self._batch)


def host_every_task_present(model: MultiTaskProtocol, batch) -> bool | None:
  """Whether every task has a labelled unit in ``batch``, read on the host, or None when
  the host cannot tell (a multi-process run: this process holds part of the global batch).

  Reads only what ``label_count`` reads, with NumPy: a batch put on the device just before
  is read back without waiting for the step in flight (a jitted count would queue behind
  it). ``MultiTaskModel.label_count`` stays on the host; a protocol model whose
  ``label_count`` calls ``jnp`` is still counted right, after the device catches up.
  """
  if jax.process_count() > 1:
    return None
  view = _HostView(batch)
  return all(float(model.label_count(name, task_batch)) > 0
             for name, task_batch in zip(model.names, task_batches(model, view)))


def loss_denominators(counts: jax.Array) -> jax.Array:
  """What each task's loss sum is divided by: its count, 1 for an absent task (loss 0)."""
  return jnp.maximum(counts, 1.0)


def task_rng(rng: jax.Array | None, index: int) -> jax.Array | None:
  return None if rng is None else jax.random.fold_in(rng, index)


def heads_on_features(model: MultiTaskProtocol, per_task_params, features, batches,
                      denominators: jax.Array, indices, rng: jax.Array | None = None):
  """Per task in ``indices``: normalised loss, its own params' gradient, its gradient
  w.r.t. ``features``. ``batches[i]`` is task i's batch; ``rng`` the step key (a private
  part with dropout gets task i's own key from it)."""
  losses, head_grads, feature_grads = [], {}, []
  for i in indices:
    name = model.names[i]
    def task_loss(hp, feats, i=i):
      return task_loss_sum(model, i, hp, feats, batches[i], rng) / denominators[i]
    loss, (g_head, g_features) = jax.value_and_grad(task_loss, argnums=(0, 1))(
        per_task_params[name], features)
    losses.append(loss)
    head_grads[name] = g_head
    feature_grads.append(g_features)
  return losses, head_grads, feature_grads


def stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def same_input_representation(model: MultiTaskProtocol, params, batch: Batch,
                              rng: jax.Array | None = None,
                              axis_name: str | None = None) -> RepresentationGradients:
  batches = task_batches(model, batch)
  if model.layout != "same_input":
    raise ValueError("rep-grad needs one shared input: use the same-input layout or "
                     "grad_mode='exact' for multi-input batches")
  denominators = loss_denominators(label_counts(model, batch, axis_name))
  features, encoder_vjp = jax.vjp(lambda p: model.encode(p, batch, rng),
                                  params[model.shared_key])
  losses, head_grads, feature_grads = heads_on_features(
      model, params[model.task_key], features, batches, denominators, range(len(model.names)),
      rng)
  backward = lambda cotangent: encoder_vjp(cotangent)[0]
  return RepresentationGradients(jnp.stack(losses), stack_trees(feature_grads), head_grads,
                                 backward, feature_readers(model))


def same_input_jacobian(model: MultiTaskProtocol, params, batch: Batch,
                        rng: jax.Array | None = None,
                        axis_name: str | None = None) -> TaskGradients:
  rep = same_input_representation(model, params, batch, rng, axis_name)
  shared = jax.vmap(rep.backward)(rep.shared)
  return TaskGradients(rep.losses, shared, rep.heads)


def multi_input_jacobian(model: MultiTaskProtocol, params, batches: Mapping[str, Batch],
                         rng: jax.Array | None = None,
                         axis_name: str | None = None) -> TaskGradients:
  """One forward and backward per task's own batch (batches may differ in rows and length)."""
  per_task = task_batches(model, batches)
  denominators = loss_denominators(label_counts(model, batches, axis_name))
  losses, head_grads, shared = [], {}, []
  for i, batch in enumerate(per_task):
    features, encoder_vjp = jax.vjp(lambda p, b=batch, i=i: model.encode(p, b, task_rng(rng, i)),
                                    params[model.shared_key])
    loss, g_heads, g_features = heads_on_features(
        model, params[model.task_key], features, per_task, denominators, (i,), rng)
    losses.append(loss[0])
    head_grads.update(g_heads)
    shared.append(encoder_vjp(g_features[0])[0])
  return TaskGradients(jnp.stack(losses), stack_trees(shared), head_grads)


def task_losses(model: MultiTaskProtocol, params, batch, rng: jax.Array | None = None,
                axis_name: str | None = None) -> jax.Array:
  """``[T]`` normalised task losses for the model's declared layout."""
  denominators = loss_denominators(label_counts(model, batch, axis_name))
  own = params[model.task_key]
  sums = [task_loss_sum(model, i, own[name], features, b, rng)
          for i, (name, b, features) in enumerate(_representations(model, params, batch, rng))]
  return jnp.stack(sums) / denominators


def _representations(model: MultiTaskProtocol, params, batch, rng):
  """Per task: (name, its batch, the representation its loss reads), as every path
  computes them (one encode for the same input; task i's own, keyed ``task_rng``, else)."""
  per_task, shared = task_batches(model, batch), params[model.shared_key]
  if model.layout == "multi_input":
    reps = [model.encode(shared, b, task_rng(rng, i)) for i, b in enumerate(per_task)]
  else:
    reps = [model.encode(shared, batch, rng)] * len(per_task)
  return tuple(zip(model.names, per_task, reps))


def aux_loss_grads(model: MultiTaskProtocol, params, batch, rng: jax.Array | None = None,
                   axis_name: str | None = None):
  """``(sum over tasks of aux_loss_sum, its gradient w.r.t. all params)``, both global
  (summed across ``axis_name``): the model's auxiliary losses (protocol ``aux_loss_sum``)
  on the representations the task losses read this step, same dropout keys."""
  def total(p):
    own = p[model.task_key]
    return sum(task_aux_loss_sum(model, i, own[name], features, b, rng)
               for i, (name, b, features) in enumerate(_representations(model, p, batch, rng)))
  value, grads = jax.value_and_grad(total)(params)
  if axis_name is not None:
    value, grads = lax.psum((value, grads), axis_name)
  return value, grads


def weighted_loss_grads(model: MultiTaskProtocol, params, batch, weigh: Callable,
                        rng: jax.Array | None = None, axis_name: str | None = None):
  """One forward, weights from the losses, one backward of ``sum_t w_t L_t``.

  ``weigh(losses) -> (weights, aux)`` runs between the forward and the backward, so
  loss-based methods see this step's losses and cost one backward in total.
  Returns ``(losses, weights, grads, aux)``; task-specific gradients here are weighted.
  """
  losses, vjp = jax.vjp(lambda p: task_losses(model, p, batch, rng, axis_name), params)
  weights, aux = weigh(lax.stop_gradient(losses))
  (grads,) = vjp(weights.astype(losses.dtype))
  return losses, weights, grads, aux


def is_multi_input(model: MultiTaskProtocol, batch=None) -> bool:
  """Deprecated: the layout is declared (``model.layout``), not read from a batch."""
  warnings.warn("jmtl.gradients.is_multi_input is deprecated: read model.layout",
                DeprecationWarning, stacklevel=2)
  return model.layout == "multi_input"

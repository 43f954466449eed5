"""Per-task losses and gradients, all inside one traced function.

Four ways to get what a balancer needs, chosen by the train step:

* ``same_input_jacobian``: one encoder forward, each head's loss and its gradient w.r.t.
  the encoder outputs, then ONE ``vmap`` over the encoder's vjp with the T output
  cotangents: per-task gradients of the shared parameters ``[T, ...]``.
* ``multi_input_jacobian``: a dict ``task -> batch``; each task has its own forward and
  backward, so exact per-task gradients cost what one summed backward costs.
* ``same_input_representation``: per-task gradients w.r.t. the encoder outputs (the shared
  representation) plus the vjp that turns a combined cotangent into parameter gradients
  with one backward (rep-grad, as MGDA-UB).
* ``weighted_loss_grads``: the weighted loss sum and one backward, for methods that need
  no per-task gradients.

Losses are masked sums divided by the task's label count, and that count can be summed
across devices first (``axis_name``): every data-parallel layout then computes exactly the
gradient of the global batch mean, and a task without labels gets loss 0 and gradient 0.
Each head's gradient is its own task's unweighted gradient (heads belong to one task).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jmtl.models.multitask import Features, MultiTaskModel
from jmtl.tasks import TaskSpec

PyTree = Any
Batch = Mapping[str, jax.Array]


class TaskGradients(NamedTuple):
  losses: jax.Array  # [T] masked mean losses
  shared: PyTree  # per-task gradients of the encoder params, leading axis T
  heads: dict[str, PyTree]  # each head's gradient of its own task's loss


class RepresentationGradients(NamedTuple):
  losses: jax.Array  # [T]
  shared: PyTree  # per-task gradients w.r.t. the encoder outputs, leading axis T
  heads: dict[str, PyTree]
  backward: Callable[[PyTree], PyTree]  # encoder-output cotangent -> encoder param grads


def label_counts(tasks: tuple[TaskSpec, ...], batch: Batch | Mapping[str, Batch],
                 axis_name: str | None = None) -> jax.Array:
  """``[T]`` labelled units per task in the (global, with ``axis_name``) batch."""
  def count(spec):
    task_batch = batch[spec.name] if _is_multi_input(tasks, batch) else batch
    return jnp.sum(task_batch[spec.mask_key].astype(jnp.float32))
  counts = jnp.stack([count(spec) for spec in tasks])
  if axis_name is not None:
    counts = lax.psum(counts, axis_name)
  return jnp.maximum(counts, 1.0)


def _is_multi_input(tasks, batch) -> bool:
  return all(spec.name in batch and isinstance(batch[spec.name], Mapping) for spec in tasks)


def _heads_on_features(model: MultiTaskModel, head_params, features: Features, batch: Batch,
                       denominators: jax.Array, specs=None):
  """Per task: normalised loss, its head's gradient, and its gradient w.r.t. features."""
  losses, head_grads, feature_grads = [], {}, []
  for i, spec in enumerate(specs or model.tasks):
    def task_loss(hp, feats, spec=spec, i=i):
      return model.task_loss_sum(spec, hp, feats, batch)[0] / denominators[i]
    loss, (g_head, g_features) = jax.value_and_grad(task_loss, argnums=(0, 1))(
        head_params[spec.name], features)
    losses.append(loss)
    head_grads[spec.name] = g_head
    feature_grads.append(g_features)
  return jnp.stack(losses), head_grads, feature_grads


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def same_input_representation(model: MultiTaskModel, params, batch: Batch,
                              rng: jax.Array | None = None,
                              axis_name: str | None = None) -> RepresentationGradients:
  denominators = label_counts(model.tasks, batch, axis_name)
  features, encoder_vjp = jax.vjp(lambda p: model.encode(p, batch, rng), params["encoder"])
  losses, head_grads, feature_grads = _heads_on_features(
      model, params["heads"], features, batch, denominators)
  backward = lambda cotangent: encoder_vjp(cotangent)[0]
  return RepresentationGradients(losses, _stack(feature_grads), head_grads, backward)


def same_input_jacobian(model: MultiTaskModel, params, batch: Batch,
                        rng: jax.Array | None = None,
                        axis_name: str | None = None) -> TaskGradients:
  rep = same_input_representation(model, params, batch, rng, axis_name)
  shared = jax.vmap(rep.backward)(rep.shared)
  return TaskGradients(rep.losses, shared, rep.heads)


def multi_input_jacobian(model: MultiTaskModel, params, batches: Mapping[str, Batch],
                         rng: jax.Array | None = None,
                         axis_name: str | None = None) -> TaskGradients:
  denominators = label_counts(model.tasks, batches, axis_name)
  losses, head_grads, shared = [], {}, []
  for i, spec in enumerate(model.tasks):
    batch = batches[spec.name]
    task_rng = None if rng is None else jax.random.fold_in(rng, i)
    features, encoder_vjp = jax.vjp(lambda p: model.encode(p, batch, task_rng), params["encoder"])
    loss, g_heads, g_features = _heads_on_features(
        model, params["heads"], features, batch, denominators[i:i + 1], specs=(spec,))
    losses.append(loss[0])
    head_grads.update(g_heads)
    shared.append(encoder_vjp(g_features[0])[0])
  return TaskGradients(jnp.stack(losses), _stack(shared), head_grads)


def task_losses(model: MultiTaskModel, params, batch, rng: jax.Array | None = None,
                axis_name: str | None = None) -> jax.Array:
  """``[T]`` normalised task losses for either layout."""
  denominators = label_counts(model.tasks, batch, axis_name)
  if _is_multi_input(model.tasks, batch):
    sums = []
    for i, spec in enumerate(model.tasks):
      task_rng = None if rng is None else jax.random.fold_in(rng, i)
      features = model.encode(params["encoder"], batch[spec.name], task_rng)
      sums.append(model.task_loss_sum(spec, params["heads"][spec.name], features, batch[spec.name])[0])
  else:
    features = model.encode(params["encoder"], batch, rng)
    sums = [model.task_loss_sum(spec, params["heads"][spec.name], features, batch)[0]
            for spec in model.tasks]
  return jnp.stack(sums) / denominators


def weighted_loss_grads(model: MultiTaskModel, params, batch, weigh: Callable,
                        rng: jax.Array | None = None, axis_name: str | None = None):
  """One forward, weights from the losses, one backward of ``sum_t w_t L_t``.

  ``weigh(losses) -> (weights, aux)`` runs between the forward and the backward, so
  loss-based methods see this step's losses and cost one backward in total.
  Returns ``(losses, weights, grads, aux)``; head gradients here are weighted.
  """
  losses, vjp = jax.vjp(lambda p: task_losses(model, p, batch, rng, axis_name), params)
  weights, aux = weigh(lax.stop_gradient(losses))
  (grads,) = vjp(weights.astype(losses.dtype))
  return losses, weights, grads, aux


def is_multi_input(model: MultiTaskModel, batch) -> bool:
  return _is_multi_input(model.tasks, batch)

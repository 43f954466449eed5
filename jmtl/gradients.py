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
* ``*_compact_jacobian``: the exact per-task gradients with the token table's kept as the
  per-token cotangents of the gathered rows (``[T, B, L, D]``), never ``[T, V, D]``; enough
  for G (``token_table_gram``) and for the combined table gradient (one scatter). Gram
  methods use these: at V = 30k the dense per-task table gradients, their Gram and their
  weighted sum dominated the exact step.

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
  # Per leaf of ``shared``: the tasks whose head reads that feature; the other rows are
  # zero, and ``gram_matrix(shared, rows)`` / ``weighted_sum(w, shared, rows)`` skip them.
  rows: tuple[tuple[int, ...], ...]


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
  return RepresentationGradients(losses, _stack(feature_grads), head_grads, backward,
                                 model.feature_readers())


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


# ---------------------------------------------------------------- compact token-table gradients

_FILL = jnp.iinfo(jnp.int32).max


class CompactTaskGradients(NamedTuple):
  losses: jax.Array  # [T]
  shared: PyTree  # per-task gradients of the encoder params except the token table, axis T
  token_rows: jax.Array  # [T, B, L, D] per-task cotangents of the gathered token-table rows
  token_ids: jax.Array  # [T, B, L] the ids those rows came from
  heads: dict[str, PyTree]


def split_token_table(encoder_params) -> tuple[jax.Array, PyTree]:
  """``(table, the other encoder params)``."""
  rest = dict(encoder_params)
  return rest.pop("token_embedding")["embedding"], rest


def with_token_table(rest: PyTree, table: jax.Array) -> PyTree:
  return {**rest, "token_embedding": {"embedding": table}}


def _encode_rows(model, table, rest, rows, batch, rng):
  # The table is still passed (Flax checks it exists) but never read: the rows replace it.
  return model.encode(with_token_table(rest, lax.stop_gradient(table)), batch, rng,
                      token_rows=rows)


def same_input_compact_jacobian(model: MultiTaskModel, params, batch: Batch,
                                rng: jax.Array | None = None,
                                axis_name: str | None = None) -> CompactTaskGradients:
  denominators = label_counts(model.tasks, batch, axis_name)
  table, rest = split_token_table(params["encoder"])
  features, vjp = jax.vjp(lambda r, x: _encode_rows(model, table, r, x, batch, rng),
                          rest, table[batch["input_ids"]])
  losses, head_grads, feature_grads = _heads_on_features(
      model, params["heads"], features, batch, denominators)
  shared, rows = jax.vmap(vjp)(_stack(feature_grads))
  ids = jnp.broadcast_to(batch["input_ids"], rows.shape[:-1])
  return CompactTaskGradients(losses, shared, rows, ids, head_grads)


def multi_input_compact_jacobian(model: MultiTaskModel, params, batches: Mapping[str, Batch],
                                 rng: jax.Array | None = None,
                                 axis_name: str | None = None) -> CompactTaskGradients:
  denominators = label_counts(model.tasks, batches, axis_name)
  table, rest = split_token_table(params["encoder"])
  losses, head_grads, shared, rows = [], {}, [], []
  for i, spec in enumerate(model.tasks):
    batch = batches[spec.name]
    task_rng = None if rng is None else jax.random.fold_in(rng, i)
    features, vjp = jax.vjp(
        lambda r, x, batch=batch, task_rng=task_rng: _encode_rows(model, table, r, x, batch,
                                                                  task_rng),
        rest, table[batch["input_ids"]])
    loss, g_heads, g_features = _heads_on_features(
        model, params["heads"], features, batch, denominators[i:i + 1], specs=(spec,))
    losses.append(loss[0])
    head_grads.update(g_heads)
    g_rest, g_rows = vjp(g_features[0])
    shared.append(g_rest)
    rows.append(g_rows)
  ids = jnp.stack([batches[spec.name]["input_ids"] for spec in model.tasks])
  return CompactTaskGradients(jnp.stack(losses), _stack(shared), jnp.stack(rows), ids, head_grads)


def token_table_gram(rows: jax.Array, ids: jax.Array, *, same_ids: bool) -> jax.Array:
  """The token table's share of G, ``<scatter(rows_s), scatter(rows_t)>``, as ``[T, T]``.

  ``same_ids`` (one batch for every task): merge the rows per unique id into ``[T, N, D]``
  and take their Gram. Otherwise merge per (id, task), which sorts the entries by id then
  task, so an id's entries (at most T) sit together, and add the products of entries with
  the same id at distance 1, 2, ... while any such pair is left (at most T - 1 rounds; few
  when the tasks' batches share few ids).
  """
  num_tasks, width = rows.shape[0], rows.shape[-1]
  if same_ids:
    flat = ids[0].reshape(-1)
    _, inverse = jnp.unique(flat, size=flat.shape[0], fill_value=_FILL, return_inverse=True)
    merged = jax.vmap(lambda r: jax.ops.segment_sum(r, inverse.reshape(-1), flat.shape[0]))(
        rows.reshape(num_tasks, -1, width)).reshape(num_tasks, -1)
    return merged @ merged.T
  rows = rows.reshape(-1, width)
  count = rows.shape[0]
  task = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), count // num_tasks)
  keys = ids.reshape(-1).astype(jnp.int32) * num_tasks + task
  unique, inverse = jnp.unique(keys, size=count, fill_value=_FILL, return_inverse=True)
  merged = jax.ops.segment_sum(rows, inverse.reshape(-1), num_segments=count)
  valid = unique != _FILL
  entry_id, entry_task = unique // num_tasks, unique % num_tasks
  bins = num_tasks * num_tasks
  gram = jax.ops.segment_sum(jnp.sum(merged * merged, -1), entry_task * (num_tasks + 1),
                             num_segments=bins)
  pad = lambda x, value: jnp.concatenate([x, jnp.full((num_tasks, *x.shape[1:]), value, x.dtype)])
  merged_p, id_p, task_p, valid_p = pad(merged, 0), pad(entry_id, -1), pad(entry_task, 0), pad(valid, False)
  shifted = lambda x, shift: lax.dynamic_slice_in_dim(x, shift, count)
  same_at = lambda shift: (entry_id == shifted(id_p, shift)) & valid & shifted(valid_p, shift)

  def add_pairs(carry):
    shift, gram = carry
    other_task = shifted(task_p, shift)
    inner = jnp.where(same_at(shift), jnp.sum(merged * shifted(merged_p, shift), -1), 0.0)
    gram += jax.ops.segment_sum(inner, entry_task * num_tasks + other_task, num_segments=bins)
    gram += jax.ops.segment_sum(inner, other_task * num_tasks + entry_task, num_segments=bins)
    return shift + 1, gram

  def pairs_left(carry):
    shift, _ = carry
    return (shift < num_tasks) & jnp.any(same_at(jnp.minimum(shift, num_tasks)))

  _, gram = lax.while_loop(pairs_left, add_pairs, (jnp.int32(1), gram))
  return gram.reshape(num_tasks, num_tasks)


def token_table_gradient(weights: jax.Array, rows: jax.Array, ids: jax.Array,
                         table_shape: tuple[int, int], *, same_ids: bool) -> jax.Array:
  """``sum_t w_t scatter(rows_t)``: ONE scatter of weighted rows into the ``[V, D]`` table."""
  weights = weights.astype(rows.dtype)
  if same_ids:  # every task's rows sit at the same ids: combine them before the scatter
    weighted, flat_ids = jnp.tensordot(weights, rows, axes=1), ids[0]
  else:
    weighted, flat_ids = weights.reshape(-1, *([1] * (rows.ndim - 1))) * rows, ids
  return jnp.zeros(table_shape, rows.dtype).at[flat_ids.reshape(-1)].add(
      weighted.reshape(-1, table_shape[1]))

"""Exact per-task gradients with the token table's part kept as per-token rows.

``*_compact_jacobian`` return the exact per-task gradients of every shared param except the
token table, whose per-task gradients stay the cotangents of the gathered rows
(``table[input_ids]``), never ``[T, V, D]``: enough for G (``token_table_gram``) and for the
combined table gradient (one scatter). Gram methods use these: at V = 30k the dense per-task
table gradients, their Gram and their weighted sum dominated the exact step.

The table sits where the model declares it (``model.token_table``, a path inside the shared
params); the model's ``encode`` takes ``token_rows=`` and then never reads the table.

Rows: same input, one ``[T, B, L, D]`` array (every task's rows sit at the same ids);
multi-input, one ``[B_t, L_t, D]`` array PER TASK, since tasks' batches may differ in rows and
length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jmtl.gradients._task import (heads_on_features, label_counts, loss_denominators,
                                  stack_trees, task_rng)
from jmtl.models.protocol import MultiTaskProtocol, task_batches, token_table_path

PyTree = Any
Batch = Mapping[str, jax.Array]
Rows = jax.Array | Sequence[jax.Array]

_FILL = jnp.iinfo(jnp.int32).max


class CompactTaskGradients(NamedTuple):
  losses: jax.Array  # [T]
  shared: PyTree  # per-task gradients of the shared params except the token table, axis T
  token_rows: Rows  # same input [T, B, L, D]; multi-input a tuple of [B_t, L_t, D]
  token_ids: Rows  # the ids those rows came from: [T, B, L], or a tuple of [B_t, L_t]
  heads: dict[str, PyTree]


def split_token_table(shared_params, path: Sequence[str]) -> tuple[jax.Array, PyTree]:
  """``(table, the shared params without it)``; ``path`` as ``model.token_table``."""
  head, *rest = path
  node = dict(shared_params)
  if not rest:
    return node.pop(head), node
  table, inner = split_token_table(node[head], rest)
  if inner:
    node[head] = inner
  else:
    del node[head]
  return table, node


def with_token_table(rest: PyTree, table: jax.Array, path: Sequence[str]) -> PyTree:
  """Inverse of ``split_token_table``."""
  head, *tail = path
  if not tail:
    return {**rest, head: table}
  return {**rest, head: with_token_table(rest.get(head, {}), table, tail)}


def _encode_rows(model, path, table, rest, rows, batch, rng):
  # The table is still passed (Flax checks it exists) but never read: the rows replace it.
  shared = with_token_table(rest, lax.stop_gradient(table), path)
  return model.encode(shared, batch, rng, token_rows=rows)


def _prepare(model, params, batch, axis_name):
  """``(table path, per-task batches, loss denominators, table, shared params without it)``."""
  path = token_table_path(model)
  if path is None:
    raise ValueError("the compact Jacobian needs the model to declare token_table")
  per_task = task_batches(model, batch)
  denominators = loss_denominators(label_counts(model, batch, axis_name))
  return (path, per_task, denominators, *split_token_table(params[model.shared_key], path))


def same_input_compact_jacobian(model: MultiTaskProtocol, params, batch: Batch,
                                rng: jax.Array | None = None,
                                axis_name: str | None = None) -> CompactTaskGradients:
  path, batches, denominators, table, rest = _prepare(model, params, batch, axis_name)
  features, vjp = jax.vjp(lambda r, x: _encode_rows(model, path, table, r, x, batch, rng),
                          rest, table[batch["input_ids"]])
  losses, head_grads, feature_grads = heads_on_features(
      model, params[model.task_key], features, batches, denominators, range(len(model.names)),
      rng)
  shared, rows = jax.vmap(vjp)(stack_trees(feature_grads))
  ids = jnp.broadcast_to(batch["input_ids"], rows.shape[:-1])
  return CompactTaskGradients(jnp.stack(losses), shared, rows, ids, head_grads)


def multi_input_compact_jacobian(model: MultiTaskProtocol, params, batches: Mapping[str, Batch],
                                 rng: jax.Array | None = None,
                                 axis_name: str | None = None) -> CompactTaskGradients:
  path, per_task, denominators, table, rest = _prepare(model, params, batches, axis_name)
  losses, head_grads, shared, rows = [], {}, [], []
  for i, batch in enumerate(per_task):
    features, vjp = jax.vjp(
        lambda r, x, b=batch, i=i: _encode_rows(model, path, table, r, x, b, task_rng(rng, i)),
        rest, table[batch["input_ids"]])
    loss, g_heads, g_features = heads_on_features(
        model, params[model.task_key], features, per_task, denominators, (i,), rng)
    losses.append(loss[0])
    head_grads.update(g_heads)
    g_rest, g_rows = vjp(g_features[0])
    shared.append(g_rest)
    rows.append(g_rows)
  ids = tuple(batch["input_ids"] for batch in per_task)
  return CompactTaskGradients(jnp.stack(losses), stack_trees(shared), tuple(rows), ids,
                              head_grads)


def gather_rows(rows: Rows, axis_name: str) -> Rows:
  """Every device's rows (the batch axis: 1 of a stacked ``[T, B, ...]``, 0 per task)."""
  if isinstance(rows, (tuple, list)):
    return tuple(lax.all_gather(r, axis_name, axis=0, tiled=True) for r in rows)
  return lax.all_gather(rows, axis_name, axis=1, tiled=True)


def _flat_entries(rows: Rows, ids: Rows):
  """``(rows [N, D], ids [N], task [N])`` over every task's entries (NumPy task index)."""
  rows = [r.reshape(-1, r.shape[-1]) for r in rows]
  ids = [i.reshape(-1) for i in ids]
  task = np.repeat(np.arange(len(rows), dtype=np.int32), [r.shape[0] for r in rows])
  return jnp.concatenate(rows), jnp.concatenate(ids).astype(jnp.int32), jnp.asarray(task)


def token_table_gram(rows: Rows, ids: Rows, *, same_ids: bool) -> jax.Array:
  """The token table's share of G, ``<scatter(rows_s), scatter(rows_t)>``, as ``[T, T]``.

  ``same_ids`` (one batch for every task, stacked rows): merge the rows per unique id into
  ``[T, N, D]`` and take their Gram. Otherwise merge per (id, task), which sorts the entries
  by id then task, so an id's entries (at most T) sit together, and add the products of
  entries with the same id at distance 1, 2, ... while any such pair is left (at most T - 1
  rounds; few when the tasks' batches share few ids).
  """
  num_tasks = len(rows)
  if same_ids:
    width = rows.shape[-1]
    flat = ids[0].reshape(-1)
    _, inverse = jnp.unique(flat, size=flat.shape[0], fill_value=_FILL, return_inverse=True)
    merged = jax.vmap(lambda r: jax.ops.segment_sum(r, inverse.reshape(-1), flat.shape[0]))(
        rows.reshape(num_tasks, -1, width)).reshape(num_tasks, -1)
    return merged @ merged.T
  rows, flat_ids, task = _flat_entries(rows, ids)
  count = rows.shape[0]
  keys = flat_ids * num_tasks + task
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


def token_table_gradient(weights: jax.Array, rows: Rows, ids: Rows,
                         table_shape: tuple[int, int], *, same_ids: bool) -> jax.Array:
  """``sum_t w_t scatter(rows_t)``: ONE scatter of weighted rows into the ``[V, D]`` table."""
  if same_ids:  # every task's rows sit at the same ids: combine them before the scatter
    weighted = jnp.tensordot(weights.astype(rows.dtype), rows, axes=1)
    flat_ids = ids[0]
  else:
    flat_rows, flat_ids, task = _flat_entries(rows, ids)
    weighted = weights.astype(flat_rows.dtype)[task][:, None] * flat_rows
  return jnp.zeros(table_shape, weighted.dtype).at[flat_ids.reshape(-1)].add(
      weighted.reshape(-1, table_shape[1]))

"""The four ways a train step turns a batch into balanced gradients, and the table that picks one.

Each path is one function ``path(model, balancer, params, balancer_state, batch, rng, *,
axis_name, present, log_cosines) -> Balanced``; ``PATHS[(balancer.needs, grad_mode)]`` is
the only place that chooses among them:

* ``loss_only``: weights from this step's losses, ONE backward of the weighted loss sum.
* ``gram``: exact per-task gradients with the token table kept as per-token rows (when the
  model declares ``token_table``), G from them, weights from G, one combination.
* ``exact_jacobian``: exact per-task gradients of every shared param, handed to the balancer.
* ``rep_grad``: per-task gradients w.r.t. the shared representation, balanced there, then
  one backward of the combined cotangent (same-input layout only).

Under pmap (``axis_name`` set) losses, per-task gradients and G are summed across devices
BEFORE balancing, so every device balances the global per-task gradients and takes the same
step as one large batch. ``present`` ([T] bool, from the global label counts) tells the
balancer which tasks have a labelled example in the global batch this step.

Balancers work in float32 whatever the model's dtypes (``jmtl.models.precision``): per-task
gradients are handed over as ``float32(...)``, so G, the solvers and the combination are
float32; a combined representation cotangent goes back to the representation's dtype.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jmtl import gradients as grads_lib
from jmtl.balancers import Balancer, gram_matrix, weighted_sum
from jmtl.models.precision import float32
from jmtl.models.protocol import MultiTaskProtocol, join_params, token_table_path

GradMode = Literal["exact", "rep"]
GRAD_MODES: tuple[str, ...] = ("exact", "rep")
PyTree = Any


class Balanced(NamedTuple):
  grads: PyTree  # gradients of every param (the shared ones balanced)
  losses: jax.Array  # [T] global per-task mean losses
  state: PyTree  # the balancer's new state
  gram: jax.Array | None  # G when it was computed (or wanted for the cosine logs)


def _psum(tree, axis_name):
  return tree if axis_name is None else lax.psum(tree, axis_name)


def _balance(balancer: Balancer, task_grads, state, params, losses, present, want_gram: bool,
             rows=None):
  """Combined gradient, new state, and G when it is computed anyway (or wanted for logs).

  ``rows``: per leaf, the tasks whose gradient there can be non-zero (see ``gram_matrix``).
  """
  if balancer.needs == "gram":
    gram = gram_matrix(task_grads, rows)
    weights, state = balancer.weigh_gram(gram, state, task_losses=losses, present=present)
    return weighted_sum(weights, task_grads, rows), state, gram
  combined, state = balancer.update(task_grads, state, params, task_losses=losses,
                                    present=present)
  return combined, state, gram_matrix(task_grads, rows) if want_gram else None


def _jacobian_fn(model: MultiTaskProtocol, compact: bool):
  if model.layout == "multi_input":
    return grads_lib.multi_input_compact_jacobian if compact else grads_lib.multi_input_jacobian
  return grads_lib.same_input_compact_jacobian if compact else grads_lib.same_input_jacobian


def loss_only(model: MultiTaskProtocol, balancer: Balancer, params, balancer_state, batch, rng,
              *, axis_name=None, present=None, log_cosines=True) -> Balanced:
  def weigh(local_losses):
    losses = _psum(local_losses, axis_name)
    weights, state = balancer.weigh_losses(losses, balancer_state, present=present)
    return weights, (losses, state)
  _, _, grads, (losses, state) = grads_lib.weighted_loss_grads(
      model, params, batch, weigh, rng, axis_name)
  return Balanced(_psum(grads, axis_name), losses, state, None)


def exact_jacobian(model: MultiTaskProtocol, balancer: Balancer, params, balancer_state, batch,
                   rng, *, axis_name=None, present=None, log_cosines=True) -> Balanced:
  task = _jacobian_fn(model, compact=False)(model, params, batch, rng, axis_name)
  losses = _psum(task.losses, axis_name)
  task_grads = float32(_psum(task.shared, axis_name))
  shared, state, gram = _balance(balancer, task_grads, balancer_state,
                                 params[model.shared_key], losses, present, log_cosines)
  return Balanced(join_params(model, shared, _psum(task.heads, axis_name)), losses, state, gram)


class TaskGram(NamedTuple):
  """Per-task gradients of the shared params and their G, for Gram methods and diagnostics."""
  task: Any  # this device's TaskGradients, or CompactTaskGradients when ``compact``
  losses: jax.Array  # [T] global per-task mean losses
  shared: PyTree  # global per-task gradients of the shared params (compact: but the table)
  gram: jax.Array  # [T, T] G over every shared param (the table's share unless frozen)
  compact: bool  # the token table's gradients are per-token rows (``task.token_rows``)


def task_gram(model: MultiTaskProtocol, params, batch, rng, *, axis_name=None,
              table_frozen=False) -> TaskGram:
  """Exact per-task gradients of the shared params and G; a declared token table stays
  per-token rows (see ``jmtl.gradients._compact``), so no ``[T, V, D]`` array is formed.
  A frozen table (``table_frozen``) adds nothing to G."""
  compact = token_table_path(model) is not None
  task = _jacobian_fn(model, compact=compact)(model, params, batch, rng, axis_name)
  losses = _psum(task.losses, axis_name)
  task_grads = float32(_psum(task.shared, axis_name))
  g = gram_matrix(task_grads)
  if compact and not table_frozen:
    rows, ids = float32(task.token_rows), task.token_ids
    if axis_name is not None:  # the table's G needs every device's rows, merged per id
      rows, ids = grads_lib.gather_rows(rows, axis_name), grads_lib.gather_rows(ids, axis_name)
    g = g + grads_lib.token_table_gram(rows, ids, same_ids=model.layout == "same_input")
  return TaskGram(task, losses, task_grads, g, compact)


def gram(model: MultiTaskProtocol, balancer: Balancer, params, balancer_state, batch, rng, *,
         axis_name=None, present=None, log_cosines=True, table_frozen=False) -> Balanced:
  """G and one combination are all a Gram method needs, so the token table's per-task
  gradients stay per-token rows: no ``[T, V, D]`` arrays (see ``jmtl.gradients._compact``).
  A frozen table (``table_frozen``) adds nothing to G and gets a zero gradient."""
  path = token_table_path(model)
  if path is None:  # no declared table: the dense per-task gradients
    return exact_jacobian(model, balancer, params, balancer_state, batch, rng,
                          axis_name=axis_name, present=present, log_cosines=log_cosines)
  same_ids = model.layout == "same_input"
  tg = task_gram(model, params, batch, rng, axis_name=axis_name, table_frozen=table_frozen)
  task, losses, task_grads, g = tg.task, tg.losses, tg.shared, tg.gram
  weights, state = balancer.weigh_gram(g, balancer_state, task_losses=losses, present=present)
  table, _ = grads_lib.split_token_table(params[model.shared_key], path)
  table_grad = (jnp.zeros_like(table) if table_frozen else grads_lib.token_table_gradient(
      weights, float32(task.token_rows), task.token_ids, table.shape, same_ids=same_ids))
  shared = grads_lib.with_token_table(weighted_sum(weights, task_grads),
                                      _psum(table_grad, axis_name), path)
  return Balanced(join_params(model, shared, _psum(task.heads, axis_name)), losses, state, g)


def rep_grad(model: MultiTaskProtocol, balancer: Balancer, params, balancer_state, batch, rng, *,
             axis_name=None, present=None, log_cosines=True) -> Balanced:
  rep = grads_lib.same_input_representation(model, params, batch, rng, axis_name)
  losses = _psum(rep.losses, axis_name)
  task_grads = float32(rep.shared)
  if axis_name is not None:  # the balancer must see every device's examples
    task_grads = lax.all_gather(task_grads, axis_name, axis=1, tiled=True)
  combined, state, g = _balance(balancer, task_grads, balancer_state, None, losses, present,
                                log_cosines, rows=rep.rows)
  if axis_name is not None:  # back to this device's slice of the batch axis
    index = lax.axis_index(axis_name)
    combined = jax.tree.map(
        lambda c, local: lax.dynamic_slice_in_dim(c, index * local.shape[1], local.shape[1]),
        combined, rep.shared)
  combined = jax.tree.map(lambda c, r: c.astype(r.dtype), combined, rep.shared)
  shared = _psum(rep.backward(combined), axis_name)
  return Balanced(join_params(model, shared, _psum(rep.heads, axis_name)), losses, state, g)


# (balancer.needs, grad_mode) -> path. Loss methods need no per-task gradient in either mode.
PATHS = {
    ("losses", "exact"): loss_only,
    ("losses", "rep"): loss_only,
    ("gram", "exact"): gram,
    ("gram", "rep"): rep_grad,
    ("jacobian", "exact"): exact_jacobian,
    ("jacobian", "rep"): rep_grad,
}


def path_for(needs: str, grad_mode: str):
  if grad_mode not in GRAD_MODES:
    raise ValueError(f"unknown grad_mode {grad_mode!r}: use 'exact' or 'rep'")
  try:
    return PATHS[(needs, grad_mode)]
  except KeyError:
    raise ValueError(f"no gradient path for a balancer that needs {needs!r}; "
                     f"known: {sorted({n for n, _ in PATHS})}") from None

"""The pure train step: task losses -> per-task gradients (or G, or losses) -> balancer -> optax.

``train_step(state, batch, *, ...)`` is a pure function of its inputs; ``parallel.py`` wraps it
in ``jax.jit`` (one device, or a mesh with ``NamedSharding``) or ``jax.pmap``. Under pmap
(``axis_name`` set) per-task gradients are summed across devices BEFORE balancing, so every
device balances the global per-task gradients and takes the same step as one large batch.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jmtl import gradients as grads_lib
from jmtl.balancers import Balancer, gram_matrix, weighted_sum
from jmtl.models.multitask import MultiTaskModel
from jmtl.train.state import TrainState

GradMode = Literal["exact", "rep"]
PyTree = Any


def _psum(tree, axis_name):
  return tree if axis_name is None else lax.psum(tree, axis_name)


def _cosines(gram: jax.Array) -> jax.Array:
  norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 1e-30))
  return gram / (norms[:, None] * norms[None, :])


def _combine(balancer: Balancer, task_grads, state, params, losses, want_gram: bool,
             rows=None):
  """Balancer output, new state, and G when it is computed anyway (or wanted for logs).

  ``rows``: per leaf, the tasks whose gradient there can be non-zero (see ``gram_matrix``).
  """
  if balancer.needs == "gram":
    gram = gram_matrix(task_grads, rows)
    weights, state = balancer.weigh(gram, state, task_losses=losses)
    return weighted_sum(weights, task_grads, rows), state, gram
  combined, state = balancer.update(task_grads, state, params, task_losses=losses)
  return combined, state, gram_matrix(task_grads, rows) if want_gram else None


def balanced_gradients(model: MultiTaskModel, balancer: Balancer, params, balancer_state, batch,
                       rng: jax.Array | None, *, grad_mode: GradMode = "exact",
                       axis_name: str | None = None, log_cosines: bool = True):
  """Gradients of all params after balancing the shared ones.

  Returns ``(grads, losses, new_balancer_state, gram_or_None)``; ``losses`` are the global
  per-task mean losses.
  """
  if balancer.needs == "losses":
    def weigh(local_losses):
      losses = _psum(local_losses, axis_name)
      weights, state = balancer.weigh(losses, balancer_state)
      return weights, (losses, state)
    _, _, grads, (losses, state) = grads_lib.weighted_loss_grads(
        model, params, batch, weigh, rng, axis_name)
    return _psum(grads, axis_name), losses, state, None

  multi = grads_lib.is_multi_input(model, batch)
  if grad_mode == "rep":
    if multi:
      raise ValueError("rep-grad needs one shared input: use the same-input layout or "
                       "grad_mode='exact' for multi-input batches")
    rep = grads_lib.same_input_representation(model, params, batch, rng, axis_name)
    losses = _psum(rep.losses, axis_name)
    task_grads = rep.shared
    if axis_name is not None:  # the balancer must see every device's examples
      task_grads = lax.all_gather(task_grads, axis_name, axis=1, tiled=True)
    combined, state, gram = _combine(balancer, task_grads, balancer_state, None, losses,
                                     log_cosines, rows=rep.rows)
    if axis_name is not None:  # back to this device's slice of the batch axis
      index = lax.axis_index(axis_name)
      combined = jax.tree.map(
          lambda c, local: lax.dynamic_slice_in_dim(c, index * local.shape[1], local.shape[1]),
          combined, rep.shared)
    shared = _psum(rep.backward(combined), axis_name)
    heads = _psum(rep.heads, axis_name)
  elif grad_mode == "exact" and balancer.needs == "gram":
    # G and one combination are all a Gram method needs, so the token table's per-task
    # gradients stay per-token rows: no [T, V, D] arrays (see jmtl.gradients).
    jacobian = (grads_lib.multi_input_compact_jacobian if multi
                else grads_lib.same_input_compact_jacobian)
    task = jacobian(model, params, batch, rng, axis_name)
    losses = _psum(task.losses, axis_name)
    task_grads = _psum(task.shared, axis_name)
    rows, ids = task.token_rows, task.token_ids
    if axis_name is not None:  # the table's G needs every device's rows, merged per id
      rows = lax.all_gather(rows, axis_name, axis=1, tiled=True)
      ids = lax.all_gather(ids, axis_name, axis=1, tiled=True)
    gram = gram_matrix(task_grads) + grads_lib.token_table_gram(rows, ids, same_ids=not multi)
    weights, state = balancer.weigh(gram, balancer_state, task_losses=losses)
    table, _ = grads_lib.split_token_table(params["encoder"])
    table_grad = grads_lib.token_table_gradient(weights, task.token_rows, task.token_ids,
                                                table.shape, same_ids=not multi)
    shared = grads_lib.with_token_table(weighted_sum(weights, task_grads),
                                        _psum(table_grad, axis_name))
    heads = _psum(task.heads, axis_name)
  elif grad_mode == "exact":
    jacobian = grads_lib.multi_input_jacobian if multi else grads_lib.same_input_jacobian
    task = jacobian(model, params, batch, rng, axis_name)
    losses = _psum(task.losses, axis_name)
    task_grads = _psum(task.shared, axis_name)
    shared, state, gram = _combine(balancer, task_grads, balancer_state, params["encoder"],
                                   losses, log_cosines)
    heads = _psum(task.heads, axis_name)
  else:
    raise ValueError(f"unknown grad_mode {grad_mode!r}: use 'exact' or 'rep'")
  return {"encoder": shared, "heads": heads}, losses, state, gram


def train_step(state: TrainState, batch, *, model: MultiTaskModel, balancer: Balancer,
               optimizer: optax.GradientTransformation, grad_mode: GradMode = "exact",
               axis_name: str | None = None, dropout: bool = True, log_cosines: bool = True):
  """One optimisation step. Returns ``(new_state, metrics)``.

  A step whose losses or gradients are not finite changes nothing but the step and
  ``nonfinite_steps`` counters, so a NaN never reaches the parameters (or a checkpoint).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # different dropout masks on different devices
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  grads, losses, balancer_state, gram = balanced_gradients(
      model, balancer, state.params, state.balancer_state, batch, rng if dropout else None,
      grad_mode=grad_mode, axis_name=axis_name, log_cosines=log_cosines)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      balancer_state=keep(balancer_state, state.balancer_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
  )
  metrics = {"losses": losses, "grad_norm": grad_norm, "finite": finite}
  weights = getattr(balancer_state, "weights", None)
  if weights is not None:
    metrics["weights"] = weights
  if gram is not None:
    metrics["cosines"] = _cosines(gram)
  return new_state, metrics

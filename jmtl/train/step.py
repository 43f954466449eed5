"""The pure train step: task losses -> per-task gradients (or G, or losses) -> balancer -> optax.

``train_step(state, batch, *, ...)`` is a pure function of its inputs; ``parallel.py`` wraps it
in ``jax.jit`` (one device, or a mesh with ``NamedSharding``) or ``jax.pmap``. How the balanced
gradients are computed is one of the paths in ``grad_paths.PATHS``, picked from the balancer's
``needs`` and the grad mode. The model is anything implementing ``jmtl.models.protocol``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jmtl.balancers import Balancer, applied_weights
from jmtl.gradients import aux_loss_grads, label_counts
from jmtl.models.protocol import MultiTaskProtocol
from jmtl.models.protocol import has_aux_loss, token_table_path
from jmtl.train import grad_paths
from jmtl.train.grad_paths import GradMode, path_for
from jmtl.train.state import TrainState

PyTree = Any


def cosines_from_gram(gram: jax.Array) -> jax.Array:
  """``G_ij / (|g_i| |g_j|)``; a zero gradient's cosines are 0 (its norm floored at 1e-15)."""
  norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 1e-30))
  return gram / (norms[:, None] * norms[None, :])


def _constants(params, trainable):
  return jax.tree.map(lambda p, t: p if t else lax.stop_gradient(p), params, trainable)


class _FrozenAsConstants:
  """``model`` whose frozen leaves (``trainable`` False) are ``stop_gradient`` constants
  inside ``encode`` and ``loss_sum``, where the gradient paths differentiate: their per-task
  gradients are exact zeros, so they add nothing to G, cosines, projections or norms, and
  the optimizer gets zero for them. Everything else is the model's own."""

  def __init__(self, model: MultiTaskProtocol, trainable):
    self._model, self._trainable = model, trainable

  def __getattr__(self, name):
    return getattr(self._model, name)

  def encode(self, shared_params, batch, *args, **kwargs):
    return self._model.encode(
        _constants(shared_params, self._trainable[self._model.shared_key]), batch, *args,
        **kwargs)

  def loss_sum(self, name, task_params, representation, batch, **kwargs):
    frozen = self._trainable[self._model.task_key][name]
    return self._model.loss_sum(name, _constants(task_params, frozen), representation, batch,
                                **kwargs)


def _only_trainable(grads, trainable):
  """``grads`` with exact zeros at frozen leaves (a regulariser never moves them)."""
  if trainable is None:
    return grads
  return jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)


def _table_frozen(model: MultiTaskProtocol, trainable) -> bool:
  path = token_table_path(model)
  if trainable is None or path is None:
    return False
  node = trainable[model.shared_key]
  for key in path:
    node = node[key]
  return not node


def masked_model(model: MultiTaskProtocol, trainable):
  """``(model, table_frozen)``: the model the gradient paths differentiate, whose frozen
  leaves (``trainable`` False) are constants, and whether the token table is frozen."""
  table_frozen = _table_frozen(model, trainable)
  if trainable is not None and not all(jax.tree.leaves(trainable)):
    model = _FrozenAsConstants(model, trainable)
  return model, table_frozen


def step_rng(state: TrainState, axis_name: str | None = None) -> jax.Array:
  """The step's dropout key: the state's key folded with its step (and the device index)."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # different dropout masks on different devices
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  return rng


def balanced_gradients(model: MultiTaskProtocol, balancer: Balancer, params, balancer_state,
                       batch, rng: jax.Array | None, *, grad_mode: GradMode = "exact",
                       axis_name: str | None = None, log_cosines: bool = True,
                       trainable=None, every_task_present: bool = False):
  """Gradients of all params after balancing the shared ones.

  ``trainable``: None (all trained) or a static pytree of bools over ``params``
  (``optim.trainable_mask``); the balancer then sees only the trained parameters.
  Returns ``(grads, losses, new_balancer_state, gram_or_None)``; ``losses`` are the global
  per-task mean losses. A task with no labelled unit in the global batch is not present.

  ``every_task_present`` (static): the caller has checked that every task has a labelled
  unit in the global batch, so the balancer runs as the T-task method alone. Otherwise it
  gets the presence mask, and `with_presence` compiles the method for every possible count
  of present tasks (T + 1 solvers: most of a Gram method's compile time at large T).
  """
  path = path_for(balancer.needs, grad_mode)
  present = None if every_task_present else label_counts(model, batch, axis_name) > 0
  model, table_frozen = masked_model(model, trainable)
  # The compact Gram path reads the token table's per-task rows from the embedding lookup,
  # not from the table parameter: a frozen table must be skipped there explicitly.
  extra = {"table_frozen": table_frozen} if path is grad_paths.gram else {}
  return tuple(path(model, balancer, params, balancer_state, batch, rng, axis_name=axis_name,
                    present=present, log_cosines=log_cosines, **extra))


def _optimizer_step(optimizer: optax.GradientTransformation):
  def apply(grads, opt_state, params):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return apply


def _unchanged(grads, opt_state, params):
  del grads
  return params, opt_state


def train_step(state: TrainState, batch, *, model: MultiTaskProtocol, balancer: Balancer,
               optimizer: optax.GradientTransformation, grad_mode: GradMode = "exact",
               axis_name: str | None = None, dropout: bool = True, log_cosines: bool = True,
               trainable=None, every_task_present: bool = False):
  """One optimisation step. Returns ``(new_state, metrics)``.

  ``trainable``: a static pytree of bools over the params (``optim.trainable_mask``), or None;
  frozen leaves get zero gradients and are invisible to the balancer.
  ``every_task_present``: static; see `balanced_gradients` (only for batches checked so).

  A step whose losses or gradients are not finite changes nothing but the step and
  ``nonfinite_steps`` counters, so a NaN never reaches the parameters (or a checkpoint).
  """
  rng = step_rng(state, axis_name)
  grads, losses, balancer_state, gram = balanced_gradients(
      model, balancer, state.params, state.balancer_state, batch, rng if dropout else None,
      grad_mode=grad_mode, axis_name=axis_name, log_cosines=log_cosines, trainable=trainable,
      every_task_present=every_task_present)
  penalty = getattr(model, "penalty", None)
  if penalty is not None:  # a regulariser of the params (soft sharing): added, never balanced
    grads = jax.tree.map(jnp.add, grads,
                         _only_trainable(jax.grad(penalty)(state.params), trainable))
  aux = None
  if has_aux_loss(model):  # auxiliary losses of the private parts (DSelect-k): never balanced
    aux, aux_grads = aux_loss_grads(model, state.params, batch, rng if dropout else None,
                                    axis_name)
    grads = jax.tree.map(jnp.add, grads, _only_trainable(aux_grads, trainable))
  # The barrier lets XLA:CPU square-and-sum each gradient in one pass; without it the square of
  # the token table's gradient was written out first (2 ms of an 80 ms step, peer benchmark).
  grad_norm = optax.tree.norm(lax.optimization_barrier(grads))
  # Balanced gradients are float32; params stored in another dtype take theirs back.
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(grad_norm)
  if aux is not None:
    finite &= jnp.isfinite(aux)
  # A cond rather than a select over the optimizer's outputs: with the select, XLA:CPU
  # recomputed the new Adam moments inside the parameter update after updating them in place,
  # so it copied the old token-table moments first (4 ms of an 80 ms step, peer benchmark).
  params, opt_state = lax.cond(finite, _optimizer_step(optimizer), _unchanged,
                               grads, state.opt_state, state.params)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      balancer_state=keep(balancer_state, state.balancer_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
  )
  metrics = {"losses": losses, "grad_norm": grad_norm, "finite": finite}
  weights = applied_weights(balancer_state)
  if weights is not None:
    metrics["weights"] = weights
  if gram is not None:
    metrics["cosines"] = cosines_from_gram(gram)
  if aux is not None:
    metrics["aux_loss"] = aux
  return new_state, metrics

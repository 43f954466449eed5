"""Leaving absent tasks out of balancing: every registered method, one mechanism.

A task with no labelled example in the (global) batch has a zero gradient and a meaningless
loss. Fed to a solver as such it corrupts the step (MGDA's min-norm point of a hull that
contains 0 is 0; a loss history records a spurious 0). So for a ``present`` mask ``[T]``,
`with_presence` runs the method built for the ``k`` present tasks on their gradients /
Gram block / losses only, and scatters back: weight 0 for absent tasks, and every per-task
entry of the state (histories, learned weights, momenta, EMA targets, logits) keeps its
previous value for them. With no task present the update is zero and the state unchanged
(apart from ``weights``, which reports the zeros applied).

Under jit ``k`` is a traced value, so the method is built once per possible ``k`` and
``lax.switch`` picks the branch (no Python branching on values; the present tasks are
moved to the front by a stable sort, so their relative order is kept). Per-task axes of
the state are found by comparing the state shapes of the T-task and (T+1)-task methods:
the axes whose size changes are task axes, whatever the state looks like.

A method that cannot be built for ``k`` tasks (Krum with fewer than ``f + 3``, a trimmed
mean that would trim everything) averages the present tasks' gradients for that step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jmtl.balancers._base import Balancer
from jmtl.balancers._base import PyTree
from jmtl.balancers._base import gram_matrix
from jmtl.balancers._base import weighted_sum


def _one_task_like(task_grads: PyTree) -> PyTree:
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), task_grads)


def _task_axes(state: NamedTuple, larger_state: NamedTuple) -> list[tuple[int, ...]]:
  """Per state leaf, the axes whose size grows with T (shapes of T vs T+1 tasks)."""
  leaves = jax.tree.leaves(state)
  larger = jax.tree.leaves(larger_state)
  if len(leaves) != len(larger):
    raise ValueError("balancer state structure depends on num_tasks; cannot mask absent tasks")
  return [tuple(a for a, (n, m) in enumerate(zip(jnp.shape(x), jnp.shape(y))) if n != m)
          for x, y in zip(leaves, larger)]


def _gather(leaf: jax.Array, axes: tuple[int, ...], index: jax.Array) -> jax.Array:
  for axis in axes:
    leaf = jnp.take(leaf, index, axis=axis)
  return leaf


def _scatter(old: jax.Array, new: jax.Array, axes: tuple[int, ...], position: jax.Array,
             present: jax.Array) -> jax.Array:
  """``new`` (k entries on each task axis) back at the present tasks; ``old`` elsewhere."""
  if not axes:
    return jnp.asarray(new, old.dtype)
  keep = jnp.ones(old.shape, bool)
  for axis in axes:
    new = jnp.take(new, position, axis=axis)
    shape = [1] * old.ndim
    shape[axis] = old.shape[axis]
    keep = keep & present.reshape(shape)
  return jnp.where(keep, new, old).astype(old.dtype)


def _with_weights(state: NamedTuple, weights: jax.Array) -> NamedTuple:
  if "weights" in type(state)._fields:
    return state._replace(weights=weights.astype(state.weights.dtype))
  return state


class _Subsets:
  """The method built for a task count, afresh at every trace.

  Not cached: these are built while the step is traced, so a factory's arrays (e.g. uniform
  weights) are that trace's values; a cached method would hand them to the next trace (a new
  length bucket, or a pmap after a jit) as leaked tracers.
  """

  def __init__(self, make: Callable[[int], Balancer], num_tasks: int):
    self._make = make
    self.num_tasks = num_tasks

  def build(self, k: int) -> Balancer | None:
    try:
      return self._make(k)
    except ValueError:  # the method cannot run on k tasks: `_average_present` instead
      return None


def with_presence(make: Callable[[int], Balancer], num_tasks: int) -> Balancer:
  """``make(num_tasks)`` with absent tasks left out whenever a ``present`` mask is given.

  Args:
    make: builds the method for any number of tasks (a factory with its hparams bound).
    num_tasks: T.

  Returns:
    A `Balancer` whose ``update`` / ``weigh_losses`` / ``weigh_gram`` take ``present``;
    with ``present=None`` they are exactly ``make(num_tasks)``'s.
  """
  full = make(num_tasks)
  subsets = _Subsets(make, num_tasks)

  def run_subsets(present, state, params_like, body, zero_output):
    """``lax.switch`` over k = #present: ``body(sub, index, state_k)`` on the k tasks.

    ``body`` returns ``(output, weights_k [k] | None, new_state_k)``; ``output`` must
    not depend on k's shape. Returns ``(output, weights [T], state)``.
    """
    present = jnp.asarray(present, bool).reshape(num_tasks)
    count = jnp.sum(present.astype(jnp.int32))
    order = jnp.argsort(~present, stable=True)
    position = jnp.clip(jnp.cumsum(present.astype(jnp.int32)) - 1, 0, num_tasks - 1)
    larger = jax.eval_shape(subsets.build(num_tasks + 1).init, params_like)
    axes = _task_axes(state, larger)
    leaves, treedef = jax.tree.flatten(state)

    def branch(k):
      def run(_):
        if k == 0:
          return zero_output(), jnp.zeros((num_tasks,), jnp.float32), state
        index = order[:k]
        sub = full if k == num_tasks else subsets.build(k)
        if sub is None:
          weights_k = jnp.full((k,), 1.0 / k, jnp.float32)
          output, _, _ = body(None, index, None, weights_k)
          new_leaves = leaves
        else:
          sub_state = jax.tree.unflatten(
              treedef, [_gather(leaf, a, index) for leaf, a in zip(leaves, axes)])
          output, weights_k, new_sub_state = body(sub, index, sub_state, None)
          new_leaves = [_scatter(old, new, a, jnp.minimum(position, k - 1), present)
                        for old, new, a in zip(leaves, jax.tree.leaves(new_sub_state), axes)]
        weights = jnp.where(present, jnp.take(weights_k, jnp.minimum(position, k - 1)), 0.0)
        return output, weights.astype(jnp.float32), jax.tree.unflatten(treedef, new_leaves)
      return run

    output, weights, new_state = lax.switch(
        count, [branch(k) for k in range(num_tasks + 1)], None)
    return output, weights, _with_weights(new_state, weights)

  def take_losses(task_losses, index):
    return None if task_losses is None else jnp.take(jnp.asarray(task_losses), index)

  def weigh_losses(task_losses, state, *, present=None):
    if present is None:
      return full.weigh_losses(task_losses, state)

    def body(sub, index, sub_state, fallback_weights):
      if sub is None:
        return None, fallback_weights, None
      weights_k, new_state = sub.weigh_losses(take_losses(task_losses, index), sub_state)
      return None, weights_k, new_state

    _, weights, state = run_subsets(present, state, None, body, lambda: None)
    return weights, state

  def weigh_gram(gram, state, *, task_losses=None, present=None):
    if present is None:
      return full.weigh_gram(gram, state, task_losses=task_losses)

    def body(sub, index, sub_state, fallback_weights):
      if sub is None:
        return None, fallback_weights, None
      block = jnp.take(jnp.take(gram, index, axis=0), index, axis=1)
      weights_k, new_state = sub.weigh_gram(
          block, sub_state, task_losses=take_losses(task_losses, index))
      return None, weights_k, new_state

    _, weights, state = run_subsets(present, state, None, body, lambda: None)
    return weights, state

  def update(task_grads, state, params=None, *, task_losses=None, present=None):
    if present is None:
      return full.update(task_grads, state, params, task_losses=task_losses)
    if full.needs == "losses":
      weights, state = weigh_losses(task_losses, state, present=present)
      return weighted_sum(weights, task_grads), state
    if full.needs == "gram":
      weights, state = weigh_gram(gram_matrix(task_grads), state, task_losses=task_losses,
                                  present=present)
      return weighted_sum(weights, task_grads), state

    one_task = _one_task_like(task_grads)

    def zero_output():
      return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), one_task)

    def body(sub, index, sub_state, fallback_weights):
      grads_k = jax.tree.map(lambda leaf: jnp.take(leaf, index, axis=0), task_grads)
      if sub is None:
        return weighted_sum(fallback_weights, grads_k), fallback_weights, None
      combined, new_state = sub.update(grads_k, sub_state, params,
                                       task_losses=take_losses(task_losses, index))
      combined = jax.tree.map(lambda out, s: out.astype(s.dtype), combined, one_task)
      weights_k = getattr(new_state, "weights", jnp.zeros((index.shape[0],), jnp.float32))
      return combined, weights_k, new_state

    combined, _, state = run_subsets(present, state, one_task, body, zero_output)
    return combined, state

  return Balancer(init=full.init, update=update, needs=full.needs,
                  weigh_losses=weigh_losses if full.needs == "losses" else None,
                  weigh_gram=weigh_gram if full.needs == "gram" else None)


"""PCGrad: projecting conflicting gradients (gradient surgery)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jmtl.balancers._base import Balancer
from jmtl.balancers._base import Reduction
from jmtl.balancers._base import from_gram_weights
from jmtl.balancers._base import reduction_scale
from jmtl.balancers._registry import register


_TINY = float(jnp.finfo(jnp.float32).tiny)


class PCGradState(NamedTuple):
  weights: jax.Array  # [T]: the output is exactly sum_i weights_i g_i
  key: jax.Array      # PRNG key for the projection orders, split on every update


def projection_orders(key: jax.Array | None, num_tasks: int) -> jax.Array:
  """``[T, T-1]`` int32: row i is the order in which task i visits the other tasks.

  With a key, every row is an independent uniformly random permutation of
  ``{0..T-1} \\ {i}``; without one, the other tasks in increasing index order.
  """
  if key is None:
    scores = jnp.broadcast_to(jnp.arange(num_tasks, dtype=jnp.float32), (num_tasks, num_tasks))
  else:
    scores = jax.random.uniform(key, (num_tasks, num_tasks))
  # Sorting i.i.d. scores gives a uniform permutation; pushing the diagonal to +inf sends
  # task i last, where it is cut off.
  scores = jnp.where(jnp.eye(num_tasks, dtype=bool), jnp.inf, scores)
  return jnp.argsort(scores, axis=1)[:, :num_tasks - 1].astype(jnp.int32)


def pcgrad_coefficients(gram: jax.Array, orders: jax.Array) -> jax.Array:
  """``C [T, T]`` with ``g_i' = sum_j C_ij g_j`` the projected gradient of task i.

  Task i starts at ``g_i' = g_i`` and, for each j in ``orders[i]``, if ``g_i' . g_j < 0``
  replaces ``g_i'`` by ``g_i' - (g_i' . g_j / |g_j|^2) g_j``. Since ``g_i' . g_j = (C G)_ij``,
  only the Gram matrix is needed. All tasks advance in lockstep, one visited task per step.
  """
  num_tasks = gram.shape[0]
  rows = jnp.arange(num_tasks)

  def visit(step, coefficients):
    other = orders[:, step]                                     # [T]
    inner = jnp.sum(coefficients * gram[:, other].T, axis=1)    # (C G)_{i, other_i}
    sq_norm = gram[other, other]
    # A zero g_j conflicts with nothing. The cutoff is the smallest normal float, not an
    # epsilon, so the method stays scale-invariant for gradients of any size.
    project = (inner < 0) & (sq_norm > _TINY)
    shift = jnp.where(project, inner / jnp.where(project, sq_norm, 1.0), 0.0)
    return coefficients.at[rows, other].add(-shift)

  identity = jnp.eye(num_tasks, dtype=jnp.float32)
  if num_tasks == 1:  # nothing to visit; an empty loop would still index an empty axis
    return identity
  return jax.lax.fori_loop(0, num_tasks - 1, visit, identity)


@register("pcgrad", paper="Yu et al. 2020, Gradient Surgery for Multi-Task Learning, NeurIPS")
def pcgrad(num_tasks: int, *, random_order: bool = True,
           reduction: Reduction = "mean", seed: int = 0) -> Balancer:
  """PCGrad (Yu et al. 2020): project each g_i onto the normal plane of every g_j it conflicts with.

  For each task i, visiting the other tasks in a random order, ``g_i' <- g_i' -
  (g_i' . g_j / |g_j|^2) g_j`` whenever ``g_i' . g_j < 0``; the update is ``mean_i g_i'``
  (jmtl's scale convention: T identical gradients g give g; the paper sums, ``reduction="sum"``).
  Every ``g_i'`` is a linear combination of the original gradients whose coefficients
  follow from ``G = J J^T`` alone, so this is a ``"gram"`` method: the train step can get
  G and do one weighted backward. ``state.weights`` are the exact coefficients, ``sum_i C_i``.

  Args:
    num_tasks: T.
    random_order: a fresh random order per task and step, from the state's key (paper,
      Algorithm 1); ``False`` visits the other tasks in index order, which is
      deterministic and comparable with other libraries.
    reduction: ``"mean"`` (jmtl's convention for every method) or ``"sum"`` (paper).
    seed: seed of the PRNG key kept in the state.
  """
  scale = reduction_scale(reduction, num_tasks, "pcgrad")

  def init(params):
    del params
    return PCGradState(weights=jnp.full((num_tasks,), scale, jnp.float32),
                       key=jax.random.PRNGKey(seed))

  def weigh(gram, state, *, task_losses=None):
    del task_losses
    key, order_key = jax.random.split(state.key)
    orders = projection_orders(order_key if random_order else None, num_tasks)
    coefficients = pcgrad_coefficients(gram.astype(jnp.float32), orders)
    weights = scale * jnp.sum(coefficients, axis=0)
    return weights, PCGradState(weights=weights, key=key)

  return from_gram_weights(init, weigh)

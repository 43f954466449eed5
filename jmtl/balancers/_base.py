"""The balancer contract and the helpers every method shares (the registry is `_registry`).

A balancer is an optax-style pair of pure functions::

  balancer = jmtl.balancers.get("pcgrad", num_tasks=3)
  state = balancer.init(shared_params)          # or a [d] array
  grads, state = balancer.update(task_grads, state, shared_params, task_losses=losses)

``task_grads`` is a pytree whose every leaf has a leading task axis ``[T, ...]`` (a plain
``[T, d]`` array is a valid pytree); ``grads`` has the shape of one task's gradient.
Hyperparameters live in the factory's closure, per-step values in a NamedTuple state.

``needs`` tells the train step what it must compute:

* ``"losses"``: weights come from the losses alone, ``weigh(task_losses, state)``; the
  step does ONE backward of the weighted loss sum.
* ``"gram"``: weights are a function of the Gram matrix ``G = J J^T`` alone,
  ``weigh(gram, state, task_losses=...)``; the step may get G without combining
  per-task gradients, then do one weighted backward.
* ``"jacobian"``: the method needs the per-task gradients themselves.

``update`` always works on per-task gradients, whatever ``needs`` says, so every method
can be used (and tested) on its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Needs = Literal["losses", "gram", "jacobian"]
Reduction = Literal["mean", "sum"]

EPS = 1e-8


class Balancer(NamedTuple):
  """An optax-style pair ``(init, update)`` plus what the train step must compute.

  ``update(task_grads, state, params=None, *, task_losses=None, present=None)`` always
  works on per-task gradients. ``weigh_losses(task_losses, state, *, present=None)`` is set
  for ``needs == "losses"`` and ``weigh_gram(gram, state, *, task_losses=None,
  present=None)`` for ``needs == "gram"``; both return ``(weights [T], state)`` and the
  combined gradient is ``sum_i weights_i g_i``. ``present`` is a bool ``[T]`` (None: every
  task): an absent task is left out of balancing for the step (see `_presence`).
  """
  init: Callable[[PyTree], NamedTuple]
  update: Callable[..., tuple[PyTree, NamedTuple]]
  needs: Needs = "jacobian"
  weigh_losses: Callable[..., tuple[jax.Array, NamedTuple]] | None = None
  weigh_gram: Callable[..., tuple[jax.Array, NamedTuple]] | None = None

  @property
  def weigh(self) -> Callable[..., tuple[jax.Array, NamedTuple]] | None:
    """Deprecated: ``weigh_losses`` or ``weigh_gram``, whichever ``needs`` sets."""
    warnings.warn("Balancer.weigh is deprecated: use weigh_losses (needs='losses') or "
                  "weigh_gram (needs='gram')", DeprecationWarning, stacklevel=2)
    return self.weigh_losses if self.weigh_losses is not None else self.weigh_gram


def uniform_weights(num_tasks: int, value: float | None = None) -> jax.Array:
  """``[T]`` float32 weights all equal to ``value`` (default 1/T): every method's start."""
  return jnp.full((num_tasks,), 1.0 / num_tasks if value is None else value, jnp.float32)


def reduction_scale(reduction: Reduction, num_tasks: int, method: str) -> float:
  """The factor a method applies to its paper's sum-scale update for ``reduction``.

  ``"mean"`` (1/T) is jmtl's scale convention for every method: T identical task gradients
  g give back g, so a learning rate means the same thing whichever method balances.
  ``"sum"`` (1) keeps the scale the method's paper uses (T identical gradients give T g).
  """
  if reduction not in ("mean", "sum"):
    raise ValueError(f"{method}: reduction must be 'mean' or 'sum', got {reduction!r}")
  return 1.0 / num_tasks if reduction == "mean" else 1.0


def applied_weights(state: NamedTuple) -> jax.Array | None:
  """The ``[T]`` weights a method applied on its last update, or None if it has none.

  Every balancer state that has such weights declares them as its ``weights`` field (0 for
  tasks absent from that update); methods that are not a weighting (trimmed mean, GradDrop)
  have no such field.
  """
  return state.weights if "weights" in getattr(type(state), "_fields", ()) else None


# ---------------------------------------------------------------- pytree <-> matrix


def num_tasks_of(task_grads: PyTree) -> int:
  return jax.tree.leaves(task_grads)[0].shape[0]


def flatten_tasks(task_grads: PyTree) -> jax.Array:
  """``[T, d]`` matrix of per-task gradients (leaves raveled and concatenated)."""
  leaves = jax.tree.leaves(task_grads)
  t = leaves[0].shape[0]
  return jnp.concatenate([leaf.reshape(t, -1) for leaf in leaves], axis=1)


def unflatten_like_task(vector: jax.Array, task_grads: PyTree) -> PyTree:
  """Inverse of ``flatten_tasks`` for ONE task's vector ``[d]``."""
  leaves, treedef = jax.tree.flatten(task_grads)
  out, start = [], 0
  for leaf in leaves:
    size = leaf[0].size
    out.append(vector[start:start + size].reshape(leaf.shape[1:]).astype(leaf.dtype))
    start += size
  return jax.tree.unflatten(treedef, out)


def _rows_of(leaf: jax.Array, rows: tuple[int, ...] | None) -> jax.Array:
  """The ``rows`` of ``leaf`` (all where None), one static slice each: when ``leaf`` is a stack
  built in the same jit, XLA then reads the parts and never builds the stack."""
  return leaf if rows is None else jnp.stack([leaf[i] for i in rows])


def _leaf_rows(task_grads: PyTree, rows) -> list[tuple[jax.Array, tuple[int, ...] | None]]:
  """``(leaf, its rows)`` pairs; rows naming every task become None."""
  leaves = jax.tree.leaves(task_grads)
  rows = [None] * len(leaves) if rows is None else list(rows)
  if len(rows) != len(leaves):
    raise ValueError(f"rows names {len(rows)} leaves, task_grads has {len(leaves)}")
  full = lambda r: r is None or tuple(r) == tuple(range(leaves[0].shape[0]))
  return [(leaf, None if full(r) else tuple(r)) for leaf, r in zip(leaves, rows)]


def gram_matrix(task_grads: PyTree, rows=None) -> jax.Array:
  """``G = J J^T`` in float32, summed leaf by leaf (no [T, d] concatenation).

  ``rows`` (optional, one entry per leaf): the tasks whose gradient in that leaf may be
  non-zero; the others are known to be zero there (e.g. a head that does not read a
  feature), so their products are skipped rather than computed as zeros. None: all tasks.
  """
  def leaf_gram(leaf):
    m = leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)
    return m @ m.T
  num_tasks = num_tasks_of(task_grads)
  gram = jnp.zeros((num_tasks, num_tasks), jnp.float32)
  for leaf, leaf_rows in _leaf_rows(task_grads, rows):
    if leaf_rows is None:
      gram = gram + leaf_gram(leaf)
    elif leaf_rows:
      index = np.asarray(leaf_rows)
      gram = gram.at[np.ix_(index, index)].add(leaf_gram(_rows_of(leaf, leaf_rows)))
  return gram


def weighted_sum(weights: jax.Array, task_grads: PyTree, rows=None) -> PyTree:
  """``sum_i w_i g_i`` leaf by leaf; the result has one task's shape. ``rows`` as in
  ``gram_matrix``: only those tasks' gradients are read in each leaf."""
  def combine(leaf, leaf_rows):
    if leaf_rows is not None and not leaf_rows:
      return jnp.zeros(leaf.shape[1:], leaf.dtype)
    leaf_weights = weights if leaf_rows is None else weights[np.asarray(leaf_rows)]
    return jnp.tensordot(leaf_weights.astype(leaf.dtype), _rows_of(leaf, leaf_rows), axes=1)
  pairs = _leaf_rows(task_grads, rows)
  return jax.tree.unflatten(jax.tree.structure(task_grads), [combine(*pair) for pair in pairs])


# ---------------------------------------------------------------- builders


def _no_presence(present):
  if present is not None:
    raise ValueError("this balancer was built by from_loss_weights / from_gram_weights outside "
                     "the registry and cannot leave absent tasks out: wrap its factory with "
                     "jmtl.balancers.with_presence(make, num_tasks)")


def from_loss_weights(init, weigh_losses) -> Balancer:
  """A ``"losses"`` balancer from ``weigh_losses(task_losses, state) -> (weights, state)``.

  ``weigh_losses`` sees every task; absent tasks are handled by `with_presence`, which the
  registry applies to every registered factory.
  """
  def weigh(task_losses, state, *, present=None):
    _no_presence(present)
    return weigh_losses(task_losses, state)

  def update(task_grads, state, params=None, *, task_losses, present=None):
    del params
    weights, state = weigh(task_losses, state, present=present)
    return weighted_sum(weights, task_grads), state
  return Balancer(init=init, update=update, needs="losses", weigh_losses=weigh)


def from_gram_weights(init, weigh_gram) -> Balancer:
  """A ``"gram"`` balancer from ``weigh_gram(gram, state, *, task_losses) -> (weights, state)``."""
  def weigh(gram, state, *, task_losses=None, present=None):
    _no_presence(present)
    return weigh_gram(gram, state, task_losses=task_losses)

  def update(task_grads, state, params=None, *, task_losses=None, present=None):
    del params
    weights, state = weigh(gram_matrix(task_grads), state, task_losses=task_losses,
                           present=present)
    return weighted_sum(weights, task_grads), state
  return Balancer(init=init, update=update, needs="gram", weigh_gram=weigh)

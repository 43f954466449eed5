"""The balancer contract, shared helpers, and the registry.

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

import difflib
import inspect
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Needs = Literal["losses", "gram", "jacobian"]

EPS = 1e-8


class Balancer(NamedTuple):
  init: Callable[[PyTree], NamedTuple]
  update: Callable[..., tuple[PyTree, NamedTuple]]
  needs: Needs = "jacobian"
  weigh: Callable[..., tuple[jax.Array, NamedTuple]] | None = None


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


def from_loss_weights(init, weigh) -> Balancer:
  """A ``"losses"`` balancer from ``weigh(task_losses, state) -> (weights, state)``."""
  def update(task_grads, state, params=None, *, task_losses):
    del params
    weights, state = weigh(task_losses, state)
    return weighted_sum(weights, task_grads), state
  return Balancer(init=init, update=update, needs="losses", weigh=weigh)


def from_gram_weights(init, weigh) -> Balancer:
  """A ``"gram"`` balancer from ``weigh(gram, state, *, task_losses) -> (weights, state)``."""
  def update(task_grads, state, params=None, *, task_losses=None):
    del params
    weights, state = weigh(gram_matrix(task_grads), state, task_losses=task_losses)
    return weighted_sum(weights, task_grads), state
  return Balancer(init=init, update=update, needs="gram", weigh=weigh)


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Balancer]] = {}
_PAPERS: dict[str, str] = {}


def register(name: str, paper: str):
  """Registers a factory ``f(num_tasks, **hparams) -> Balancer`` under ``name``."""
  def decorator(factory):
    if name in _REGISTRY:
      raise ValueError(f"balancer {name!r} registered twice")
    _REGISTRY[name] = factory
    _PAPERS[name] = paper
    return factory
  return decorator


def names() -> tuple[str, ...]:
  """Every registered balancer name, sorted."""
  return tuple(sorted(_REGISTRY))


def papers() -> dict[str, str]:
  """``{name: paper}`` for every registered balancer."""
  return dict(sorted(_PAPERS.items()))


def get(name: str, num_tasks: int, **hparams) -> Balancer:
  """The balancer registered as ``name``, built with ``hparams``.

  Raises:
    KeyError: unknown name; the message lists the valid names.
    TypeError: an hparam the method does not take.
  """
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown balancer {name!r}.{hint} Valid names: {', '.join(names())}")
  factory = _REGISTRY[name]
  try:
    inspect.signature(factory).bind(num_tasks, **hparams)
  except TypeError:
    valid = [p for p in inspect.signature(factory).parameters if p != "num_tasks"]
    bad = sorted(set(hparams) - set(valid))
    raise TypeError(
        f"balancer {name!r} does not take {bad or hparams}; its hyperparameters: {valid}") from None
  return factory(num_tasks, **hparams)

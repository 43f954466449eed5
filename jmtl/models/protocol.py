"""What the train step asks of a model: the contract any multi-task Flax model can implement.

``jmtl.make_train_step``, the gradient paths and the balancers never look inside a model's
parameters except through these declarations, so ``MultiTaskModel`` (encoder + heads), the
BERT encoder, and a user's own Flax model all train the same way.

Required (``MultiTaskProtocol``):

* ``names``: the task names; their order is the task axis ``[T]`` of losses, weights and
  per-task gradients.
* ``layout``: ``"same_input"`` (one batch dict carrying every task's labels) or
  ``"multi_input"`` (a dict ``{task_name: batch}``). Declared by whoever builds the model (the
  runner takes it from the suite), never guessed from a batch: a batch of the other layout is
  an error.
* ``shared_key`` / ``task_key``: ``params[shared_key]`` is the shared subtree, the one the
  balancer combines per-task gradients of; ``params[task_key][name]`` belongs to task ``name``
  alone and only that task's loss may read it (it gets that task's own gradient).
* ``init(rng, batch) -> params``.
* ``encode(shared_params, batch, rng=None) -> representation``: everything the shared params
  compute (a pytree of arrays: the shared representation). ``rng`` set means training
  (dropout on).
* ``loss_sum(name, task_params, representation, batch) -> scalar``: task ``name``'s loss
  SUMMED over its labelled units (not averaged).
* ``label_count(name, batch) -> scalar``: how many labelled units task ``name`` has in
  ``batch``. The step divides the loss sum by the count summed over devices, so every
  data-parallel layout takes the same step, and a task whose count is 0 in the global batch
  is left out of balancing that step. The host also calls it on NumPy arrays, to run the
  step compiled for "every task present" when it can (``jmtl.train.parallel``): written
  with array methods (``batch[k].sum()``) it stays on the host; with ``jnp`` it is still
  right but waits for the step in flight.

Optional (read with ``getattr``; leave out or set to None to disable):

* ``token_table: tuple[str, ...]``: path of the ``[V, D]`` token embedding table inside the
  shared params, when ``encode`` also accepts ``token_rows=table[batch["input_ids"]]`` and
  then never reads the table. Gram methods then keep the table's per-task gradients as
  per-token rows instead of ``[T, V, D]`` (the compact Gram path).
* ``last_shared_layer: str``: ``"/"``-separated path inside the shared params of the last
  shared layer in forward order; GradNorm's default ``layer``.
* ``feature_readers() -> tuple[tuple[int, ...], ...]``: per leaf of the representation, the
  tasks whose loss reads it (rep-grad then skips rows known to be zero).
* ``penalty(params) -> scalar``: a regulariser of the params that is no task's loss (soft
  sharing's L2 tie of the task encoders); the step adds its gradient to the balanced
  gradients, unweighted.
* ``private_dropout: bool``: True when a task's private part has dropout; ``loss_sum`` (and
  ``aux_loss_sum``) then take a keyword ``rng`` (None = deterministic, as in evaluation) and
  every gradient path passes task i's own key, ``private_rng(step_key, i)``.
* ``aux_loss_sum(name, task_params, representation, batch) -> scalar``: an auxiliary loss
  of task ``name``'s private part that is no task loss (DSelect-k's entropy regulariser of
  its selectors), SUMMED over the batch's units, so the global value is the sum over
  devices. No balancer weighs it: the step adds its gradient (w.r.t. the task's params and,
  through the representation, the shared params) to the balanced gradients, unweighted,
  and logs the global total as ``metrics["aux_loss"]``. ``None`` = no auxiliary loss.

A minimal implementation::

  class TwoTaskMLP:
    names, layout, shared_key, task_key = ("a", "b"), "same_input", "trunk", "heads"
    def init(self, rng, batch):
      r1, r2, r3 = jax.random.split(rng, 3)
      trunk = nn.Dense(16).init(r1, batch["x"])["params"]
      return {"trunk": trunk, "heads": {"a": nn.Dense(1).init(r2, jnp.ones((1, 16)))["params"],
                                        "b": nn.Dense(1).init(r3, jnp.ones((1, 16)))["params"]}}
    def encode(self, trunk, batch, rng=None):
      return jnp.tanh(nn.Dense(16).apply({"params": trunk}, batch["x"]))
    def loss_sum(self, name, head, features, batch):
      prediction = nn.Dense(1).apply({"params": head}, features)[:, 0]
      return jnp.sum(batch[name + "_mask"] * (prediction - batch[name]) ** 2)
    def label_count(self, name, batch):
      return jnp.sum(batch[name + "_mask"])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import jax

Layout = Literal["same_input", "multi_input"]
LAYOUTS: tuple[str, ...] = ("same_input", "multi_input")
PyTree = Any


@runtime_checkable
class MultiTaskProtocol(Protocol):
  """The required part of the contract (see the module docstring for the optional part)."""

  layout: str
  shared_key: str
  task_key: str

  @property
  def names(self) -> tuple[str, ...]: ...

  def init(self, rng: jax.Array, batch) -> PyTree: ...

  def encode(self, shared_params: PyTree, batch, rng: jax.Array | None = None) -> PyTree: ...

  def loss_sum(self, name: str, task_params: PyTree, representation: PyTree,
               batch) -> jax.Array: ...

  def label_count(self, name: str, batch) -> jax.Array: ...


def check_layout(layout: str) -> str:
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: use one of {', '.join(LAYOUTS)}")
  return layout


def task_batches(model: MultiTaskProtocol, batch) -> tuple[Mapping[str, Any], ...]:
  """Per task (in ``names`` order), the batch its loss reads, per the DECLARED layout.

  A batch that does not have the declared layout is a ValueError saying which it looks like.
  """
  names = model.names
  if model.layout == "multi_input":
    missing = [n for n in names if not isinstance(batch.get(n), Mapping)]
    if missing:
      raise ValueError(f"the model's layout is 'multi_input' but the batch has no per-task batch "
                       f"for {missing} (keys: {sorted(batch)}); a same-input batch needs "
                       "layout='same_input'")
    return tuple(batch[n] for n in names)
  nested = [n for n in names if isinstance(batch.get(n), Mapping)]
  if nested:
    raise ValueError(f"the model's layout is 'same_input' but the batch holds per-task batches "
                     f"for {nested}; build the model with layout='multi_input'")
  return (batch,) * len(names)


def shared_params(model: MultiTaskProtocol, params) -> PyTree:
  return params[model.shared_key]


def task_params(model: MultiTaskProtocol, params) -> dict[str, PyTree]:
  return params[model.task_key]


def join_params(model: MultiTaskProtocol, shared: PyTree, per_task: PyTree) -> dict[str, PyTree]:
  return {model.shared_key: shared, model.task_key: per_task}


def token_table_path(model) -> tuple[str, ...] | None:
  """The declared token table path, or None when the model has no compact Gram path."""
  path = getattr(model, "token_table", None)
  return tuple(path) if path else None


def last_shared_layer(model) -> str | None:
  return getattr(model, "last_shared_layer", None) or None


def feature_readers(model) -> tuple[tuple[int, ...], ...] | None:
  readers = getattr(model, "feature_readers", None)
  return None if readers is None else readers()


# A task's private key is folded from the step key with an offset no task index reaches, so
# it never equals the key a multi-input encode of task i uses (``fold_in(step_key, i)``).
_PRIVATE_KEYS = 1 << 20


def private_rng(rng: jax.Array | None, index: int) -> jax.Array | None:
  """Task ``index``'s dropout key for its private part (None: deterministic)."""
  return None if rng is None else jax.random.fold_in(rng, _PRIVATE_KEYS + index)


def _private_call(model, method: str, index: int, task_params, representation, batch, rng):
  name = model.names[index]
  if getattr(model, "private_dropout", False):
    return getattr(model, method)(name, task_params, representation, batch,
                                  rng=private_rng(rng, index))
  return getattr(model, method)(name, task_params, representation, batch)


def task_loss_sum(model: MultiTaskProtocol, index: int, task_params, representation, batch,
                  rng: jax.Array | None = None) -> jax.Array:
  """Task ``index``'s ``loss_sum``; its private part gets dropout from ``rng`` when the
  model declares ``private_dropout`` (``rng`` is the step key, not yet per task)."""
  return _private_call(model, "loss_sum", index, task_params, representation, batch, rng)


def has_aux_loss(model) -> bool:
  return getattr(model, "aux_loss_sum", None) is not None


def task_aux_loss_sum(model: MultiTaskProtocol, index: int, task_params, representation, batch,
                      rng: jax.Array | None = None) -> jax.Array:
  """Task ``index``'s ``aux_loss_sum`` (the model must have one), keyed as ``task_loss_sum``."""
  return _private_call(model, "aux_loss_sum", index, task_params, representation, batch, rng)

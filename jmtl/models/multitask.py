"""A shared encoder plus one head per task, as plain pure functions over a params pytree.

``params = {"encoder": ..., "heads": {task_name: ...}}``: what is shared and what belongs to a
task is a key lookup, never a guess. ``MultiTaskModel`` implements the model protocol
(``jmtl.models.protocol``) for any encoder config that provides ``module()``,
``token_table`` and ``last_shared_layer`` (``EncoderConfig``, the BERT config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmtl.models.encoder import encode
from jmtl.models.heads import Head
from jmtl.models.precision import cast_floating, compute_params
from jmtl.models.protocol import check_layout
from jmtl.tasks import TaskSpec, task_names

Features = tuple[jax.Array, jax.Array]  # (tokens [B, L, D], pooled [B, P])


@dataclasses.dataclass(frozen=True)
class MultiTaskModel:
  """Encoder + one head per task.

  ``encoder``: any encoder config (see the module docstring). ``layout``: the batches the
  train step will get, ``"same_input"`` or ``"multi_input"`` (the runner sets it from the
  suite; it is never guessed from a batch).
  """

  encoder: Any
  tasks: tuple[TaskSpec, ...]
  head_hidden: int = 64
  layout: str = "same_input"

  shared_key = "encoder"
  task_key = "heads"

  def __post_init__(self):
    object.__setattr__(self, "tasks", tuple(self.tasks))
    task_names(self.tasks)  # validates uniqueness
    if not self.tasks:
      raise ValueError("a MultiTaskModel needs at least one task")
    check_layout(self.layout)
    object.__setattr__(self, "_specs", {spec.name: spec for spec in self.tasks})

  @property
  def names(self) -> tuple[str, ...]:
    return task_names(self.tasks)

  @property
  def token_table(self) -> tuple[str, ...]:
    return tuple(self.encoder.token_table)

  @property
  def last_shared_layer(self) -> str:
    return self.encoder.last_shared_layer

  def feature_readers(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per leaf of ``Features`` (tokens, pooled): the indices of the tasks whose head reads
    it. Every other task's gradient w.r.t. that leaf is exactly zero."""
    tokens = tuple(i for i, spec in enumerate(self.tasks) if spec.token_level)
    pooled = tuple(i for i, spec in enumerate(self.tasks) if not spec.token_level)
    return tokens, pooled

  def _head(self, spec: TaskSpec) -> Head:
    return Head(spec, hidden=self.head_hidden)

  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]):
    """Parameters for a batch of the declared layout (only the inputs' shapes are read)."""
    if self.layout == "multi_input":  # any task's batch has the input shapes
      batch = batch[self.names[0]]
    enc_rng, *head_rngs = jax.random.split(rng, len(self.tasks) + 1)
    encoder = self.encoder.module().init(
        enc_rng, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))["params"]
    tokens, pooled = encode(self.encoder, encoder, batch)
    heads = {
        spec.name: self._head(spec).init(r, tokens, pooled)["params"]
        for spec, r in zip(self.tasks, head_rngs)
    }
    return cast_floating({"encoder": encoder, "heads": heads}, self.encoder.param_dtype)

  def encode(self, encoder_params, batch, rng: jax.Array | None = None,
             token_rows: jax.Array | None = None) -> Features:
    return encode(self.encoder, encoder_params, batch, rng=rng, token_rows=token_rows)

  def head(self, spec: TaskSpec, head_params, features: Features, batch=None) -> jax.Array:
    """``batch`` is unused: the architectures' heads read its attention mask."""
    head_params = compute_params(head_params, self.encoder.dtype)
    return self._head(spec).apply({"params": head_params}, *features)

  def apply(self, params, batch, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """``{task_name: outputs}`` for a same-input batch."""
    features = self.encode(params["encoder"], batch, rng)
    return {spec.name: self.head(spec, params["heads"][spec.name], features) for spec in self.tasks}

  def loss_sum(self, name: str, head_params, features: Features, batch) -> jax.Array:
    """Task ``name``'s masked loss sum from encoder features (the protocol's ``loss_sum``)."""
    spec = self._specs[name]
    return spec.loss_sum(self.head(spec, head_params, features), batch)[0]

  def label_count(self, name: str, batch) -> jax.Array:
    # Array methods, not jnp: on NumPy arrays (the host's presence check) this stays NumPy.
    return batch[self._specs[name].mask_key].astype(np.float32).sum()


def count_params(tree) -> int:
  return sum(int(jnp.size(x)) for x in jax.tree.leaves(tree))

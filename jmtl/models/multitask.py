"""A shared encoder plus one head per task, as plain pure functions over a params pytree.

``params = {"encoder": ..., "heads": {task_name: ...}}``: what is shared and what belongs to a
task is a key lookup, never a guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jmtl.models.encoder import Encoder, EncoderConfig, encode
from jmtl.models.heads import Head
from jmtl.tasks import TaskSpec, task_names

Features = tuple[jax.Array, jax.Array]  # (tokens [B, L, D], pooled [B, P])


@dataclasses.dataclass(frozen=True)
class MultiTaskModel:
  encoder: EncoderConfig
  tasks: tuple[TaskSpec, ...]
  head_hidden: int = 64

  def __post_init__(self):
    object.__setattr__(self, "tasks", tuple(self.tasks))
    task_names(self.tasks)  # validates uniqueness
    if not self.tasks:
      raise ValueError("a MultiTaskModel needs at least one task")

  @property
  def names(self) -> tuple[str, ...]:
    return task_names(self.tasks)

  def feature_readers(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per leaf of ``Features`` (tokens, pooled): the indices of the tasks whose head reads
    it. Every other task's gradient w.r.t. that leaf is exactly zero."""
    tokens = tuple(i for i, spec in enumerate(self.tasks) if spec.token_level)
    pooled = tuple(i for i, spec in enumerate(self.tasks) if not spec.token_level)
    return tokens, pooled

  def _head(self, spec: TaskSpec) -> Head:
    return Head(spec, hidden=self.head_hidden)

  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]):
    """Parameters for a batch's shapes (either layout; only the inputs are read)."""
    if "input_ids" not in batch:  # multi-input: any task's batch has the input shapes
      batch = next(iter(batch.values()))
    enc_rng, *head_rngs = jax.random.split(rng, len(self.tasks) + 1)
    encoder = Encoder(self.encoder).init(
        enc_rng, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))["params"]
    tokens, pooled = encode(self.encoder, encoder, batch)
    heads = {
        spec.name: self._head(spec).init(r, tokens, pooled)["params"]
        for spec, r in zip(self.tasks, head_rngs)
    }
    return {"encoder": encoder, "heads": heads}

  def encode(self, encoder_params, batch, rng: jax.Array | None = None,
             token_rows: jax.Array | None = None) -> Features:
    return encode(self.encoder, encoder_params, batch, rng=rng, token_rows=token_rows)

  def head(self, spec: TaskSpec, head_params, features: Features) -> jax.Array:
    return self._head(spec).apply({"params": head_params}, *features)

  def apply(self, params, batch, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """``{task_name: outputs}`` for a same-input batch."""
    features = self.encode(params["encoder"], batch, rng)
    return {spec.name: self.head(spec, params["heads"][spec.name], features) for spec in self.tasks}

  def task_loss_sum(self, spec: TaskSpec, head_params, features: Features, batch):
    """(masked loss sum, label count) of one task from encoder features."""
    return spec.loss_sum(self.head(spec, head_params, features), batch)


def count_params(tree) -> int:
  return sum(int(jnp.size(x)) for x in jax.tree.leaves(tree))

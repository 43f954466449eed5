"""Soft sharing: one encoder per task, tied by an L2 penalty towards their mean.

Closely related tasks do best with one encoder; weakly related ones with their own encoders
kept close rather than equal (the "soft" parameter sharing of the MTL surveys, e.g. Ruder
2017, Duong et al. 2015). Shared (balanced): the embeddings only. Private to task ``t``: its
encoder column (with the encoder's dropout), pooler and head. The penalty

  lambda/2 * sum_t ||theta_t - mean_s theta_s||^2   (over the task encoders)

is not a task loss, so no balancer weighs it: the train step adds its gradient,
``lambda * (theta_t - mean_s theta_s)``, to the balanced gradients (the protocol's optional
``penalty``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models.architectures.common import Architecture, Blocks, Embedder, Tower, attention_bias
from jmtl.tasks import TaskSpec


class _SharedEmbeddings(nn.Module):
  config: object

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    return Embedder(self.config, name="embedder")(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        token_rows=token_rows)


class _TaskColumn(nn.Module):
  config: object
  spec: TaskSpec
  head_hidden: int

  @nn.compact
  def __call__(self, embeddings, attention_mask, deterministic: bool = True):
    tokens = Blocks(self.config, self.config.depth, name="encoder")(
        embeddings, attention_bias(attention_mask), deterministic)
    return Tower(self.spec, self.config.pooled_width, self.head_hidden, name="tower")(
        tokens, attention_mask)


@dataclasses.dataclass(frozen=True)
class SoftSharing(Architecture):
  """``strength``: lambda of the penalty (0 = independent encoders on shared embeddings)."""

  strength: float = 1e-2

  last_shared_layer = "embedder/position_embedding"
  private_dropout = True  # the task's column drops out as the shared encoder would

  def _shared_module(self):
    return _SharedEmbeddings(self.encoder)

  def _private_module(self, spec):
    return _TaskColumn(self.encoder, spec, self.head_hidden)

  def penalty(self, params) -> jax.Array:
    """lambda/2 * sum_t ||theta_t - mean theta||^2 over the task encoders."""
    columns = [params[self.task_key][name]["encoder"] for name in self.names]
    stacked_columns = jax.tree.map(lambda *leaves: jnp.stack(leaves), *columns)
    spread = jax.tree.map(lambda x: jnp.sum((x - jnp.mean(x, axis=0)) ** 2), stacked_columns)
    return 0.5 * self.strength * sum(jax.tree.leaves(spread))

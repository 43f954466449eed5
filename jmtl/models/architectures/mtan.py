"""Task attention over a shared sequence encoder, in the spirit of MTAN (Liu et al. 2019).

MTAN keeps one shared network and gives each task soft attention masks over the shared
features at every stage. On sequences: after block j of the shared encoder (token features
``u_j [B, L, D]``) task t computes a per-token, per-feature mask
``sigmoid(MLP([u_j ; p_{j-1}]))`` from the shared features and its own previous attended
features ``p_{j-1}``, attends ``a_j = mask * u_j`` and passes ``p_j = gelu(Dense(a_j))`` on.
Its sentence vector is attention pooling over tokens with a task-specific scorer. Shared
(balanced): the embeddings and the encoder (full width and depth, as hard sharing).
Private to task t: its attention modules, pooler and head. Representation: every block's
output, a tuple of ``depth`` arrays ``[B, L, D]``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models.architectures.common import Architecture, Embedder, attention_bias
from jmtl.models.encoder import EncoderBlock
from jmtl.models.heads import Head
from jmtl.models.matmul import Dense
from jmtl.models.precision import softmax


class _Stages(nn.Module):
  config: object

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    cfg = self.config
    x = Embedder(cfg, name="embedder")(input_ids, attention_mask, token_type_ids,
                                       deterministic=deterministic, token_rows=token_rows)
    bias = attention_bias(attention_mask)
    stages = []
    for i in range(cfg.depth):
      x = EncoderBlock(cfg, name=f"block_{i}")(x, bias, deterministic)
      stages.append(nn.LayerNorm(name=f"stage_norm_{i}")(x))
    return tuple(stages)


class _TaskAttention(nn.Module):
  spec: object
  pooled_width: int
  head_hidden: int

  @nn.compact
  def __call__(self, stages, attention_mask):
    width = stages[0].shape[-1]
    previous = jnp.zeros_like(stages[0])
    for j, shared in enumerate(stages):
      h = nn.gelu(Dense(width, name=f"mask_in_{j}")(jnp.concatenate([shared, previous], -1)))
      attended = jax.nn.sigmoid(Dense(width, name=f"mask_out_{j}")(h)) * shared
      previous = nn.gelu(Dense(width, name=f"stage_{j}")(attended)) if j + 1 < len(stages) else attended
    scores = Dense(1, name="pool_score")(attended)[..., 0]
    scores = jnp.where(attention_mask.astype(bool), scores, -1e9)
    pooled = jnp.einsum("bl,bld->bd", softmax(scores, axis=-1), attended)
    pooled = jnp.tanh(Dense(self.pooled_width, name="pooler")(pooled))
    return Head(self.spec, hidden=self.head_hidden, name="head")(attended, pooled)


@dataclasses.dataclass(frozen=True)
class TaskAttention(Architecture):

  @property
  def last_shared_layer(self) -> str:
    return f"stage_norm_{self.encoder.depth - 1}"

  def _shared_module(self):
    return _Stages(self.encoder)

  def _private_module(self, spec):
    return _TaskAttention(spec, self.encoder.pooled_width, self.head_hidden)

"""Cross-stitch networks (Misra et al. 2016) on sequence encoders.

One encoder column per task; after each block a learned ``[T, T]`` cross-stitch unit mixes the
columns' token features, ``x_s <- sum_t alpha[s, t] x_t``, so each task learns how much of the
others' features to take. Every column and unit then feeds every task's loss, so all of them
are shared (balanced): shared = embeddings, the T columns (stacked on a leading axis, one
vmapped call) and the units. Private to task ``t``: its pooler and head, reading column ``t``.
Units start at ``alpha = 0.9 I + 0.1 / (T - 1) (1 - I)`` as in the paper.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jmtl.models.architectures.common import (Architecture, Embedder, Tower, attention_bias,
                                              stacked)
from jmtl.models.encoder import EncoderBlock


def stitch_init(num_tasks: int):
  def init(key, shape, dtype=jnp.float32):
    off = 0.1 / max(num_tasks - 1, 1)
    return (0.9 - off) * jnp.eye(num_tasks, dtype=dtype) + off * (num_tasks > 1)
  return init


class _Columns(nn.Module):
  config: object
  num_tasks: int

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    cfg, T = self.config, self.num_tasks
    x = Embedder(cfg, name="embedder")(input_ids, attention_mask, token_type_ids,
                                       deterministic=deterministic, token_rows=token_rows)
    bias = attention_bias(attention_mask)
    x = jnp.broadcast_to(x, (T, *x.shape))  # [T, B, L, D]
    for i in range(cfg.depth):
      x = stacked(EncoderBlock, T)(cfg, name=f"block_{i}")(x, bias, deterministic)
      alpha = self.param(f"stitch_{i}", stitch_init(T), (T, T))
      x = jnp.einsum("st,t...->s...", alpha, x)
    x = stacked(_Norm, T)(name="final_norm")(x, None, None)
    return tuple(x[t] for t in range(T))  # task t reads leaf t only (see feature_readers)


class _Norm(nn.Module):
  @nn.compact
  def __call__(self, x, _bias, _deterministic):
    return nn.LayerNorm()(x)


class _Tower(nn.Module):
  spec: object
  index: int
  pooled_width: int
  head_hidden: int

  @nn.compact
  def __call__(self, columns, attention_mask):
    return Tower(self.spec, self.pooled_width, self.head_hidden, name="tower")(
        columns[self.index], attention_mask)


@dataclasses.dataclass(frozen=True)
class CrossStitch(Architecture):

  @property
  def last_shared_layer(self) -> str:
    return "final_norm"

  def _shared_module(self):
    return _Columns(self.encoder, len(self.tasks))

  def _private_module(self, spec):
    return _Tower(spec, self._task_index(spec.name), self.encoder.pooled_width, self.head_hidden)

  def feature_readers(self):
    return tuple((t,) for t in range(len(self.tasks)))

"""A pre-LN transformer text encoder (Flax linen)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models.matmul import (Dense, ProjectionParams, dense_dot_general,
                                fused_projections)
from jmtl.models.precision import at_least_float32, check_dtype, compute_params

@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  vocab_size: int = 30_000
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_width: int = 512
  max_length: int = 512
  type_vocab_size: int = 2
  dropout: float = 0.1
  attention_dropout: float = 0.1
  pooled_width: int = 128
  remat: bool = False  # recompute block activations in the backward pass (less memory)
  dtype: str = "float32"  # compute dtype of activations and matmuls (jmtl.models.precision)
  param_dtype: str = "float32"  # dtype the params are stored (and the optimizer runs) in

  # The model protocol's hooks (jmtl.models.protocol): where the token table sits in the
  # encoder params, and the last layer every task's features pass through (the pooler comes
  # after it but token-level heads never read it).
  token_table: ClassVar[tuple[str, ...]] = ("token_embedding", "embedding")
  last_shared_layer: ClassVar[str] = "final_norm"

  def module(self) -> "Encoder":
    return Encoder(self)

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"encoder width {self.width} is not divisible by num_heads {self.num_heads}")
    for name in ("vocab_size", "width", "depth", "num_heads", "mlp_width", "max_length", "pooled_width"):
      if getattr(self, name) <= 0:
        raise ValueError(f"encoder {name} must be positive, got {getattr(self, name)}")
    check_dtype(self.dtype, "encoder dtype")
    check_dtype(self.param_dtype, "encoder param_dtype")


def attention(query, key, value, mask=None, dropout_rng=None, dropout_rate=0.0,
              broadcast_dropout=True, deterministic=False, dtype=None, precision=None):
  """``nn.dot_product_attention`` with the softmax in float32 and the weights back in the
  compute dtype (Flax's ``force_fp32_for_softmax`` leaves them, and so the whole residual
  stream after them, in float32). The same computation in float32."""
  weights = nn.dot_product_attention_weights(
      query, key, mask=mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
      broadcast_dropout=broadcast_dropout, deterministic=deterministic, dtype=dtype,
      precision=precision, force_fp32_for_softmax=True)
  return jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value,
                    precision=precision)


class SelfAttention(nn.Module):
  """``nn.MultiHeadDotProductAttention`` over one input, with the same parameters (names,
  shapes, initial values, dropout key), computing query, key and value as one matmul
  (``fused_projections``)."""

  num_heads: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    width = x.shape[-1]
    features = (self.num_heads, width // self.num_heads)
    projections = [ProjectionParams(features, name=name)(width)
                   for name in ("query", "key", "value")]
    query, key, value = fused_projections(x, projections)
    dropout_rng = None
    if self.dropout_rate > 0.0 and not deterministic:
      dropout_rng = self.make_rng("dropout")
    context = attention(query, key, value, mask=mask, dropout_rng=dropout_rng,
                        dropout_rate=self.dropout_rate, deterministic=deterministic)
    return nn.DenseGeneral(width, axis=(-2, -1), dot_general=dense_dot_general, name="out")(
        context)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, x, attention_bias, deterministic: bool):
    cfg = self.config
    h = nn.LayerNorm(name="attention_norm")(x)
    h = SelfAttention(cfg.num_heads, cfg.attention_dropout, name="attention")(
        h, attention_bias, deterministic)
    x = x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
    h = nn.LayerNorm(name="mlp_norm")(x)
    h = Dense(cfg.mlp_width, name="mlp_in")(h)
    h = nn.gelu(h)
    h = Dense(cfg.width, name="mlp_out")(h)
    return x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


def embed_tokens(module: nn.Module, cfg: EncoderConfig, input_ids, token_type_ids=None, *,
                 deterministic: bool = True, token_rows=None):
  """Token + position + type embeddings and dropout, created as params of ``module`` (call
  from its compact ``__call__``): the encoder's and the sharing architectures' embedder.

  Type embeddings are always created, so one parameter tree serves single sentences and
  sentence pairs.
  """
  length = input_ids.shape[-1]
  if length > cfg.max_length:
    raise ValueError(f"sequence length {length} exceeds the encoder's max_length {cfg.max_length}")
  embed = nn.Embed(cfg.vocab_size, cfg.width, name="token_embedding")
  x = embed(input_ids) if token_rows is None else token_rows
  positions = module.param("position_embedding", nn.initializers.normal(0.02),
                           (cfg.max_length, cfg.width))
  x = x + positions[:length]
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  x = x + nn.Embed(cfg.type_vocab_size, cfg.width, name="type_embedding")(token_type_ids)
  # The token table is stored and gathered in param_dtype (see jmtl.models.precision): the
  # sum becomes the compute dtype here, and every module after it follows.
  x = x.astype(cfg.dtype)
  return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


def masked_mean(tokens, attention_mask):
  """Mean over the non-padding tokens ``[B, L, D] -> [B, D]``, summed in float32 and
  returned in ``tokens``' dtype."""
  weights = attention_mask.astype(jnp.float32)[..., None]
  total = jnp.sum(at_least_float32(tokens) * weights, axis=-2)
  return (total / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)).astype(tokens.dtype)


class Encoder(nn.Module):
  """Token ids -> (token features ``[B, L, D]``, pooled sentence vector ``[B, P]``).

  Padding (``attention_mask == 0``) is never attended to and is left out of the mean pool,
  so a sentence's features do not depend on how much padding its batch carries.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    """``token_rows``: ``table[input_ids]`` computed by the caller, used instead of the gather.

    The exact per-task gradient path passes them so it can differentiate w.r.t. the
    ``[B, L, D]`` rows rather than the ``[V, D]`` table (see ``jmtl.gradients``).
    """
    cfg = self.config
    x = embed_tokens(self, cfg, input_ids, token_type_ids, deterministic=deterministic,
                     token_rows=token_rows)
    mask = attention_mask.astype(bool)
    attention_bias = nn.make_attention_mask(mask, mask)
    # `deterministic` (argument 3, counting self) is a Python bool: static under remat.
    block = nn.remat(EncoderBlock, static_argnums=(3,)) if cfg.remat else EncoderBlock
    for i in range(cfg.depth):
      x = block(cfg, name=f"block_{i}")(x, attention_bias, deterministic)
    tokens = nn.LayerNorm(name="final_norm")(x)
    pooled = jnp.tanh(Dense(cfg.pooled_width, name="pooler")(masked_mean(tokens, attention_mask)))
    return tokens, pooled


def encode(config, params, batch, *, rng: jax.Array | None = None,
           token_rows: jax.Array | None = None):
  """Applies ``config.module()`` (any encoder config) to a batch; dropout is on iff ``rng``.
  Runs in ``config.dtype`` on params stored in any dtype (``jmtl.models.precision``)."""
  rngs = None if rng is None else {"dropout": rng}
  params = compute_params(params, config.dtype, config.token_table)
  return config.module().apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"],
      batch.get("token_type_ids"), deterministic=rng is None, rngs=rngs, token_rows=token_rows)

"""A BERT-family encoder (post-LN, as published) so pretrained checkpoints fine-tune in jmtl.

The layout follows Hugging Face's ``BertModel`` one module per tensor, so loading a checkpoint
(``jmtl.pretrained``) is a renaming plus a transpose of torch's ``(out, in)`` kernels:
word + position + token-type embeddings, an embedding LayerNorm, then N blocks of
``LN(x + Attn(x))``, ``LN(x + MLP(x))`` with exact-erf GELU. Padding is masked on the key
side only, as BERT does, so every position's features (padding included) match the original.

The pooled sentence vector is configurable: ``cls`` (the [CLS] features), ``mean`` (masked
mean over real tokens, what sentence-transformers uses) or ``pooler`` (BERT's tanh Dense on
[CLS]; its parameters exist only with this pooling, so no dead parameters reach a balancer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models.encoder import encode, masked_mean
from jmtl.models.matmul import Dense, ProjectionParams, fused_projections
from jmtl.models.precision import check_dtype, softmax

POOLINGS = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shapes and regularisation of a BERT encoder (Hugging Face ``BertConfig`` names in
  brackets where they differ)."""
  vocab_size: int = 30_522
  hidden_size: int = 384
  num_layers: int = 6  # num_hidden_layers
  num_heads: int = 12  # num_attention_heads
  intermediate_size: int = 1536
  max_length: int = 512  # max_position_embeddings
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1  # hidden_dropout_prob
  attention_dropout: float = 0.1  # attention_probs_dropout_prob
  pooling: str = "mean"
  remat: bool = False  # recompute each layer's activations in the backward pass (less memory)
  dtype: str = "float32"  # compute dtype (jmtl.models.precision)
  param_dtype: str = "float32"  # storage dtype of the params

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_length", "type_vocab_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"BERT {name} must be positive, got {getattr(self, name)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"BERT hidden_size {self.hidden_size} is not divisible by num_heads "
                       f"{self.num_heads}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"BERT pooling {self.pooling!r}: use one of {', '.join(POOLINGS)}")
    check_dtype(self.dtype, "BERT dtype")
    check_dtype(self.param_dtype, "BERT param_dtype")

  # What the train step reads from an encoder config (see jmtl.models.protocol).
  token_table: ClassVar[tuple[str, ...]] = ("token_embedding", "embedding")

  @property
  def pooled_width(self) -> int:
    return self.hidden_size

  @property
  def last_shared_layer(self) -> str:
    """The last block's output LayerNorm: every task (token or sentence) reads through it."""
    return f"layer_{self.num_layers - 1}/output_norm"

  def module(self) -> BertEncoder:
    return BertEncoder(self)


class SelfAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.config
    batch, length, width = x.shape
    head = width // cfg.num_heads
    split = lambda t: t.reshape(batch, length, cfg.num_heads, head)
    # Parameters named and initialised as three Dense layers (the checkpoint layout), applied
    # as one product (fused_projections).
    q, k, v = map(split, fused_projections(
        x, [ProjectionParams((width,), name=name)(width) for name in ("query", "key", "value")]))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head) + bias
    probs = softmax(scores, axis=-1)  # in float32
    probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, width)
    return Dense(width, name="output")(context)


class BertLayer(nn.Module):
  """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

  config: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.config
    h = SelfAttention(cfg, name="attention")(x, bias, deterministic)
    h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_norm")(x + h)
    h = Dense(cfg.intermediate_size, name="intermediate")(x)
    h = nn.gelu(h, approximate=False)
    h = Dense(cfg.hidden_size, name="output")(h)
    h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + h)


class BertEncoder(nn.Module):
  """Token ids -> (token features ``[B, L, D]``, pooled sentence vector ``[B, D]``)."""

  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    """``token_rows``: ``table[input_ids]`` computed by the caller, used instead of the gather
    (the compact per-task Gram path differentiates w.r.t. those rows)."""
    cfg = self.config
    length = input_ids.shape[-1]
    if length > cfg.max_length:
      raise ValueError(f"sequence length {length} exceeds the BERT position table "
                       f"({cfg.max_length})")
    words = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding",
                     embedding_init=nn.initializers.normal(0.02))
    x = words(input_ids) if token_rows is None else token_rows
    positions = nn.Embed(cfg.max_length, cfg.hidden_size, name="position_embedding",
                         embedding_init=nn.initializers.normal(0.02))
    x = x + positions.embedding[:length]
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="type_embedding",
                     embedding_init=nn.initializers.normal(0.02))(token_type_ids)
    # Statistics in float32; output in the compute dtype, which every layer after follows.
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, name="embedding_norm")(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    mask = attention_mask.astype(bool)
    # Key-side mask as in BERT: padded keys get a large negative score; padded queries still
    # attend to the real tokens, so their features stay finite and match the original.
    bias = jnp.where(mask, 0.0, jnp.finfo(x.dtype).min)[:, None, None, :].astype(x.dtype)
    # `deterministic` (argument 3, counting self) is a Python bool: static under remat.
    layer = nn.remat(BertLayer, static_argnums=(3,)) if cfg.remat else BertLayer
    for i in range(cfg.num_layers):
      x = layer(cfg, name=f"layer_{i}")(x, bias, deterministic)
    return x, self._pool(x, mask)

  def _pool(self, tokens, mask):
    cfg = self.config
    if cfg.pooling == "cls":
      return tokens[:, 0]
    if cfg.pooling == "pooler":
      return jnp.tanh(Dense(cfg.hidden_size, name="pooler")(tokens[:, 0]))
    return masked_mean(tokens, mask)


def bert_encode(config: BertConfig, params, batch, *, rng: jax.Array | None = None,
                token_rows: jax.Array | None = None):
  """Applies the encoder to a batch; dropout is on iff ``rng`` is given (``encoder.encode``:
  in ``config.dtype``)."""
  return encode(config, params, batch, rng=rng, token_rows=token_rows)

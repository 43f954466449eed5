"""The benchmark model in PyTorch, operation for operation the same as jmtl's.

jmtl (``jmtl/models/encoder.py``, ``heads.py``) with dropout off: token + learned position +
type embedding (type ids are all 0, so row 0 of the type table is added; the table is kept
so both sides train the same parameters), pre-LN blocks ``x + Attn(LN(x))``, ``x +
MLP(LN(x))`` with LayerNorm eps 1e-6 (Flax's default) and tanh-approximated GELU (Flax's
``nn.gelu`` default), final LayerNorm, mean pool over real tokens, pooler Dense + tanh;
each task's head Dense(64) + ReLU + Dense(C) on the pooled vector.

Attention: Flax masks a (query, key) pair unless both are real tokens; here only keys are
masked. The two differ on padding queries alone, whose outputs reach no loss (tagging masks,
the mean pool and every real query ignore them), so losses and gradients are the same. q, k
and v are one fused Linear (the usual PyTorch layout; the math is the same as Flax's three
DenseGenerals), and attention is ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6


class Block(nn.Module):
  def __init__(self, width: int, num_heads: int, mlp_width: int):
    super().__init__()
    self.num_heads = num_heads
    self.attention_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)
    self.mlp_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    self.mlp_in = nn.Linear(width, mlp_width)
    self.mlp_out = nn.Linear(mlp_width, width)

  def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    batch, length, width = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(self.attention_norm(x)).split(width, dim=-1)
    split = lambda t: t.view(batch, length, heads, width // heads).transpose(1, 2)
    h = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=key_mask)
    x = x + self.out(h.transpose(1, 2).reshape(batch, length, width))
    h = self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x)), approximate="tanh"))
    return x + h


class Encoder(nn.Module):
  def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, mlp_width: int,
               max_length: int, pooled_width: int, type_vocab_size: int = 2):
    super().__init__()
    self.token_embedding = nn.Embedding(vocab_size, width)
    self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
    self.type_embedding = nn.Embedding(type_vocab_size, width)
    self.blocks = nn.ModuleList(Block(width, num_heads, mlp_width) for _ in range(depth))
    self.final_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    self.pooler = nn.Linear(width, pooled_width)

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Pooled sentence vectors ``[B, P]``."""
    length = input_ids.shape[1]
    x = self.token_embedding(input_ids) + self.position_embedding[:length]
    x = x + self.type_embedding(torch.zeros_like(input_ids))
    real = attention_mask.bool()
    key_mask = real[:, None, None, :]  # [B, 1, 1, L]: True where a key may be attended
    for block in self.blocks:
      x = block(x, key_mask)
    tokens = self.final_norm(x)
    weights = real.to(tokens.dtype)[..., None]
    mean = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return torch.tanh(self.pooler(mean))


class Head(nn.Module):
  def __init__(self, pooled_width: int, hidden: int, num_labels: int):
    super().__init__()
    self.hidden = nn.Linear(pooled_width, hidden)
    self.out = nn.Linear(hidden, num_labels)

  def forward(self, pooled: torch.Tensor) -> torch.Tensor:
    return self.out(F.relu(self.hidden(pooled)))


class MultiTaskModel(nn.Module):
  """Shared encoder + one classification head per task (names in ``task_names``)."""

  def __init__(self, task_names: Sequence[str], *, vocab_size: int, width: int, depth: int,
               num_heads: int, mlp_width: int, max_length: int, pooled_width: int,
               head_hidden: int, num_labels: int):
    super().__init__()
    self.task_names = tuple(task_names)
    self.encoder = Encoder(vocab_size, width, depth, num_heads, mlp_width, max_length,
                           pooled_width)
    self.heads = nn.ModuleDict(
        {name: Head(pooled_width, head_hidden, num_labels) for name in self.task_names})

  def losses(self, pooled: torch.Tensor, batch: Mapping[str, torch.Tensor],
             names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Mean cross-entropy of each task in ``names`` (default: all) from pooled features."""
    return [F.cross_entropy(self.heads[name](pooled), batch[name])
            for name in (names or self.task_names)]


def _tensor(array: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(array, np.float32))


def load_jmtl_params(model: MultiTaskModel, params: Mapping[str, Any]) -> None:
  """Copies jmtl params (nested NumPy, as ``weights.load_params`` returns) into ``model``.

  Flax Dense kernels are ``[in, out]`` (torch: ``[out, in]``); attention q/k/v kernels are
  ``[D, H, Dh]`` and the out kernel ``[H, Dh, D]``, flattened head-major as
  ``scaled_dot_product_attention``'s head split expects.
  """
  encoder = params["encoder"]
  dense = lambda p: (_tensor(p["kernel"].T), _tensor(p["bias"]))
  norm = lambda p: (_tensor(p["scale"]), _tensor(p["bias"]))
  state = {
      "encoder.token_embedding.weight": _tensor(encoder["token_embedding"]["embedding"]),
      "encoder.position_embedding": _tensor(encoder["position_embedding"]),
      "encoder.type_embedding.weight": _tensor(encoder["type_embedding"]["embedding"]),
  }
  state["encoder.final_norm.weight"], state["encoder.final_norm.bias"] = norm(encoder["final_norm"])
  state["encoder.pooler.weight"], state["encoder.pooler.bias"] = dense(encoder["pooler"])
  for i, block in enumerate(model.encoder.blocks):
    source, prefix = encoder[f"block_{i}"], f"encoder.blocks.{i}."
    attention = source["attention"]
    width = attention["query"]["kernel"].shape[0]
    kernels = [attention[n]["kernel"].reshape(width, width) for n in ("query", "key", "value")]
    state[prefix + "qkv.weight"] = _tensor(np.concatenate(kernels, axis=1).T)
    state[prefix + "qkv.bias"] = _tensor(np.concatenate(
        [attention[n]["bias"].reshape(width) for n in ("query", "key", "value")]))
    state[prefix + "out.weight"] = _tensor(attention["out"]["kernel"].reshape(width, width).T)
    state[prefix + "out.bias"] = _tensor(attention["out"]["bias"])
    for name in ("attention_norm", "mlp_norm"):
      state[prefix + name + ".weight"], state[prefix + name + ".bias"] = norm(source[name])
    for name in ("mlp_in", "mlp_out"):
      state[prefix + name + ".weight"], state[prefix + name + ".bias"] = dense(source[name])
  for name in model.task_names:
    head = params["heads"][name]
    for layer in ("hidden", "out"):
      state[f"heads.{name}.{layer}.weight"], state[f"heads.{name}.{layer}.bias"] = dense(head[layer])
  missing = set(model.state_dict()) - set(state)
  extra = set(state) - set(model.state_dict())
  if missing or extra:
    raise KeyError(f"weight mapping mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
  model.load_state_dict(state)

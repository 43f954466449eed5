"""CGC and PLE (Tang et al. 2020): shared plus task-specific experts, gated per task.

One extraction layer (CGC): shared experts read the embeddings; task ``t`` has its own
experts too and a softmax gate over (shared + its own) experts, per token. PLE stacks
``num_layers`` extraction layers: below the last one, each task's gate output feeds that
task's experts of the next layer and a *shared* gate over all experts feeds the next shared
experts. Everything below the last layer reaches every task (through the shared gate), so it
is shared (balanced): embeddings, all experts and gates of layers 1..n-1, and the last layer's
shared experts. Private to task ``t``: its last-layer experts (with the encoder's dropout,
as every expert), gate, pooler and head.
Representation: ``(per-task inputs of the last layer (T leaves, leaf t read by task t only),
last-layer shared experts [Es, B, L, D])``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models.architectures.common import (Architecture, Blocks, Embedder, Tower,
                                              attention_bias, broadcast_stacked, mix_experts)
from jmtl.models.matmul import Dense
from jmtl.models.precision import softmax


def _gated(logits_layer, gate_input, experts):
  weights = softmax(logits_layer(gate_input), axis=-1)
  return mix_experts(weights, experts), weights


class _Extraction(nn.Module):
  """Layers 1..n-1 (shared), then the last layer's shared experts."""

  config: object
  num_tasks: int
  num_layers: int
  shared_experts: int
  task_experts: int

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    cfg, T, Es, Et = self.config, self.num_tasks, self.shared_experts, self.task_experts
    x = Embedder(cfg, name="embedder")(input_ids, attention_mask, token_type_ids,
                                       deterministic=deterministic, token_rows=token_rows)
    bias = attention_bias(attention_mask)
    experts = lambda count, name: broadcast_stacked(Blocks, count)(cfg, cfg.depth, name=name)
    shared_in, task_in = x, (x,) * T
    for layer in range(self.num_layers - 1):
      shared_out = experts(Es, f"layer_{layer}_shared")(shared_in, bias, deterministic)
      task_out = [experts(Et, f"layer_{layer}_task_{t}")(task_in[t], bias, deterministic)
                  for t in range(T)]
      task_in = tuple(
          _gated(Dense(Es + Et, name=f"layer_{layer}_gate_{t}"), task_in[t],
                 jnp.concatenate([shared_out, task_out[t]]))[0] for t in range(T))
      shared_in, _ = _gated(Dense(Es + T * Et, name=f"layer_{layer}_shared_gate"), shared_in,
                            jnp.concatenate([shared_out, *task_out]))
    last = experts(Es, f"layer_{self.num_layers - 1}_shared")(shared_in, bias, deterministic)
    return task_in, last


class _TaskExtraction(nn.Module):
  """Task ``index``'s last layer: its own experts, its gate over (shared + own), its tower."""

  config: object
  spec: object
  index: int
  shared_experts: int
  task_experts: int
  head_hidden: int

  def setup(self):
    cfg = self.config
    self.experts = broadcast_stacked(Blocks, self.task_experts)(cfg, cfg.depth, name="experts")
    self.gate_logits = Dense(self.shared_experts + self.task_experts, name="gate")
    self.tower = Tower(self.spec, cfg.pooled_width, self.head_hidden, name="tower")

  def _mixed(self, representation, attention_mask, deterministic: bool = True):
    task_inputs, shared = representation
    own_input = task_inputs[self.index]
    own = self.experts(own_input, attention_bias(attention_mask), deterministic)
    return _gated(self.gate_logits, own_input, jnp.concatenate([shared, own]))

  def gate(self, representation, attention_mask):
    return self._mixed(representation, attention_mask)[1]

  def __call__(self, representation, attention_mask, deterministic: bool = True):
    return self.tower(self._mixed(representation, attention_mask, deterministic)[0],
                      attention_mask)


@dataclasses.dataclass(frozen=True)
class PLE(Architecture):
  """``num_layers=1`` is CGC."""

  num_layers: int = 2
  shared_experts: int = 2
  task_experts: int = 1

  private_dropout = True  # a task's own experts drop out as the shared experts do

  def __post_init__(self):
    super().__post_init__()
    for key in ("num_layers", "shared_experts", "task_experts"):
      if getattr(self, key) < 1:
        raise ValueError(f"PLE/CGC: {key}={getattr(self, key)} must be at least 1")

  @property
  def last_shared_layer(self) -> str:
    return f"layer_{self.num_layers - 1}_shared/final_norm"

  def _shared_module(self):
    return _Extraction(self.encoder, len(self.tasks), self.num_layers, self.shared_experts,
                       self.task_experts)

  def _private_module(self, spec):
    return _TaskExtraction(self.encoder, spec, self._task_index(spec.name), self.shared_experts,
                           self.task_experts, self.head_hidden)

  def feature_readers(self):
    T = len(self.tasks)
    return (*((t,) for t in range(T)), tuple(range(T)))

  def gate_weights(self, name: str, task_params, representation, batch) -> jax.Array:
    """Task ``name``'s last-layer gate ``[B, L, Es + Et]`` (each row sums to one)."""
    return self._private_module(self._specs[name]).apply(
        {"params": task_params}, representation, batch["attention_mask"], method="gate")

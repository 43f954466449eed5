"""Multi-gate Mixture-of-Experts (Ma et al. 2018) on sequence encoders.

E expert encoders read the shared embeddings; each task mixes them with its own softmax gate,
per token (the gate reads that token's embedding), then its tower. Shared (balanced): the
embeddings and the experts. Private to task ``t``: its gate, pooler and head. Representation:
``(experts [E, B, L, D], embeddings [B, L, D])``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jmtl.models.architectures.common import Architecture, SharedExperts, Tower, mix_experts
from jmtl.models.matmul import Dense
from jmtl.models.precision import softmax


class _GatedTower(nn.Module):
  spec: object
  num_experts: int
  pooled_width: int
  head_hidden: int

  def setup(self):
    self.gate_logits = Dense(self.num_experts, name="gate")
    self.tower = Tower(self.spec, self.pooled_width, self.head_hidden, name="tower")

  def gate(self, representation, attention_mask):
    _, embeddings = representation
    return softmax(self.gate_logits(embeddings), axis=-1)

  def __call__(self, representation, attention_mask):
    experts, _ = representation
    return self.tower(mix_experts(self.gate(representation, attention_mask), experts),
                      attention_mask)


@dataclasses.dataclass(frozen=True)
class MMoE(Architecture):
  num_experts: int = 4

  last_shared_layer = "experts/final_norm"

  def _shared_module(self):
    return SharedExperts(self.encoder, self.num_experts)

  def _private_module(self, spec):
    return _GatedTower(spec, self.num_experts, self.encoder.pooled_width, self.head_hidden)

  def gate_weights(self, name: str, task_params, representation, batch) -> jax.Array:
    """Task ``name``'s gate, ``[B, L, E]`` (each row sums to one)."""
    return self._private_module(self._specs[name]).apply(
        {"params": task_params}, representation, batch["attention_mask"], method="gate")

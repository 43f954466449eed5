"""DSelect-k (Hazimeh et al. 2021): differentiable top-k selection of shared experts.

Each task's gate has k *selectors*. A selector holds m = ceil(log2 E) logits z and picks
expert e with probability ``prod_j S(z_j)^{b_j(e)} (1 - S(z_j))^{1 - b_j(e)}``, where b(e) is
e's binary code and S the smooth step

  S(t) = 0 (t <= -gamma/2),  -2/gamma^3 t^3 + 3/(2 gamma) t + 1/2 (|t| < gamma/2),  1 (t >= gamma/2).

S reaches exactly 0 and 1, so once every |z_j| >= gamma/2 a selector is one-hot: the gate,
a softmax(alpha)-mixture of the k selectors, uses at most k experts (gamma plays the role of
the temperature: as it goes to 0 every selector is one-hot). Per-example gating as in the
paper's MTL experiments, here per token (z and alpha read the token's embedding). With E not
a power of two, code c selects expert c mod E (the official code instead keeps the first E
codes and penalises the unreachable ones; folding makes every code reachable).

Entropy regulariser (the paper's Omega, official code's ``EntropyRegularizer``): each
selector's entropy over the experts, ``-sum_e r_e log(r_e + 1e-6)``, summed over selectors
and routing units (here the non-padding tokens; there the examples) and weighted by
``entropy_weight`` (the official default 1e-6; 0 = off). It pushes each selector to one
expert before the smooth step saturates. It is no task's loss: the model returns it as the
protocol's ``aux_loss_sum`` and the train step adds its gradient outside the balancer (to the
task's selectors and, through the gate's input, the shared embeddings). Shared / private as
MMoE.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmtl.models.architectures.common import Architecture, SharedExperts, Tower, mix_experts
from jmtl.models.matmul import Dense
from jmtl.models.precision import softmax


ENTROPY_EPSILON = 1e-6  # the official code's EPSILON inside the log


def selector_entropy(selectors, attention_mask):
  """``-sum r log(r + eps)`` over ``selectors [B, L, k, E]`` at the non-padding tokens."""
  terms = selectors * jnp.log(selectors + ENTROPY_EPSILON)
  return -jnp.sum(attention_mask.astype(terms.dtype)[..., None, None] * terms)


def smooth_step(t, gamma: float):
  inner = -2.0 / gamma ** 3 * t ** 3 + 1.5 / gamma * t + 0.5
  return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, inner))


def binary_codes(num_experts: int) -> np.ndarray:
  """``[2^m, m]`` 0/1: code c's bits, least significant first (m = ceil(log2 E), at least 1)."""
  bits = max(1, math.ceil(math.log2(num_experts)))
  return (np.arange(2 ** bits)[:, None] >> np.arange(bits)[None]) & 1


def selector_weights(z, gamma: float, num_experts: int):
  """``z [..., k, m]`` selector logits -> ``[..., k, E]`` expert probabilities per selector.

  The 2^m code probabilities sum to one by construction; with E not a power of two, code c
  selects expert ``c mod E`` (so a saturated selector is still one-hot over the experts).
  """
  codes = binary_codes(num_experts)
  fold = jnp.asarray(np.eye(num_experts)[np.arange(len(codes)) % num_experts], z.dtype)
  on = smooth_step(z, gamma)[..., None, :]  # [..., k, 1, m]
  codes = jnp.asarray(codes, z.dtype)
  probs = jnp.prod(codes * on + (1 - codes) * (1 - on), axis=-1)  # [..., k, 2^m]
  return probs @ fold


class _SelectTower(nn.Module):
  spec: object
  num_experts: int
  k: int
  gamma: float
  pooled_width: int
  head_hidden: int

  def setup(self):
    bits = binary_codes(self.num_experts).shape[1]
    # small init keeps z inside the smooth region, so every selector starts trainable
    self.selector_logits = Dense(self.k * bits, name="selectors",
                                 kernel_init=nn.initializers.normal(0.05 * self.gamma))
    self.selector_mix = Dense(self.k, name="selector_mix")
    self.tower = Tower(self.spec, self.pooled_width, self.head_hidden, name="tower")

  def selectors(self, representation, attention_mask):
    """``[B, L, k, E]``: each selector's distribution over the experts."""
    _, embeddings = representation
    z = self.selector_logits(embeddings)
    z = z.reshape(*z.shape[:-1], self.k, -1)
    return selector_weights(z, self.gamma, self.num_experts)

  def gate(self, representation, attention_mask):
    _, embeddings = representation
    alpha = softmax(self.selector_mix(embeddings), axis=-1)  # [B, L, k]
    return jnp.einsum("blk,blke->ble", alpha, self.selectors(representation, attention_mask))

  def __call__(self, representation, attention_mask):
    experts, _ = representation
    return self.tower(mix_experts(self.gate(representation, attention_mask), experts),
                      attention_mask)


@dataclasses.dataclass(frozen=True)
class DSelectK(Architecture):
  num_experts: int = 4
  k: int = 2
  gamma: float = 1.0
  entropy_weight: float = 1e-6

  last_shared_layer = "experts/final_norm"

  def __post_init__(self):
    super().__post_init__()
    if not 1 <= self.k <= self.num_experts:
      raise ValueError(f"DSelect-k: k={self.k} must be between 1 and num_experts={self.num_experts}")
    if self.gamma <= 0:
      raise ValueError(f"DSelect-k: gamma={self.gamma} must be positive")
    if not self.entropy_weight >= 0:
      raise ValueError(f"DSelect-k: entropy weight {self.entropy_weight} must be >= 0")

  @property
  def aux_loss_sum(self):
    """The protocol's auxiliary loss: the weighted selector entropy (None when off)."""
    return self._entropy_loss if self.entropy_weight > 0 else None

  def _entropy_loss(self, name: str, task_params, representation, batch) -> jax.Array:
    selectors = self.gate_weights(name, task_params, representation, batch, method="selectors")
    return self.entropy_weight * selector_entropy(selectors, batch["attention_mask"])

  def _shared_module(self):
    return SharedExperts(self.encoder, self.num_experts)

  def _private_module(self, spec):
    return _SelectTower(spec, self.num_experts, self.k, self.gamma, self.encoder.pooled_width,
                        self.head_hidden)

  def gate_weights(self, name: str, task_params, representation, batch, *,
                   method: str = "gate") -> jax.Array:
    """Task ``name``'s gate ``[B, L, E]`` (``method="selectors"``: ``[B, L, k, E]``)."""
    return self._private_module(self._specs[name]).apply(
        {"params": task_params}, representation, batch["attention_mask"], method=method)

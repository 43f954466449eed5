"""Pieces every sharing architecture is built from, and the part of the model protocol they
have in common.

Every architecture shares at least the embeddings (so the compact Gram path and rep-grad
apply to all of them), runs one or more stacks of pre-LN blocks from ``jmtl.models.encoder``
on top, and ends each task in a private *tower* (masked mean pool, pooler, task head). What a
task's loss alone reads lives in ``params["tasks"][name]`` and gets that task's own gradient;
what more than one task reads lives in ``params["shared"]`` and is balanced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmtl.models.encoder import EncoderBlock, EncoderConfig, embed_tokens, masked_mean
from jmtl.models.heads import Head
from jmtl.models.matmul import Dense
from jmtl.models.precision import cast_floating, compute_params
from jmtl.models.protocol import check_layout, private_rng
from jmtl.tasks import TaskSpec, task_names

PyTree = Any


class Embedder(nn.Module):
  """Token + position + type embeddings, as ``Encoder``'s (same parameter names)."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    return embed_tokens(self, self.config, input_ids, token_type_ids,
                        deterministic=deterministic, token_rows=token_rows)


def attention_bias(attention_mask):
  mask = attention_mask.astype(bool)
  return nn.make_attention_mask(mask, mask)


class Blocks(nn.Module):
  """``depth`` pre-LN blocks and a final norm: one sequence encoder column or expert."""

  config: EncoderConfig
  depth: int

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    for i in range(self.depth):
      x = EncoderBlock(self.config, name=f"block_{i}")(x, bias, deterministic)
    return nn.LayerNorm(name="final_norm")(x)


def stacked(module_cls, count: int):
  """``module_cls`` with ``count`` independent parameter sets on a leading axis, applied to
  a leading-axis input (``[count, B, L, D]``): T columns or E experts in one vmapped call."""
  return nn.vmap(module_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                 in_axes=(0, None, None), out_axes=0, axis_size=count)


def broadcast_stacked(module_cls, count: int):
  """As ``stacked`` for one input shared by every member (experts reading the embeddings)."""
  return nn.vmap(module_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                 in_axes=(None, None, None), out_axes=0, axis_size=count)


class Tower(nn.Module):
  """A task's private end: masked mean pool -> tanh pooler -> head on (tokens, pooled)."""

  spec: TaskSpec
  pooled_width: int
  head_hidden: int

  @nn.compact
  def __call__(self, tokens, attention_mask):
    pooled = jnp.tanh(Dense(self.pooled_width, name="pooler")(masked_mean(tokens, attention_mask)))
    return Head(self.spec, hidden=self.head_hidden, name="head")(tokens, pooled)


def light_encoder(full: EncoderConfig, width: int = 0, depth: int = 0) -> EncoderConfig:
  """The encoder config of one column / expert: ``full`` with its own width and depth (0 keeps
  the full value), the MLP scaled with the width, so T or E of them fit on a CPU."""
  width = width or full.width
  mlp = max(1, full.mlp_width * width // full.width)
  return dataclasses.replace(full, width=width, depth=depth or full.depth, mlp_width=mlp)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The protocol parts every architecture shares; subclasses define the shared encoder
  (``_shared_module`` / ``encode``) and a task's private computation (``_private_module``).

  ``encoder``: the (light) encoder config of a column / expert. ``layout`` as
  ``MultiTaskModel``. A subclass whose private part holds encoder blocks (soft's columns,
  PLE's task experts) sets ``private_dropout``: those blocks then drop out at the encoder's
  rates in training (the protocol passes ``loss_sum`` the task's key), as shared blocks do.
  Towers, gates and task attention modules have no dropout, as hard sharing's heads.
  """

  encoder: EncoderConfig
  tasks: tuple[TaskSpec, ...]
  head_hidden: int = 64
  layout: str = "same_input"

  shared_key = "shared"
  task_key = "tasks"
  token_table = ("embedder", "token_embedding", "embedding")
  private_dropout = False  # True: _private_module takes deterministic= and drops out

  def __post_init__(self):
    object.__setattr__(self, "tasks", tuple(self.tasks))
    task_names(self.tasks)
    if not self.tasks:
      raise ValueError(f"a {type(self).__name__} needs at least one task")
    check_layout(self.layout)
    object.__setattr__(self, "_specs", {spec.name: spec for spec in self.tasks})

  @property
  def names(self) -> tuple[str, ...]:
    return task_names(self.tasks)

  def _task_index(self, name: str) -> int:
    return self.names.index(name)

  # -- subclasses -------------------------------------------------------------------------
  def _shared_module(self) -> nn.Module:
    raise NotImplementedError

  def _private_module(self, spec: TaskSpec) -> nn.Module:
    """Called as ``module(representation, attention_mask)`` -> the task's outputs (with
    ``private_dropout``, also ``deterministic=False`` and a ``dropout`` rng in training)."""
    raise NotImplementedError

  # -- protocol ---------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]):
    if self.layout == "multi_input":  # any task's batch has the input shapes
      batch = next(iter(batch.values()))
    shared_rng, *task_rngs = jax.random.split(rng, len(self.tasks) + 1)
    module = self._shared_module()
    shared = module.init(shared_rng, batch["input_ids"], batch["attention_mask"],
                         batch.get("token_type_ids"))["params"]
    representation = self.encode(shared, batch)
    own = {spec.name: self._private_module(spec).init(r, representation,
                                                      batch["attention_mask"])["params"]
           for spec, r in zip(self.tasks, task_rngs)}
    return cast_floating({self.shared_key: shared, self.task_key: own},
                         self.encoder.param_dtype)

  def encode(self, shared_params, batch, rng: jax.Array | None = None,
             token_rows: jax.Array | None = None):
    rngs = None if rng is None else {"dropout": rng}
    shared_params = compute_params(shared_params, self.encoder.dtype, self.token_table)
    return self._shared_module().apply(
        {"params": shared_params}, batch["input_ids"], batch["attention_mask"],
        batch.get("token_type_ids"), deterministic=rng is None, rngs=rngs, token_rows=token_rows)

  def head(self, spec: TaskSpec, task_params, representation, batch,
           rng: jax.Array | None = None) -> jax.Array:
    """Task ``spec``'s outputs; ``rng`` (this task's private key) turns dropout on."""
    module = self._private_module(spec)
    task_params = compute_params(task_params, self.encoder.dtype)
    if rng is None or not self.private_dropout:
      return module.apply({"params": task_params}, representation, batch["attention_mask"])
    return module.apply({"params": task_params}, representation, batch["attention_mask"],
                        deterministic=False, rngs={"dropout": rng})

  def apply(self, params, batch, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """``{task: outputs}``; ``rng`` = training: the keys the train step uses."""
    representation = self.encode(params[self.shared_key], batch, rng)
    return {s.name: self.head(s, params[self.task_key][s.name], representation, batch,
                              private_rng(rng, i))
            for i, s in enumerate(self.tasks)}

  def loss_sum(self, name: str, task_params, representation, batch,
               rng: jax.Array | None = None) -> jax.Array:
    spec = self._specs[name]
    return spec.loss_sum(self.head(spec, task_params, representation, batch, rng), batch)[0]

  def label_count(self, name: str, batch) -> jax.Array:
    # Array methods, not jnp: on NumPy arrays (the host's presence check) this stays NumPy.
    return batch[self._specs[name].mask_key].astype(np.float32).sum()


def mix_experts(weights, experts):
  """Per-token mixture: ``weights [B, L, E]`` (rows sum to one) of ``experts [E, B, L, D]``."""
  return jnp.einsum("ble,ebld->bld", weights, experts)


class SharedExperts(nn.Module):
  """Embeddings and ``count`` expert encoders reading them, stacked ``[E, B, L, D]``."""

  config: EncoderConfig
  count: int

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True,
               token_rows=None):
    embeddings = Embedder(self.config, name="embedder")(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        token_rows=token_rows)
    experts = broadcast_stacked(Blocks, self.count)(self.config, self.config.depth, name="experts")(
        embeddings, attention_bias(attention_mask), deterministic)
    return experts, embeddings

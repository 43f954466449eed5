"""The training state: one pytree that Orbax saves and restores whole."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jmtl.balancers import Balancer
from jmtl.models.protocol import MultiTaskProtocol

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken (skipped non-finite steps count too)
  params: PyTree  # {model.shared_key: ..., model.task_key: {task: ...}}
  opt_state: PyTree
  balancer_state: PyTree  # the balancer's NamedTuple
  rng: jax.Array  # base key (uint32[2]); the key of step s is fold_in(rng, s)
  nonfinite_steps: jax.Array  # int32 scalar: steps skipped for a NaN/Inf loss or gradient


def create_train_state(model: MultiTaskProtocol, balancer: Balancer,
                       optimizer: optax.GradientTransformation, example_batch, seed: int,
                       balancer_params=None) -> TrainState:
  """A fresh state; call under ``jax.jit`` (or ``jax.eval_shape`` for shapes only).

  ``balancer_params`` is the pytree one task's shared gradient has: the shared params for
  exact per-task gradients, the shared representation for rep-grad (default: shared params).
  """
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_rng, example_batch)
  shared = params[model.shared_key] if balancer_params is None else balancer_params
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      balancer_state=balancer.init(shared),
      rng=train_rng,
      nonfinite_steps=jnp.zeros((), jnp.int32),
  )

"""Fixed and random linear scalarisations: the baselines every balancer is compared with.

All four are ``"losses"`` methods whose weights do not even look at the losses, so the
train step does one backward of ``sum_i w_i L_i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jmtl.balancers._base import Balancer
from jmtl.balancers._base import uniform_weights
from jmtl.balancers._base import from_loss_weights
from jmtl.balancers._base import weighted_sum
from jmtl.balancers._registry import register

_LINEAR_SCALARISATION = "Caruana 1997, Multitask Learning, Machine Learning"


class EqualWeightState(NamedTuple):
  weights: jax.Array  # [T], 1/T each


class SumState(NamedTuple):
  weights: jax.Array  # [T], ones


class ConstantState(NamedTuple):
  weights: jax.Array  # [T], the user's weights


class RandomState(NamedTuple):
  weights: jax.Array  # [T], the weights drawn for the last update
  key: jax.Array      # PRNG key, split on every update


def _fixed_weights(weights: jax.Array, state_type: type[NamedTuple]) -> Balancer:
  """A balancer that always applies ``weights``."""
  def init(params):
    del params
    return state_type(weights=weights)

  def weigh(task_losses, state):
    del task_losses
    return weights, state._replace(weights=weights)

  return from_loss_weights(init, weigh)


@register("equal_weight", paper=_LINEAR_SCALARISATION)
def equal_weight(num_tasks: int) -> Balancer:
  """Mean of the task gradients: ``g = (1/T) sum_i g_i`` (linear scalarisation, Caruana 1997)."""
  return _fixed_weights(uniform_weights(num_tasks), EqualWeightState)


@register("sum", paper=_LINEAR_SCALARISATION)
def sum_(num_tasks: int) -> Balancer:
  """Sum of the task gradients: ``g = sum_i g_i``, the gradient of the summed loss."""
  return _fixed_weights(jnp.ones((num_tasks,), jnp.float32), SumState)


@register("constant", paper=_LINEAR_SCALARISATION, handles_presence=True)
def constant(num_tasks: int, *, weights: Sequence[float] | None = None) -> Balancer:
  """Fixed user weights: ``g = sum_i w_i g_i`` (hand-tuned linear scalarisation).

  Args:
    num_tasks: T.
    weights: T floats; ``None`` means all ones (the same as ``"sum"``).

  Raises:
    ValueError: ``weights`` does not hold exactly ``num_tasks`` finite values.
  """
  if weights is None:
    weights = [1.0] * num_tasks
  # Converted on the host once: a wrong length is a config error, best caught at build time.
  values = [float(w) for w in weights]
  if len(values) != num_tasks:
    raise ValueError(
        f"constant balancer: got {len(values)} weights {values} for num_tasks={num_tasks}")
  if not all(abs(v) < float("inf") for v in values):
    raise ValueError(f"constant balancer: weights must be finite, got {values}")
  weights = jnp.asarray(values, jnp.float32)

  # Per-task hparams cannot be rebuilt for a subset of tasks under jit, so absent tasks are
  # handled here: the present tasks keep their own weights (the method on those tasks).
  def init(params):
    del params
    return ConstantState(weights=weights)

  def weigh_losses(task_losses, state, *, present=None):
    del task_losses, state
    applied = weights if present is None else jnp.where(present, weights, 0.0)
    return applied, ConstantState(weights=applied)

  def update(task_grads, state, params=None, *, task_losses=None, present=None):
    del params
    applied, state = weigh_losses(task_losses, state, present=present)
    return weighted_sum(applied, task_grads), state

  return Balancer(init=init, update=update, needs="losses", weigh_losses=weigh_losses)


# The same methods under the names other libraries use (torchjd's Mean, LibMTL's linear
# scalarisation): one implementation, several names.
register("mean", paper=_LINEAR_SCALARISATION)(equal_weight)
register("linear_scalarization", paper=_LINEAR_SCALARISATION)(constant)


@register("random", paper="Lin et al. 2022, Reasonable Effectiveness of Random Weighting: "
          "A Litmus Test for Multi-Task Learning, TMLR (Dirichlet variant)")
def random(num_tasks: int, *, concentration: float = 1.0, seed: int = 0) -> Balancer:
  """Fresh random weights every step: ``w ~ Dirichlet(concentration * 1_T)``, ``g = sum_i w_i g_i``.

  The weights are positive and sum to 1, so on average they equal ``"equal_weight"``
  (``concentration=1`` is uniform on the simplex). ``"rlw"`` is the softmax-of-normal
  variant of the same paper.

  Args:
    num_tasks: T.
    concentration: Dirichlet concentration; large values approach equal weights.
    seed: seed of the PRNG key kept in the state.
  """
  if not concentration > 0:
    raise ValueError(f"random balancer: concentration must be > 0, got {concentration}")
  alphas = jnp.full((num_tasks,), concentration, jnp.float32)

  def init(params):
    del params
    return RandomState(weights=uniform_weights(num_tasks),
                       key=jax.random.PRNGKey(seed))

  def weigh(task_losses, state):
    del task_losses
    key, draw_key = jax.random.split(state.key)
    weights = jax.random.dirichlet(draw_key, alphas).astype(jnp.float32)
    return weights, RandomState(weights=weights, key=key)

  return from_loss_weights(init, weigh)

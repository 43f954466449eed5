"""Loss-level weightings: task weights that are a function of the losses and a small state.

All six are ``"losses"`` methods: the train step does ONE backward of ``sum_i w_i L_i``.

A task loss of exactly 0 means "no labels for this task in this batch" (its gradient is
zero too). Such a task carries no information about its own progress, so the methods below
leave it out of whatever they learn or average (learnable scales, loss history, geometric
mean) instead of reading a spurious "perfect fit" from it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmtl.balancers._base import EPS
from jmtl.balancers._base import Balancer
from jmtl.balancers._base import Reduction
from jmtl.balancers._base import reduction_scale
from jmtl.balancers._base import uniform_weights
from jmtl.balancers._base import from_loss_weights
from jmtl.balancers._registry import register


def present_tasks(task_losses: jax.Array) -> jax.Array:
  """``[T]`` bool: the tasks that had labels this step (a loss of exactly 0 means none)."""
  return task_losses > 0


def masked_log(task_losses: jax.Array, present: jax.Array) -> jax.Array:
  """``log(L_i)`` for present tasks, 0 for absent ones (no ``log 0`` anywhere)."""
  return jnp.log(jnp.where(present, task_losses, 1.0) + EPS)


# ---------------------------------------------------------------- linear scalarisation


# ---------------------------------------------------------------- learnable log-scales


class UncertaintyState(NamedTuple):
  weights: jax.Array        # [T] exp(-s_i) / T applied by the last update (before its s step)
  log_variances: jax.Array  # [T] s_i = log sigma_i^2, after the last update's Adam step
  optimizer_state: optax.OptState


class IMTLLState(NamedTuple):
  weights: jax.Array      # [T] exp(s_i) / T applied by the last update (before its s step)
  log_scales: jax.Array   # [T] s_i, after the last update's Adam step
  optimizer_state: optax.OptState


def _learned_scale_balancer(num_tasks, lr, init_scale, weight_of, scale_gradient,
                            state_type, scales_field, reduction_factor) -> Balancer:
  """Weights ``reduction_factor * weight_of(s)`` of a learnable ``[T]`` vector s, with one
  Adam step per update (the factor scales the update only, not s's objective).

  ``scale_gradient(s, losses)`` is d(objective)/ds. Absent tasks get a zero gradient, so a
  batch without a task's labels does not drag its scale towards ``L = 0``.
  """
  optimizer = optax.adam(lr)

  def init(params):
    del params
    scales = jnp.full((num_tasks,), init_scale, jnp.float32)
    return state_type(reduction_factor * weight_of(scales), scales, optimizer.init(scales))

  def weigh(task_losses, state):
    task_losses = task_losses.astype(jnp.float32)
    scales = getattr(state, scales_field)
    weights = reduction_factor * weight_of(scales)
    gradient = jnp.where(present_tasks(task_losses), scale_gradient(scales, task_losses), 0.0)
    updates, optimizer_state = optimizer.update(gradient, state.optimizer_state, scales)
    return weights, state_type(weights, optax.apply_updates(scales, updates), optimizer_state)

  return from_loss_weights(init, weigh)


@register("uncertainty", paper="Kendall, Gal, Cipolla 2018, Multi-Task Learning Using "
          "Uncertainty to Weigh Losses for Scene Geometry and Semantics, CVPR")
def uncertainty(num_tasks: int, *, lr: float = 1e-3, init_log_variance: float = 0.0,
                reduction: Reduction = "mean") -> Balancer:
  """Homoscedastic uncertainty weighting: minimise ``sum_i exp(-s_i) L_i + s_i`` over s too.

  ``g = mean_i exp(-s_i) g_i`` (jmtl's scale convention: T identical gradients g give g at
  s = 0; the paper sums, ``reduction="sum"``); then one Adam step (rate ``lr``) on ``s``
  with gradient ``1 - exp(-s_i) L_i``, so ``s_i`` tracks ``log L_i``. One form for every
  task (the paper's regression and classification variants differ by a factor 1/2 on one
  term); it is LibMTL's ``UW`` objective ``L / (2 e^s) + s / 2`` times 2 (same fixed point
  ``s_i = log L_i``), and starts at s = 0, so the weights start at 1 / T (LibMTL starts at s = -0.5).

  Args:
    num_tasks: T.
    lr: Adam learning rate of the log-variances.
    init_log_variance: initial ``s_i``.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper).
  """
  return _learned_scale_balancer(
      num_tasks, lr, init_log_variance,
      weight_of=lambda s: jnp.exp(-s),
      scale_gradient=lambda s, losses: 1.0 - jnp.exp(-s) * losses,
      state_type=UncertaintyState, scales_field="log_variances",
      reduction_factor=reduction_scale(reduction, num_tasks, "uncertainty"))


@register("imtl_l", paper="Liu et al. 2021, Towards Impartial Multi-task Learning, ICLR "
          "(IMTL-L, the loss-balancing part)")
def imtl_l(num_tasks: int, *, lr: float = 1e-3, reduction: Reduction = "mean") -> Balancer:
  """IMTL-L: minimise ``sum_i e^{s_i} L_i - s_i`` over s too, so every scaled loss tends to 1.

  ``g = mean_i e^{s_i} g_i`` (jmtl's scale convention: T identical gradients g give g at
  s = 0; the paper sums, ``reduction="sum"``); then one Adam step (rate ``lr``) on ``s``
  with gradient ``e^{s_i} L_i - 1`` (fixed point ``e^{s_i} L_i = 1``: scale-invariant losses).

  Args:
    num_tasks: T.
    lr: Adam learning rate of the log-scales (initialised to 0).
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper).
  """
  return _learned_scale_balancer(
      num_tasks, lr, 0.0,
      weight_of=jnp.exp,
      scale_gradient=lambda s, losses: jnp.exp(s) * losses - 1.0,
      state_type=IMTLLState, scales_field="log_scales",
      reduction_factor=reduction_scale(reduction, num_tasks, "imtl_l"))


# ---------------------------------------------------------------- dynamic weight average


class DWAState(NamedTuple):
  weights: jax.Array           # [T] weights of the last update; sum to 1 ("mean") or T
  window_sum: jax.Array        # [T] sum of present losses in the current window
  window_count: jax.Array      # [T] int32, present losses in the current window
  window_steps: jax.Array      # int32, updates in the current window
  last_average: jax.Array      # [T] mean loss of the last completed window
  previous_average: jax.Array  # [T] mean loss of the window before it
  completed_windows: jax.Array  # int32


@register("dwa", paper="Liu, Johns, Davison 2019, End-to-End Multi-Task Learning with "
          "Attention, CVPR")
def dwa(num_tasks: int, *, temperature: float = 2.0, window: int = 1,
        reduction: Reduction = "mean") -> Balancer:
  """Dynamic Weight Average: ``w = softmax(r / temperature)``, ``r_i = L_i(t-1) / L_i(t-2)``.

  The weights sum to 1 (jmtl's scale convention: T identical gradients g give g); the
  paper's ``T softmax`` is ``reduction="sum"``.

  ``L_i(t)`` is the mean loss over window t of ``window`` updates, and the weights stay
  fixed inside a window. The paper's windows are epochs (``window = steps per epoch``
  reproduces it, as LibMTL does); the default ``window=1`` uses the last two per-step
  losses. Equal weights (1/T, or ones for "sum") until two windows are complete. A task
  absent for a whole window keeps its previous average, hence ratio 1.

  Args:
    num_tasks: T.
    temperature: softmax temperature (2 in the paper).
    window: updates per loss average.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper).
  """
  total_weight = num_tasks * reduction_scale(reduction, num_tasks, "dwa")
  if window < 1:
    raise ValueError(f"dwa: window must be >= 1, got {window}")
  zeros = jnp.zeros((num_tasks,), jnp.float32)

  def init(params):
    del params
    return DWAState(weights=uniform_weights(num_tasks, total_weight / num_tasks),
                    window_sum=zeros,
                    window_count=jnp.zeros((num_tasks,), jnp.int32),
                    window_steps=jnp.zeros((), jnp.int32), last_average=zeros,
                    previous_average=zeros, completed_windows=jnp.zeros((), jnp.int32))

  def weigh(task_losses, state):
    task_losses = task_losses.astype(jnp.float32)
    known = ((state.completed_windows >= 2) & (state.last_average > 0)
             & (state.previous_average > 0))
    ratios = jnp.where(known, state.last_average / jnp.where(known, state.previous_average, 1.0),
                       1.0)
    weights = total_weight * jax.nn.softmax(ratios / temperature)

    # The current losses only enter the history: w(t) uses windows t-1 and t-2.
    present = present_tasks(task_losses)
    window_sum = state.window_sum + jnp.where(present, task_losses, 0.0)
    window_count = state.window_count + present.astype(jnp.int32)
    window_steps = state.window_steps + 1
    done = window_steps >= window
    average = jnp.where(window_count > 0, window_sum / jnp.maximum(window_count, 1),
                        state.last_average)
    new_state = DWAState(
        weights=weights,
        window_sum=jnp.where(done, 0.0, window_sum),
        window_count=jnp.where(done, 0, window_count),
        window_steps=jnp.where(done, 0, window_steps),
        last_average=jnp.where(done, average, state.last_average),
        previous_average=jnp.where(done, state.last_average, state.previous_average),
        completed_windows=state.completed_windows + done.astype(jnp.int32))
    return weights, new_state

  return from_loss_weights(init, weigh)


# ---------------------------------------------------------------- random loss weighting


class RLWState(NamedTuple):
  weights: jax.Array  # [T] weights drawn for the last update; sum to 1
  key: jax.Array      # PRNG key, split on every update


@register("rlw", paper="Lin et al. 2022, Reasonable Effectiveness of Random Weighting: "
          "A Litmus Test for Multi-Task Learning, TMLR")
def rlw(num_tasks: int, *, seed: int = 0) -> Balancer:
  """Random Loss Weighting: ``w = softmax(z)``, ``z ~ N(0, I_T)`` drawn afresh every update.

  Args:
    num_tasks: T.
    seed: seed of the PRNG key kept in the state.
  """
  def init(params):
    del params
    return RLWState(weights=uniform_weights(num_tasks),
                    key=jax.random.PRNGKey(seed))

  def weigh(task_losses, state):
    del task_losses
    key, draw_key = jax.random.split(state.key)
    weights = jax.nn.softmax(jax.random.normal(draw_key, (num_tasks,), jnp.float32))
    return weights, RLWState(weights=weights, key=key)

  return from_loss_weights(init, weigh)


# ---------------------------------------------------------------- geometric loss strategy


class GLSState(NamedTuple):
  weights: jax.Array  # [T] weights of the last update


@register("gls", paper="Chennupati et al. 2019, MultiNet++: Multi-Stream Feature Aggregation "
          "and Geometric Loss Strategy for Multi-Task Learning, CVPR Workshops")
def gls(num_tasks: int) -> Balancer:
  """Geometric Loss Strategy: minimise ``(prod_i L_i)^(1/T)``.

  As a weighting, ``w_i = d/dL_i (prod L)^(1/T) = (prod L)^(1/T) / (T L_i)`` (computed in
  log space), so ``sum_i w_i L_i`` equals the geometric mean and ``g`` is its gradient.
  Absent tasks (zero loss) are left out: the mean runs over the present tasks only
  (otherwise one missing task would zero every other task's weight).

  Args:
    num_tasks: T.
  """
  def init(params):
    del params
    return GLSState(weights=uniform_weights(num_tasks))

  def weigh(task_losses, state):
    del state
    task_losses = task_losses.astype(jnp.float32)
    present = present_tasks(task_losses)
    count = jnp.maximum(jnp.sum(present), 1)
    logs = masked_log(task_losses, present)
    log_geometric_mean = jnp.sum(jnp.where(present, logs, 0.0)) / count
    weights = jnp.where(present, jnp.exp(log_geometric_mean - logs) / count, 0.0)
    return weights, GLSState(weights=weights)

  return from_loss_weights(init, weigh)

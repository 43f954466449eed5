"""Adaptive loss-driven methods: STCH, FAMO (``"losses"``); DB-MTL, ExcessMTL (``"jacobian"``).

As in ``_loss_weighting``, a task loss of exactly 0 means "no labels this step" (and a zero
gradient): STCH and FAMO give such a task weight 0 instead of taking ``log 0`` and keep it
out of their statistics; DB-MTL and ExcessMTL just see its zero gradient (see each
docstring). Every output stays finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

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
from jmtl.balancers._base import weighted_sum
from jmtl.balancers._loss_weighting import masked_log
from jmtl.balancers._loss_weighting import present_tasks

PyTree = Any


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax over the entries where ``mask`` holds; 0 elsewhere (all 0 if none holds)."""
  peak = jnp.max(jnp.where(mask, logits, -jnp.inf))
  exps = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(peak), peak, 0.0)), 0.0)
  total = jnp.sum(exps)
  return jnp.where(total > 0, exps / jnp.where(total > 0, total, 1.0), 0.0)


def per_task_sum(tree: PyTree) -> jax.Array:
  """``[T]``: every leaf ``[T, ...]`` summed over all but the task axis, then over leaves."""
  return sum(jnp.sum(leaf.reshape(leaf.shape[0], -1), axis=1) for leaf in jax.tree.leaves(tree))


def _task_buffer(params: PyTree, num_tasks: int) -> PyTree:
  """A float32 zero pytree shaped like the per-task gradients ``[T, ...]``."""
  return jax.tree.map(lambda p: jnp.zeros((num_tasks,) + jnp.shape(p), jnp.float32), params)


def _per_task(scale: jax.Array, leaf: jax.Array) -> jax.Array:
  """``scale [T]`` shaped to broadcast against ``leaf [T, ...]``."""
  return scale.reshape((-1,) + (1,) * (leaf.ndim - 1))


# ---------------------------------------------------------------- smooth Tchebycheff


class STCHState(NamedTuple):
  weights: jax.Array     # [T] d(objective)/dL_i of the last update, / T for "mean"
  step: jax.Array        # int32, updates done
  loss_sum: jax.Array    # [T] sum of present losses over the nadir-averaging steps
  loss_count: jax.Array  # [T] int32, present losses in that sum
  ideal: jax.Array       # [T] running min of the normalised log losses (ideal_point only)


@register("stch", paper="Lin et al. 2024, Smooth Tchebycheff Scalarization for "
          "Multi-Objective Optimization, ICML")
def stch(num_tasks: int, *, mu: float = 1.0, warmup_steps: int = 400, nadir_steps: int = 100,
         ideal_point: bool = False, reduction: Reduction = "mean") -> Balancer:
  """Smooth Tchebycheff scalarisation ``T mu logsumexp(f_i / mu)``, as a weighting of the losses.

  Follows LibMTL's STCH (from the authors' STCH_MTL code): the objectives are log-normalised
  losses ``f_i = log(L_i / n_i)`` with the nadir ``n_i`` the mean loss over ``nadir_steps``
  updates after ``warmup_steps``; during both warm-up phases the objective is ``sum_i log
  L_i`` (weights ``1 / L_i``). Afterwards ``w_i = d/dL_i T mu logsumexp(f / mu) = T
  softmax(f / mu)_i / L_i``. LibMTL counts the phases in epochs (4 + 1): set the two step
  counts to your epoch length to match. With ``ideal_point`` the paper's ``f_i - z_i`` is
  used, ``z_i`` the running minimum of ``f_i`` since the warm-up (LibMTL uses z = 0).

  Every weight is divided by T (jmtl's scale convention: T identical gradients g with unit
  losses give g; the gradients are those of log losses, ``g_i / L_i``); ``reduction="sum"``
  keeps the paper's and LibMTL's scale.

  Args:
    num_tasks: T.
    mu: smoothing parameter (mu -> 0: the Tchebycheff max).
    warmup_steps: log-loss updates before nadir averaging starts.
    nadir_steps: log-loss updates whose mean loss is the nadir (0: no normalisation).
    ideal_point: subtract the running minimum of the objectives.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper, LibMTL).
  """
  scale = reduction_scale(reduction, num_tasks, "stch")
  if not mu > 0:
    raise ValueError(f"stch: mu must be > 0, got {mu}")
  if warmup_steps < 0 or nadir_steps < 0:
    raise ValueError(f"stch: step counts must be >= 0, got {warmup_steps}, {nadir_steps}")
  warm_steps = warmup_steps + nadir_steps

  def init(params):
    del params
    return STCHState(weights=uniform_weights(num_tasks, scale), step=jnp.zeros((), jnp.int32),
                     loss_sum=jnp.zeros((num_tasks,), jnp.float32),
                     loss_count=jnp.zeros((num_tasks,), jnp.int32),
                     ideal=jnp.full((num_tasks,), jnp.finfo(jnp.float32).max, jnp.float32))

  def weigh(task_losses, state):
    task_losses = task_losses.astype(jnp.float32)
    present = present_tasks(task_losses)
    warming = state.step < warm_steps
    averaging = present & warming & (state.step >= warmup_steps)
    loss_sum = state.loss_sum + jnp.where(averaging, task_losses, 0.0)
    loss_count = state.loss_count + averaging.astype(jnp.int32)
    log_loss_weights = jnp.where(present, 1.0 / (task_losses + EPS), 0.0)

    nadir = jnp.where(loss_count > 0, loss_sum / jnp.maximum(loss_count, 1), 1.0)
    objectives = masked_log(task_losses / nadir, present)
    ideal = state.ideal
    if ideal_point:
      ideal = jnp.where(present & ~warming, jnp.minimum(ideal, objectives), ideal)
      objectives = objectives - jnp.where(present, ideal, 0.0)
    # d/dL log(L / n + EPS) = 1 / (L + EPS n).
    stch_weights = jnp.where(
        present, num_tasks * masked_softmax(objectives / mu, present)
        / (task_losses + EPS * nadir), 0.0)

    weights = scale * jnp.where(warming, log_loss_weights, stch_weights)
    return weights, STCHState(weights=weights, step=state.step + 1, loss_sum=loss_sum,
                              loss_count=loss_count, ideal=ideal)

  return from_loss_weights(init, weigh)


# ---------------------------------------------------------------- FAMO


class FAMOState(NamedTuple):
  weights: jax.Array          # [T] weights of the last update; sum to 1
  logits: jax.Array           # [T] task logits xi (z = softmax(xi))
  optimizer_state: optax.OptState
  previous_losses: jax.Array  # [T] each task's loss at its last update, for the next delta
  seen: jax.Array             # [T] bool, whether the task has a previous loss
  min_losses: jax.Array       # [T] lower bounds L*_i of the losses (a constant hparam)


@register("famo", paper="Liu et al. 2023, FAMO: Fast Adaptive Multitask Optimization, NeurIPS")
def famo(num_tasks: int, *, w_lr: float = 0.025, gamma: float = 1e-3,
         min_losses: Sequence[float] | None = None) -> Balancer:
  """FAMO: ``g = grad sum_i z_i log D_i / c``: ``w_i = z_i / (c D_i)``, ``c = sum_j z_j / D_j``.

  ``D_i = L_i - L*_i`` with the loss lower bounds ``L*`` (``min_losses``, 0 by default as
  for cross-entropy; the authors' toy passes ``(-21 * 0.1, -21)``), ``z = softmax(xi)``.
  The logits move to favour tasks whose log loss fell least: Adam (rate ``w_lr``, L2
  weight decay ``gamma``, as ``torch.optim.Adam(weight_decay=gamma)`` in the authors'
  code) on the gradient ``J_softmax^T delta``, ``delta_i = log D_i(t-1) - log D_i(t)``. The
  paper evaluates ``L(t)`` on the same batch after the parameter step; with a single
  update per step this is the delayed form: each update first moves the logits with the
  previous update's losses vs. this batch's, then weighs. Defaults follow LibMTL
  (``w_lr=0.025``, ``gamma=1e-3``; the authors' ``famo.py`` uses ``gamma=0.01``, their toy
  0). Gradient clipping (their ``max_norm``) is the train step's job. Absent tasks are
  left out by the registry (`with_presence`); their previous losses are kept.

  Args:
    num_tasks: T.
    w_lr: Adam learning rate of the logits.
    gamma: L2 weight decay of the logits.
    min_losses: T lower bounds of the losses (None: zeros).
  """
  optimizer = optax.chain(optax.add_decayed_weights(gamma), optax.adam(w_lr))
  bounds = [0.0] * num_tasks if min_losses is None else [float(v) for v in min_losses]
  if len(bounds) != num_tasks:
    raise ValueError(f"famo: min_losses has {len(bounds)} values for num_tasks={num_tasks}")

  def init(params):
    del params
    logits = jnp.zeros((num_tasks,), jnp.float32)
    # The bounds live in the state so that a subset of tasks takes its own bounds along.
    return FAMOState(weights=uniform_weights(num_tasks), logits=logits,
                     optimizer_state=optimizer.init(logits),
                     previous_losses=jnp.zeros((num_tasks,), jnp.float32),
                     seen=jnp.zeros((num_tasks,), bool),
                     min_losses=jnp.asarray(bounds, jnp.float32))

  def weigh(task_losses, state):
    gaps = jnp.maximum(task_losses.astype(jnp.float32) - state.min_losses, 0.0) + EPS
    previous_gaps = jnp.maximum(state.previous_losses - state.min_losses, 0.0) + EPS
    # The delayed logit step; a task without a previous loss has no change to report.
    delta = jnp.where(state.seen, jnp.log(previous_gaps) - jnp.log(gaps), 0.0)
    z = jax.nn.softmax(state.logits)
    logit_gradient = z * (delta - jnp.dot(z, delta))  # J_softmax^T delta
    updates, stepped_optimizer = optimizer.update(logit_gradient, state.optimizer_state,
                                                  state.logits)
    has_previous = jnp.any(state.seen)
    logits, optimizer_state = jax.tree.map(
        lambda new, old: jnp.where(has_previous, new, old),
        (optax.apply_updates(state.logits, updates), stepped_optimizer),
        (state.logits, state.optimizer_state))

    scaled = jax.nn.softmax(logits) / gaps
    weights = scaled / jnp.sum(scaled)
    return weights, state._replace(weights=weights, logits=logits,
                                   optimizer_state=optimizer_state,
                                   previous_losses=task_losses.astype(jnp.float32),
                                   seen=jnp.ones((num_tasks,), bool))

  return from_loss_weights(init, weigh)


# ---------------------------------------------------------------- DB-MTL


class DBMTLState(NamedTuple):
  weights: jax.Array         # [T] alpha_i / T ("mean"), the scales of the buffered gradients
  gradient_buffer: PyTree    # [T, ...] per leaf: EMA of the gradients of log L_i, float32
  step: jax.Array            # int32, updates done


@register("db_mtl", paper="Lin et al. 2023, Dual-Balancing for Multi-Task Learning, "
          "arXiv:2308.12029", param_shaped_state=True)
def db_mtl(num_tasks: int, *, beta: float = 0.9, beta_sigma: float = 0.0,
           reduction: Reduction = "mean") -> Balancer:
  """DB-MTL: log losses, then equal gradient magnitudes: ``g = mean_i alpha_i m_i``.

  ``m_i <- (1 - b_t) grad log L_i + b_t m_i`` with ``b_t = beta / t^beta_sigma`` (the loss
  balancing; ``grad log L_i = g_i / L_i``), and ``alpha_i = max_j ||m_j|| / ||m_i||`` (the
  gradient balancing). As in LibMTL (the authors' code) the buffer starts at 0 without bias
  correction, and an absent task's zero gradient enters its EMA. ``"jacobian"``: the
  buffer needs the per-task gradients. ``state.weights`` holds alpha (the weights of the
  buffered log-loss gradients, not of the raw ``g_i``). The mean is jmtl's scale convention
  (T identical gradients g with unit losses give g once the buffer has filled); the paper
  and LibMTL sum, ``reduction="sum"``.

  Args:
    num_tasks: T.
    beta: EMA rate of the gradient buffer.
    beta_sigma: decay exponent of the EMA rate.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper, LibMTL).
  """
  scale = reduction_scale(reduction, num_tasks, "db_mtl")

  def init(params):
    return DBMTLState(weights=uniform_weights(num_tasks, scale),
                      gradient_buffer=_task_buffer(params, num_tasks),
                      step=jnp.zeros((), jnp.int32))

  def update(task_grads, state, params=None, *, task_losses):
    del params
    task_losses = task_losses.astype(jnp.float32)
    step = state.step + 1
    rate = beta / step.astype(jnp.float32) ** beta_sigma
    inverse_losses = jnp.where(present_tasks(task_losses), 1.0 / (task_losses + EPS), 0.0)

    def mix(buffer, grad):
      log_grad = grad.astype(jnp.float32) * _per_task(inverse_losses, grad)
      return log_grad + rate * (buffer - log_grad)

    buffer = jax.tree.map(mix, state.gradient_buffer, task_grads)
    norms = jnp.sqrt(per_task_sum(jax.tree.map(jnp.square, buffer)))
    # Relative epsilon (LibMTL: + 1e-8): the balance must not depend on the gradients scale.
    # An all-zero buffer (e.g. no positive loss yet) would give 0/0: equal alphas instead.
    largest = jnp.max(norms)
    denominators = norms + EPS * largest
    alphas = scale * jnp.where(denominators > 0, largest / jnp.where(denominators > 0,
                                                                     denominators, 1.0), 1.0)
    grads = jax.tree.map(lambda out, grad: out.astype(grad.dtype),
                         weighted_sum(alphas, buffer), task_grads)
    return grads, DBMTLState(weights=alphas, gradient_buffer=buffer, step=step)

  return Balancer(init=init, update=update, needs="jacobian")


# ---------------------------------------------------------------- ExcessMTL


class ExcessMTLState(NamedTuple):
  weights: jax.Array              # [T] weights of the last update; sum to 1 ("mean") or T
  log_weights: jax.Array          # [T] cumulative log of the multiplicative updates
  squared_gradient_sum: PyTree    # [T, ...] per leaf: AdaGrad accumulator, float32
  initial_excess: jax.Array       # [T] first positive excess-risk estimate (0: none yet)


@register("excess_mtl", paper="He et al. 2024, Robust Multi-Task Learning with Excess Risks, ICML",
          param_shaped_state=True)
def excess_mtl(num_tasks: int, *, robust_step_size: float = 1e-2,
               reduction: Reduction = "mean") -> Balancer:
  """ExcessMTL: multiplicative weights on estimated excess risks, ``g = sum_i w_i g_i``.

  The excess risk of task i is estimated with a diagonal (AdaGrad) Hessian,
  ``e_i = g_i^T diag(1 / sqrt(H_i + 1e-7)) g_i`` with ``H_i`` the running sum of ``g_i^2``;
  then ``w_i <- w_i exp(robust_step_size e_i / e_i(0))`` renormalised to sum to 1 (kept in
  log space here; jmtl's scale convention: T identical gradients g give g; the paper's
  weights sum to T, ``reduction="sum"``). As in the authors' code (and LibMTL) ``e_i(0)`` is
  the first estimate; the first update therefore leaves the weights equal. A task whose
  estimate is still 0 (absent so far) takes its ``e_i(0)`` from its first positive one and
  contributes 0 until then (the authors' code divides by 0). ``"jacobian"``: ``H_i`` needs
  the per-task gradients.

  Args:
    num_tasks: T.
    robust_step_size: step size of the multiplicative weight update.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper, LibMTL).
  """
  total_weight = num_tasks * reduction_scale(reduction, num_tasks, "excess_mtl")

  def init(params):
    return ExcessMTLState(weights=uniform_weights(num_tasks, total_weight / num_tasks),
                          log_weights=jnp.zeros((num_tasks,), jnp.float32),
                          squared_gradient_sum=_task_buffer(params, num_tasks),
                          initial_excess=jnp.zeros((num_tasks,), jnp.float32))

  def update(task_grads, state, params=None, *, task_losses=None):
    del params, task_losses
    squared_sum = jax.tree.map(lambda total, grad: total + jnp.square(grad.astype(jnp.float32)),
                               state.squared_gradient_sum, task_grads)
    excess = per_task_sum(jax.tree.map(
        lambda total, grad: jnp.square(grad.astype(jnp.float32)) / jnp.sqrt(total + 1e-7),
        squared_sum, task_grads))
    initial = jnp.where(state.initial_excess > 0, state.initial_excess, excess)
    known = initial > 0
    ratios = jnp.where(known, excess / jnp.where(known, initial, 1.0), 0.0)
    log_weights = state.log_weights + robust_step_size * ratios
    log_weights = log_weights - jnp.max(log_weights)  # a no-op after normalising; stays bounded
    weights = total_weight * jax.nn.softmax(log_weights)
    return weighted_sum(weights, task_grads), ExcessMTLState(
        weights=weights, log_weights=log_weights, squared_gradient_sum=squared_sum,
        initial_excess=initial)

  return Balancer(init=init, update=update, needs="jacobian")

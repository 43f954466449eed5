"""Gradient surgery and robust aggregation: GradVac, GradDrop, ConFIG, MoCo, SDMGrad, Krum,
trimmed mean.

Every method here edits or selects per-task gradients. Where the result is a linear
combination of the task gradients with coefficients computable from inner products alone
(GradVac on the whole model, ConFIG, SDMGrad, Krum), the method is a ``"gram"`` balancer:
the train step computes ``G = J J^T`` and does one weighted backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jmtl.balancers._base import EPS
from jmtl.balancers._base import Balancer
from jmtl.balancers._base import PyTree
from jmtl.balancers._base import Reduction
from jmtl.balancers._base import reduction_scale
from jmtl.balancers._base import from_gram_weights
from jmtl.balancers._base import gram_matrix
from jmtl.balancers._base import num_tasks_of
from jmtl.balancers._registry import register
from jmtl.balancers._base import uniform_weights
from jmtl.balancers._base import weighted_sum
from jmtl.balancers._solvers import project_to_simplex


def _check_task_axis(task_grads, num_tasks: int, method: str) -> None:
  found = num_tasks_of(task_grads)
  if found != num_tasks:
    raise ValueError(f"{method} was built for {num_tasks} tasks, got gradients for {found}")


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator`` where the denominator is positive, else 0."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _scale_rows(factors: jax.Array, task_grads):
  """Scales task i's gradient by ``factors[i]``, keeping the task axis."""
  return jax.tree.map(
      lambda g: g * factors.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), task_grads)


# ---------------------------------------------------------------- GradVac


class GradVacState(NamedTuple):
  targets: jax.Array  # [groups, T, T] EMA targets phi_hat_ij of each parameter group
  key: jax.Array
  weights: jax.Array  # [T] sum_i of the coefficients of g_i' (mean over groups for "leaf")


def _task_orders(step_key: jax.Array, num_tasks: int) -> jax.Array:
  """``[T, T]``: row i is the random order in which task i visits the others (i skipped)."""
  keys = jax.random.split(step_key, num_tasks)
  return jax.vmap(lambda key: jax.random.permutation(key, num_tasks))(keys)


def _vaccinate(gram, targets, orders, beta):
  """GradVac on one parameter group, in Gram coordinates.

  Returns ``C`` [T, T] with ``g_i' = sum_k C[i, k] g_k`` and the updated targets.
  """
  num_tasks = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  eye = jnp.eye(num_tasks, dtype=gram.dtype)

  def one_task(task, target_row, order):
    def visit(carry, other):
      coeffs, new_row = carry
      norm_i = jnp.sqrt(jnp.maximum(coeffs @ gram @ coeffs, 0.0))
      norm_j = norms[other]
      defined = (other != task) & (norm_i * norm_j > 0)
      phi = jnp.clip(_safe_divide(coeffs @ gram[:, other], norm_i * norm_j), -1.0, 1.0)
      target = target_row[other]
      # The target cosine can reach +-1 only in the limit; the floor keeps the step finite.
      sin_target = jnp.sqrt(jnp.maximum(1.0 - target**2, EPS))
      step = _safe_divide(
          norm_i * (target * jnp.sqrt(1.0 - phi**2) - phi * sin_target), norm_j * sin_target)
      coeffs = coeffs + jnp.where(defined & (phi < target), step, 0.0) * eye[other]
      new_row = new_row.at[other].set(
          jnp.where(defined, (1.0 - beta) * target + beta * phi, target))
      return (coeffs, new_row), None

    (coeffs, new_row), _ = lax.scan(visit, (eye[task], target_row), order)
    return coeffs, new_row

  return jax.vmap(one_task)(jnp.arange(num_tasks), targets, orders)


@register("gradvac", paper="Wang et al. 2021, Gradient Vaccine: Investigating and Improving "
          "Multi-task Optimization in Massively Multilingual Models, ICLR")
def gradvac(num_tasks: int, *, beta: float = 0.01, granularity: str = "whole",
            reduction: Reduction = "mean", seed: int = 0) -> Balancer:
  """Gradient Vaccine: pulls each g_i towards an adaptive target cosine with every g_j.

  For each task i and each other task j in random order, with
  ``phi = cos(g_i', g_j)`` and the EMA target ``phi_hat_ij``: if ``phi < phi_hat_ij``,
  ``g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
  / (|g_j| sqrt(1 - phi_hat^2)) g_j``; then ``phi_hat_ij = (1 - beta) phi_hat_ij + beta phi``
  (Algorithm 1: the EMA moves every step; LibMTL moves it only on conflict). The result is
  ``mean_i g_i'`` (jmtl's scale convention: T identical gradients g give g; the paper sums,
  ``reduction="sum"``). Targets start at 0, so the first step is PCGrad.

  ``granularity="whole"`` treats the model as one group and is a ``"gram"`` method (each
  ``g_i'`` is a combination of the ``g_k`` with coefficients from inner products).
  ``granularity="leaf"`` runs the algorithm per pytree leaf (the paper's per-layer groups)
  with its own targets; it needs the Jacobian. Both groups share one random order per step.

  Args:
    num_tasks: T.
    beta: EMA rate of the targets (1e-2 as in the paper; LibMTL's default is 0.5).
    granularity: ``"whole"`` or ``"leaf"``.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper).
    seed: seeds the random visiting orders.
  """
  if granularity not in ("whole", "leaf"):
    raise ValueError(f"gradvac granularity must be 'whole' or 'leaf', got {granularity!r}")
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"gradvac beta must be in [0, 1], got {beta}")
  scale = reduction_scale(reduction, num_tasks, "gradvac")

  def init(params):
    groups = 1 if granularity == "whole" else len(jax.tree.leaves(params))
    return GradVacState(
        targets=jnp.zeros((groups, num_tasks, num_tasks), jnp.float32),
        key=jax.random.PRNGKey(seed),
        weights=uniform_weights(num_tasks, scale))

  def next_orders(state):
    key, step_key = jax.random.split(state.key)
    return key, _task_orders(step_key, num_tasks)

  def weigh(gram, state, *, task_losses=None):
    del task_losses
    key, orders = next_orders(state)
    coeffs, targets = _vaccinate(gram.astype(jnp.float32), state.targets[0], orders, beta)
    weights = scale * coeffs.sum(axis=0)
    return weights, GradVacState(targets=targets[None], key=key, weights=weights)

  if granularity == "whole":
    return from_gram_weights(init, weigh)

  def update(task_grads, state, params=None, *, task_losses=None):
    del params, task_losses
    _check_task_axis(task_grads, num_tasks, "gradvac")
    leaves, treedef = jax.tree.flatten(task_grads)
    key, orders = next_orders(state)
    grams = jnp.stack([gram_matrix(leaf) for leaf in leaves])
    coeffs, targets = jax.vmap(_vaccinate, in_axes=(0, 0, None, None))(
        grams, state.targets, orders, beta)
    leaf_weights = scale * coeffs.sum(axis=1)  # [groups, T]
    combined = [weighted_sum(w, leaf) for w, leaf in zip(leaf_weights, leaves)]
    new_state = GradVacState(targets=targets, key=key, weights=leaf_weights.mean(axis=0))
    return jax.tree.unflatten(treedef, combined), new_state

  return Balancer(init=init, update=update, needs="jacobian")


# ---------------------------------------------------------------- GradDrop


class GradDropState(NamedTuple):
  key: jax.Array
  weights: jax.Array  # [T] nominal 1/T ("mean") or ones ("sum") on the masked gradients


@register("graddrop", paper="Chen et al. 2020, Just Pick a Sign: Optimizing Deep Multitask "
          "Models with Gradient Sign Dropout, NeurIPS", handles_presence=True)
def graddrop(num_tasks: int, *, leak: float | Sequence[float] = 0.0,
             reduction: Reduction = "mean", seed: int = 0) -> Balancer:
  """Gradient sign dropout: per coordinate, keep one sign with probability its purity.

  ``P = 0.5 (1 + sum_i g_i / sum_i |g_i|)``, ``U ~ Uniform(0, 1)`` per coordinate,
  ``M_i = [P > U][g_i > 0] + [P < U][g_i < 0]``, result ``sum_i (l_i + (1 - l_i) M_i) g_i``
  with leak ``l_i`` (Algorithm 1), divided by the number of present tasks for
  ``reduction="mean"`` (jmtl's scale convention: T identical gradients g give g; the paper
  sums, ``reduction="sum"``). Applied to the shared parameters' gradients, as torchjd
  does, rather than to activations with the batch-sign trick of the paper. Each step draws
  ``U`` for leaf k from ``split(step_key, num_leaves)[k]``, with
  ``_, step_key = split(state.key)``.

  An absent task's gradient is replaced by zeros, which is exact: a zero row changes
  neither the purity P nor the sum (the per-task ``leak`` cannot be rebuilt for a subset).

  Args:
    num_tasks: T.
    leak: l_i in [0, 1], one for all tasks or one per task (0: pure GradDrop).
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper).
    seed: seeds the uniform draws.
  """
  leak_values = np.broadcast_to(np.asarray(leak, np.float32), (num_tasks,))
  if np.any((leak_values < 0) | (leak_values > 1)):
    raise ValueError(f"graddrop leak must be in [0, 1], got {leak}")
  leak = jnp.asarray(leak_values)
  all_present_scale = reduction_scale(reduction, num_tasks, "graddrop")

  def init(params):
    del params
    return GradDropState(key=jax.random.PRNGKey(seed),
                         weights=uniform_weights(num_tasks, all_present_scale))

  def drop(leaf, uniform, scale):
    grads = leaf.astype(jnp.float32)
    purity = 0.5 * (1.0 + _safe_divide(grads.sum(axis=0), jnp.abs(grads).sum(axis=0)))
    keep = ((purity > uniform) & (grads > 0)) | ((purity < uniform) & (grads < 0))
    task_leak = leak.reshape((num_tasks,) + (1,) * (grads.ndim - 1))
    return (scale * jnp.sum((task_leak + (1.0 - task_leak) * keep) * grads, axis=0)
            ).astype(leaf.dtype)

  def update(task_grads, state, params=None, *, task_losses=None, present=None):
    del params, task_losses
    _check_task_axis(task_grads, num_tasks, "graddrop")
    scale = all_present_scale
    if present is not None:
      task_grads = _scale_rows(jnp.asarray(present, jnp.float32), task_grads)
      if reduction == "mean":  # the mean over the present tasks
        scale = 1.0 / jnp.maximum(jnp.sum(jnp.asarray(present, jnp.float32)), 1.0)
    leaves, treedef = jax.tree.flatten(task_grads)
    key, step_key = jax.random.split(state.key)
    leaf_keys = jax.random.split(step_key, len(leaves))
    out = [drop(leaf, jax.random.uniform(k, leaf.shape[1:]), scale)
           for leaf, k in zip(leaves, leaf_keys)]
    if present is None:
      return jax.tree.unflatten(treedef, out), state._replace(key=key)
    # No task present: nothing was drawn for, so the state stays as it was.
    key = jnp.where(jnp.any(present), key, state.key)
    weights = scale * jnp.asarray(present, jnp.float32)
    return jax.tree.unflatten(treedef, out), state._replace(key=key, weights=weights)

  return Balancer(init=init, update=update, needs="jacobian")


# ---------------------------------------------------------------- ConFIG


class ConFIGState(NamedTuple):
  weights: jax.Array  # [T]


@register("config", paper="Liu et al. 2024, ConFIG: Towards Conflict-free Training of "
          "Physics Informed Neural Networks, arXiv:2408.11104")
def config(num_tasks: int, *, reduction: Reduction = "mean") -> Balancer:
  """ConFIG: the direction with equal cosine to every task, with the mean projected length.

  ``u_i = g_i / |g_i|``, ``y = U^+ 1``, ``g_u = y / |y|``, result ``(mean_i g_i . g_u) g_u``
  (jmtl's scale convention: T identical gradients g give g; Eq. 2 sums the projections,
  ``reduction="sum"``). With ``C = U U^T`` the cosine matrix, ``y = U^T C^+ 1``, so the result is a
  combination of the g_i computable from G: a ``"gram"`` method.

  Args:
    num_tasks: T.
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper).
  """
  length_scale = reduction_scale(reduction, num_tasks, "config")

  def init(params):
    del params
    return ConFIGState(weights=uniform_weights(num_tasks, length_scale))

  def weigh(gram, state, *, task_losses=None):
    del task_losses, state
    gram = gram.astype(jnp.float32)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    inverse_norms = _safe_divide(1.0, norms)  # zero rows get a zero unit vector, as in ConFIG
    cosines = gram * inverse_norms[:, None] * inverse_norms[None, :]
    unit_coeffs = jnp.linalg.pinv(cosines, hermitian=True) @ jnp.ones((num_tasks,), jnp.float32)
    cos_times = cosines @ unit_coeffs  # U y: the cosines of y with each u_i, times |y|
    # |y|^2 = b^T C b and sum_i g_i . y = sum_i |g_i| (C b)_i, all in unit coordinates.
    scale = _safe_divide(norms @ cos_times, unit_coeffs @ cos_times)
    weights = length_scale * unit_coeffs * inverse_norms * scale
    return weights, ConFIGState(weights=weights)

  return from_gram_weights(init, weigh)


# ---------------------------------------------------------------- MoCo


class MoCoState(NamedTuple):
  tracked_grads: PyTree  # [T, ...params]: y_i
  count: jax.Array
  lambdas: jax.Array  # [T] lambda on the simplex, the iterate of the next update
  weights: jax.Array  # [T] lambda applied by the last update: the output is sum_i lambda_i y_i


@register("moco", paper="Fernando et al. 2023, Mitigating Gradient Bias in Multi-objective "
          "Learning: A Provably Convergent Approach, ICLR", param_shaped_state=True)
def moco(num_tasks: int, *, beta: float = 0.5, beta_decay: float = 0.5, gamma: float = 0.1,
         gamma_decay: float = 0.5, rho: float = 0.0, normalize_by_loss: bool = False) -> Balancer:
  """MoCo: tracked per-task gradients y and simplex weights lambda.

  At step k (from 1), ``beta_k = beta / k^beta_decay``, ``gamma_k = gamma / k^gamma_decay``;
  ``y_i <- y_i - beta_k (y_i - g_i)``; ``lambda <- Proj_simplex(lambda - gamma_k (Y Y^T +
  rho I) lambda)``; result ``Y^T lambda`` (Algorithm 1; y starts at 0, lambda at 1/T; the
  optional projection of y_i onto a ball is left out). Step-size defaults and
  ``normalize_by_loss`` (``g_i <- L_i g_i / |g_i|`` first) follow LibMTL's version of the
  authors' code, which swaps the simplex projection for a softmax; this keeps the paper's.

  Args:
    num_tasks: T.
    beta, beta_decay: tracking rate of y and its polynomial decay.
    gamma, gamma_decay: step size of lambda and its polynomial decay.
    rho: l2 regularisation of the lambda subproblem.
    normalize_by_loss: rescale each gradient to its loss before tracking.
  """

  def init(params):
    tracked = jax.tree.map(lambda p: jnp.zeros((num_tasks, *jnp.shape(p)), jnp.float32), params)
    return MoCoState(tracked_grads=tracked, count=jnp.zeros((), jnp.int32),
                     lambdas=uniform_weights(num_tasks), weights=uniform_weights(num_tasks))

  def update(task_grads, state, params=None, *, task_losses=None):
    del params
    _check_task_axis(task_grads, num_tasks, "moco")
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), task_grads)
    if normalize_by_loss:
      if task_losses is None:
        raise ValueError("moco with normalize_by_loss needs task_losses")
      norms = jnp.sqrt(jnp.maximum(jnp.diag(gram_matrix(grads)), 0.0))
      factors = _safe_divide(jnp.asarray(task_losses, jnp.float32), norms)
      grads = _scale_rows(factors, grads)
    count = state.count + 1
    step = count.astype(jnp.float32)
    beta_k = beta / step**beta_decay
    gamma_k = gamma / step**gamma_decay
    tracked = jax.tree.map(lambda y, g: y - beta_k * (y - g), state.tracked_grads, grads)
    curvature = gram_matrix(tracked) + rho * jnp.eye(num_tasks, dtype=jnp.float32)
    weights = project_to_simplex(state.lambdas - gamma_k * curvature @ state.lambdas)
    combined = jax.tree.map(
        lambda y, g: jnp.tensordot(weights, y, axes=1).astype(g.dtype), tracked, task_grads)
    return combined, MoCoState(tracked_grads=tracked, count=count, lambdas=weights,
                               weights=weights)

  return Balancer(init=init, update=update, needs="jacobian")


# ---------------------------------------------------------------- SDMGrad


class SDMGradState(NamedTuple):
  simplex_weights: jax.Array  # [T] w, warm-started across steps
  weights: jax.Array  # [T] (w + lam / T) / (1 + lam)


@register("sdmgrad", paper="Xiao et al. 2023, Direction-oriented Multi-objective Learning: "
          "Simple and Provable Stochastic Algorithms, NeurIPS")
def sdmgrad(num_tasks: int, *, lam: float = 0.3, num_iterations: int = 20,
            step_size: float = 5.0, momentum: float = 0.5) -> Balancer:
  """SDMGrad: min-norm weights regularised towards the mean gradient g0.

  With ``G`` scaled by the squared mean gradient norm, ``num_iterations`` projected heavy-ball
  steps on the simplex: ``v <- momentum v + G w + lam G 1/T``, ``w <- Proj(w - step_size v)``;
  result ``(J^T w + lam g0) / (1 + lam)``. The paper's double sampling uses two independent
  batches for the inner products and a third for the output; with one batch this is the
  same-batch form (as LibMTL's implementation with all three batches equal). w is
  warm-started from the previous step, the momentum restarts each step (LibMTL's defaults).

  Args:
    num_tasks: T.
    lam: lambda, the pull towards the average direction g0.
    num_iterations: inner projected-gradient steps.
    step_size, momentum: the inner SGD's learning rate and momentum.
  """
  if lam < 0:
    raise ValueError(f"sdmgrad lam must be non-negative, got {lam}")

  def init(params):
    del params
    uniform = uniform_weights(num_tasks)
    return SDMGradState(simplex_weights=uniform, weights=uniform)

  def weigh(gram, state, *, task_losses=None):
    del task_losses
    gram = gram.astype(jnp.float32)
    scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)))**2
    # Dividing by the scale only where it is positive keeps tiny gradients scale-invariant.
    scaled = gram / jnp.where(scale > 0, scale, 1.0)
    pull = lam * scaled.mean(axis=1)

    def inner_step(_, carry):
      w, velocity = carry
      velocity = momentum * velocity + scaled @ w + pull
      return project_to_simplex(w - step_size * velocity), velocity

    w, _ = lax.fori_loop(0, num_iterations, inner_step,
                         (state.simplex_weights, jnp.zeros_like(state.simplex_weights)))
    weights = (w + lam / num_tasks) / (1.0 + lam)
    return weights, SDMGradState(simplex_weights=w, weights=weights)

  return from_gram_weights(init, weigh)


# ---------------------------------------------------------------- Krum


class KrumState(NamedTuple):
  weights: jax.Array  # [T] 1/m on the selected tasks


@register("krum", paper="Blanchard et al. 2017, Machine Learning with Adversaries: Byzantine "
          "Tolerant Gradient Descent, NeurIPS")
def krum(num_tasks: int, *, n_byzantine: int = 0, n_selected: int = 1) -> Balancer:
  """(Multi-)Krum: the mean of the m gradients with the lowest Krum scores.

  ``score(i) = sum of |g_i - g_j|^2`` over the ``T - f - 2`` nearest other gradients (squared
  distances, as in the paper; torchjd sums unsquared ones). Distances come from G, so this is
  a ``"gram"`` method. Ties go to the lower task index.

  Args:
    num_tasks: T, at least ``n_byzantine + 3``.
    n_byzantine: f, the number of gradients that may be adversarial.
    n_selected: m, the number averaged (1: Krum; more: Multi-Krum).
  """
  if n_byzantine < 0:
    raise ValueError(f"krum n_byzantine must be >= 0, got {n_byzantine}")
  if num_tasks < n_byzantine + 3:
    raise ValueError(f"krum needs num_tasks >= n_byzantine + 3 = {n_byzantine + 3}, "
                     f"got num_tasks={num_tasks}")
  if not 1 <= n_selected <= num_tasks:
    raise ValueError(f"krum n_selected must be in [1, num_tasks={num_tasks}], got {n_selected}")
  n_neighbours = num_tasks - n_byzantine - 2

  def init(params):
    del params
    return KrumState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del task_losses, state
    gram = gram.astype(jnp.float32)
    squared_norms = jnp.diag(gram)
    distances = jnp.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram, 0.0)
    distances = jnp.where(jnp.eye(num_tasks, dtype=bool), jnp.inf, distances)
    scores = jnp.sort(distances, axis=1)[:, :n_neighbours].sum(axis=1)
    _, selected = lax.top_k(-scores, n_selected)
    weights = jnp.zeros((num_tasks,), jnp.float32).at[selected].add(1.0 / n_selected)
    return weights, KrumState(weights=weights)

  return from_gram_weights(init, weigh)


# ---------------------------------------------------------------- trimmed mean


class TrimmedMeanState(NamedTuple):
  weights: jax.Array  # [T] nominal 1/T: the output is a coordinate-wise statistic


@register("trimmed_mean", paper="Yin et al. 2018, Byzantine-Robust Distributed Learning: "
          "Towards Optimal Statistical Rates, ICML")
def trimmed_mean(num_tasks: int, *, trim_number: int = 1) -> Balancer:
  """Coordinate-wise trimmed mean: drop the ``trim_number`` largest and smallest, average.

  Args:
    num_tasks: T, more than ``2 * trim_number``.
    trim_number: values removed from each end of every coordinate.
  """
  if trim_number < 0:
    raise ValueError(f"trimmed_mean trim_number must be >= 0, got {trim_number}")
  if 2 * trim_number >= num_tasks:
    raise ValueError(f"trimmed_mean needs 2 * trim_number < num_tasks, got trim_number="
                     f"{trim_number} with num_tasks={num_tasks}")

  def init(params):
    del params
    return TrimmedMeanState(weights=uniform_weights(num_tasks))

  def trim(leaf):
    ordered = jnp.sort(leaf.astype(jnp.float32), axis=0)
    return ordered[trim_number:num_tasks - trim_number].mean(axis=0).astype(leaf.dtype)

  def update(task_grads, state, params=None, *, task_losses=None):
    del params, task_losses
    _check_task_axis(task_grads, num_tasks, "trimmed_mean")
    return jax.tree.map(trim, task_grads), state

  return Balancer(init=init, update=update, needs="jacobian")

"""Min-norm and dual-cone projection methods: MGDA, UPGrad and DualProj.

All three are ``"gram"`` methods: the result is ``sum_i w_i g_i`` with weights from a small
QP on ``G = J J^T`` (T x T), so the train step computes G and does one weighted backward.
The QPs are solved on device by `jmtl.balancers._solvers` with fixed iteration budgets, on
the trace-normalised Gram matrix (every method here ignores a global rescaling of the
gradients, so this only helps float32).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jmtl.balancers import _solvers
from jmtl.balancers._base import Balancer
from jmtl.balancers._base import from_gram_weights
from jmtl.balancers._base import uniform_weights
from jmtl.balancers._registry import register

_JACOBIAN_DESCENT = "Quinton & Rey 2024, Jacobian Descent for Multi-Objective Optimization, arXiv"
_NORMALIZATIONS = ("none", "l2", "loss", "loss+")
_SOLVERS = ("frank_wolfe", "exact")


class MGDAState(NamedTuple):
  weights: jax.Array  # [T], the min-norm weights of the last update (on the simplex)


class UPGradState(NamedTuple):
  weights: jax.Array  # [T], weights of the last update: sum over i of the projection of e_i/T


class DualProjState(NamedTuple):
  weights: jax.Array  # [T], weights of the last update: the projection of the mean's 1/T


def _gradient_normalizers(gram, task_losses, normalization):
  """Sener & Koltun's ``gradient_normalizers``: one divisor per task gradient."""
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  if normalization == "none":
    return jnp.ones_like(norms)
  if task_losses is None:
    raise ValueError(f"mgda normalization={normalization!r} needs task_losses")
  losses = jnp.abs(jnp.asarray(task_losses, jnp.float32))
  if normalization == "l2":
    return norms
  if normalization == "loss":
    return losses
  return losses * norms  # "loss+"


@register("mgda", paper="Sener & Koltun 2018, Multi-Task Learning as Multi-Objective "
                        "Optimization, NeurIPS")
def mgda(num_tasks: int, *, solver: str = "frank_wolfe", normalization: str = "none",
         max_iters: int = 250) -> Balancer:
  """MGDA: the min-norm point of the convex hull of the task gradients (Desideri 2012).

  ``w = argmin_{w in simplex} ||sum_i w_i g_i / n_i||^2`` for the gradient normalisers
  ``n_i`` (1, ``||g_i||``, ``L_i`` or ``L_i ||g_i||``: the ``normalization_type`` of the
  paper's code), and the update is ``sum_i w_i g_i``: as in the paper's training script the
  weights scale the *raw* task losses (LibMTL instead applies them to the normalised
  gradients, i.e. weights ``w_i / n_i``). Without normalisation the update ``d`` is the
  min-norm element, so ``g_i . d >= ||d||^2`` for every task (it descends all losses).
  Given gradients with respect to a shared representation instead of the shared
  parameters, this is the paper's MGDA-UB upper bound.

  A ``"gram"`` method: only ``G`` (and the losses for loss normalisations) are needed.

  Args:
    num_tasks: T.
    solver: ``"frank_wolfe"``, the paper's ``find_min_norm_element_FW`` step for step
      (best pair of vertices, then Frank-Wolfe with exact line search, stopping once the
      weights move less than 1e-5), or ``"exact"``, an interior-point QP solve accurate to
      float32 round-off.
    normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``. Loss normalisations
      use ``|L_i|`` (the paper's losses are positive).
    max_iters: Frank-Wolfe iterations (the paper's code uses 250).

  Raises:
    ValueError: an unknown solver or normalization.
  """
  if solver not in _SOLVERS:
    raise ValueError(f"mgda solver must be one of {_SOLVERS}, got {solver!r}")
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"mgda normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")

  def init(params):
    del params
    return MGDAState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state
    gram = jnp.asarray(gram, jnp.float32)
    divisors = _gradient_normalizers(gram, task_losses, normalization)
    # Relative floor: a zero loss or gradient must not turn the Gram matrix into inf / nan.
    divisors = divisors / jnp.maximum(jnp.max(divisors), _solvers.TINY)
    divisors = jnp.maximum(divisors, 1e-6)
    normalized, _ = _solvers.normalize_gram(gram / jnp.outer(divisors, divisors))
    if solver == "frank_wolfe":
      weights = _solvers.min_norm_frank_wolfe(normalized, num_iters=max_iters)
    else:
      weights = _solvers.min_norm_exact(normalized)
    return weights, MGDAState(weights=weights)

  return from_gram_weights(init, weigh)


def _regularized_gram(gram, reg_eps):
  normalized, _ = _solvers.normalize_gram(gram)
  return normalized + reg_eps * jnp.eye(normalized.shape[0], dtype=jnp.float32)


def _project_onto_dual_cone(gram, coefficients, num_iters):
  """Weights ``v`` of the projection of ``J^T u`` onto ``{x : J x >= 0}``, per row ``u``.

  By Proposition 1 of Quinton & Rey (2024) these are ``argmin_{v >= u} v^T G v``; with
  ``v = u + z`` that is a nonnegative QP in ``z`` with linear term ``G u``.
  """
  solve = lambda linear: _solvers.nonneg_qp(gram, linear, num_iters=num_iters)
  shifts = jax.vmap(solve)(coefficients @ gram)
  return coefficients + shifts


@register("upgrad", paper=_JACOBIAN_DESCENT)
def upgrad(num_tasks: int, *, reg_eps: float = 1e-4, num_iters: int = 40) -> Balancer:
  """UPGrad: project each task gradient onto the dual cone of the rows of J, then average.

  ``d = (1/T) sum_i pi_J(g_i)`` with ``pi_J`` the projection onto ``{x : J x >= 0}``, so
  ``g_i . d >= 0`` for every task (no conflict). Each projection's weights come from the
  dual QP ``min_{v >= e_i / T} v^T G v`` (T of them, vmapped), and the result's weights are
  the sum of those. Like torchjd's ``UPGradWeighting``, G is divided by its trace and
  ``reg_eps`` is added to its diagonal so the QPs are strictly convex (unique weights, and
  solvable to 1e-4 in float32); the trace floor is a tiny constant, not torchjd's
  ``norm_eps = 1e-4``, so small gradients are not mistaken for zero ones.

  A ``"gram"`` method.

  Args:
    num_tasks: T.
    reg_eps: ridge on the trace-normalised Gram matrix (torchjd's default). 0 gives the
      exact projection; then the float32 answer degrades with G's conditioning.
    num_iters: interior-point iterations per QP.
  """
  if reg_eps < 0:
    raise ValueError(f"upgrad reg_eps must be >= 0, got {reg_eps}")

  def init(params):
    del params
    return UPGradState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state, task_losses
    regularized = _regularized_gram(gram, reg_eps)
    unit_weights = jnp.eye(num_tasks, dtype=jnp.float32) / num_tasks
    weights = jnp.sum(_project_onto_dual_cone(regularized, unit_weights, num_iters), axis=0)
    return weights, UPGradState(weights=weights)

  return from_gram_weights(init, weigh)


@register("dualproj", paper=_JACOBIAN_DESCENT)
def dualproj(num_tasks: int, *, reg_eps: float = 1e-4, num_iters: int = 40) -> Balancer:
  """DualProj: project the mean gradient onto the dual cone of the rows of J.

  ``d = pi_J((1/T) sum_i g_i)``, so ``g_i . d >= 0`` for every task; this is the projection
  of GEM (Lopez-Paz & Ranzato 2017, eq. 11) applied to the mean, as in torchjd's
  ``DualProj``. Its weights solve ``min_{v >= 1/T} v^T G v``; G is trace-normalised and
  ridged by ``reg_eps`` as for `upgrad`.

  A ``"gram"`` method.

  Args:
    num_tasks: T.
    reg_eps: ridge on the trace-normalised Gram matrix (torchjd's default).
    num_iters: interior-point iterations.
  """
  if reg_eps < 0:
    raise ValueError(f"dualproj reg_eps must be >= 0, got {reg_eps}")

  def init(params):
    del params
    return DualProjState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state, task_losses
    regularized = _regularized_gram(gram, reg_eps)
    mean_weights = jnp.full((1, num_tasks), 1.0 / num_tasks, jnp.float32)
    weights = _project_onto_dual_cone(regularized, mean_weights, num_iters)[0]
    return weights, DualProjState(weights=weights)

  return from_gram_weights(init, weigh)

"""Conflict-averse and bargaining directions: CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, FairGrad.

All five are ``"gram"`` methods: each result is ``sum_i w_i g_i`` with weights computed from
``G = J J^T`` (T x T) alone, so the train step computes G and does one weighted backward.
Solvers run on device with fixed budgets (`jmtl.balancers._solvers`), on the trace-normalised
Gram matrix; each method either ignores a global rescaling of the gradients or maps its
weights back exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jmtl.balancers import _solvers
from jmtl.balancers._base import Balancer
from jmtl.balancers._base import Reduction
from jmtl.balancers._base import from_gram_weights
from jmtl.balancers._base import reduction_scale
from jmtl.balancers._base import uniform_weights
from jmtl.balancers._registry import register

# Below this norm (relative to the Jacobian's Frobenius norm) a combination of gradients is
# float32 noise when computed from a Gram matrix: sqrt of the entries' round-off.
_RESOLVABLE_NORM = 1e-4


class CAGradState(NamedTuple):
  weights: jax.Array  # [T], weights of the last update


class IMTLGState(NamedTuple):
  weights: jax.Array  # [T], weights of the last update (they sum to 1)


class NashMTLState(NamedTuple):
  weights: jax.Array  # [T], effective weights of the last update (alpha after clipping)
  alpha: jax.Array    # [T], the last solution of G alpha = 1/alpha, reused between solves
  step: jax.Array     # int32, updates so far


class AlignedMTLState(NamedTuple):
  weights: jax.Array  # [T], weights of the last update


class FairGradState(NamedTuple):
  weights: jax.Array  # [T], weights of the last update


@register("cagrad", paper="Liu et al. 2021, Conflict-Averse Gradient Descent for Multi-task "
                          "Learning, NeurIPS")
def cagrad(num_tasks: int, *, c: float = 0.4, rescale: int = 1) -> Balancer:
  """CAGrad: the best worst-task improvement within a ball around the mean gradient.

  ``d = argmax_{||d - g_0|| <= c ||g_0||} min_i g_i . d`` with ``g_0`` the mean gradient.
  Through the dual ``w = argmin_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`` it is
  ``d = g_0 + (c ||g_0|| / ||g_w||) g_w``, i.e. weights ``1/T + c ||g_0|| w / ||g_w||``; as
  in the official code, ``rescale=1`` divides by ``1 + c^2``, ``rescale=2`` by ``1 + c`` and
  ``rescale=0`` leaves d as it is (the official trainer's extra factor T, "to match the sum
  loss", is not applied). The dual is solved exactly on device (`_solvers.cagrad_dual`)
  instead of by SLSQP. When ``g_w`` vanishes (the mean is Pareto stationary) the
  correction's direction is undefined and d is the rescaled mean.

  A ``"gram"`` method.

  Args:
    num_tasks: T.
    c: radius of the ball, relative to ``||g_0||``; in [0, 1) for the paper's guarantee.
    rescale: 0, 1 or 2 (see above).
  """
  if c < 0:
    raise ValueError(f"cagrad c must be >= 0, got {c}")
  if rescale not in (0, 1, 2):
    raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale}")
  divisor = (1.0, 1.0 + c**2, 1.0 + c)[rescale]

  def init(params):
    del params
    return CAGradState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state, task_losses
    normalized, _ = _solvers.normalize_gram(gram)
    mean_products = jnp.mean(normalized, axis=1)  # g_i . g_0
    radius = c * jnp.sqrt(jnp.maximum(jnp.mean(normalized), 0.0))  # c ||g_0||
    dual = _solvers.cagrad_dual(normalized, mean_products, radius)
    combined_norm = jnp.sqrt(jnp.maximum(dual @ normalized @ dual, 0.0))
    resolvable = combined_norm > _RESOLVABLE_NORM
    step = jnp.where(resolvable, radius / jnp.where(resolvable, combined_norm, 1.0), 0.0)
    weights = (1.0 / num_tasks + step * dual) / divisor
    return weights, CAGradState(weights=weights)

  return from_gram_weights(init, weigh)


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G's weights from G, computed on unit gradients so norm spreads cannot hurt.

  With ``u_i = g_i / n_i`` and ``d = sum_i w_i g_i = sum_i b_i u_i`` (``b_i = w_i n_i``),
  equal projections ``u_i . d`` mean ``C b = 1`` up to scale, ``C`` the cosine matrix
  (entries in [-1, 1] whatever the norms). So ``b = C^+ 1``, ``w_i = b_i / n_i``, scaled to
  sum to 1. Zero gradients get weight 0; the weights are 0 when no such combination
  exists (``sum_i b_i / n_i`` vanishes relative to its terms).
  """
  gram = jnp.asarray(gram, jnp.float32)
  gram = 0.5 * (gram + gram.T)
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  alive = norms > jnp.max(norms) * 1e-12  # relative: the norms may span any scale
  inverse = jnp.where(alive, 1.0 / jnp.where(alive, norms, 1.0), 0.0)
  cosines = gram * inverse[:, None] * inverse[None, :]
  cosines = jnp.where(alive[:, None] & alive[None, :], cosines, jnp.eye(gram.shape[0]))
  unit_weights = jnp.linalg.pinv(cosines, hermitian=True, rtol=1e-6) @ alive.astype(jnp.float32)
  # Divide by the largest norm's share first: w_i = (b_i * n_max / n_i) / n_max.
  scaled = unit_weights * inverse * jnp.max(norms)
  total = jnp.sum(scaled)
  defined = jnp.abs(total) > 1e-6 * jnp.sum(jnp.abs(scaled))
  return jnp.where(defined & alive, scaled / jnp.where(defined, total, 1.0), 0.0)


@register("imtl_g", paper="Liu et al. 2021, Towards Impartial Multi-task Learning, ICLR")
def imtl_g(num_tasks: int) -> Balancer:
  """IMTL-G: the combination, with weights summing to 1, equally aligned with every task.

  ``d = sum_i w_i g_i`` with ``sum_i w_i = 1`` and ``d . g_i / ||g_i||`` the same for all
  i. The paper's closed form ``w_{2:} = g_1 U^T (D U^T)^{-1}`` is, in Gram terms,
  ``w = G^+ n / (1^T G^+ n)`` with ``n_i = ||g_i||`` (``G w`` proportional to n); the
  pseudo-inverse is torchjd's generalisation to linearly dependent gradients, and like
  torchjd the weights are zero when ``1^T G^+ n`` vanishes (no such combination exists).

  A ``"gram"`` method.

  Args:
    num_tasks: T.
  """
  def init(params):
    del params
    return IMTLGState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state, task_losses
    weights = imtl_g_weights(gram)
    return weights, IMTLGState(weights=weights)

  return from_gram_weights(init, weigh)


@register("nash_mtl", paper="Navon et al. 2022, Multi-Task Learning as a Bargaining Game, ICML")
def nash_mtl(num_tasks: int, *, update_weights_every: int = 1, max_norm: float = 1.0) -> Balancer:
  """Nash-MTL: the Nash bargaining solution, ``d = sum_i alpha_i g_i`` with ``G alpha = 1/alpha``.

  Every task's utility ``g_i . d = 1 / alpha_i``, the bargaining solution over the ball.
  The official code approaches alpha by a sequence of convex programs (cvxpy, ECOS); here
  `_solvers.alpha_fair_weights` solves the same system by damped Newton on device. As in
  the official code (and torchjd) alpha is recomputed every ``update_weights_every``
  updates and reused in between, and the update is scaled down to norm ``max_norm`` when
  longer (the official ``clip_grad_norm_`` on the shared parameters; ``max_norm <= 0``
  disables it). That scale is computed from G on every update. When the system has no
  solution (a zero gradient, two opposite ones) the solver's ridge keeps alpha finite.

  A ``"gram"`` method.

  Args:
    num_tasks: T.
    update_weights_every: solve for alpha on updates 0, k, 2k, ...
    max_norm: largest norm of the update.
  """
  if update_weights_every < 1:
    raise ValueError(f"nash_mtl update_weights_every must be >= 1, got {update_weights_every}")

  def init(params):
    del params
    ones = jnp.ones((num_tasks,), jnp.float32)  # the official code's starting alpha
    return NashMTLState(weights=ones, alpha=ones, step=jnp.zeros((), jnp.int32))

  def weigh(gram, state, *, task_losses=None):
    del task_losses
    gram = jnp.asarray(gram, jnp.float32)
    # The official code solves on G / ||G||_F with the constraint scaled back by ||G||_F,
    # i.e. the exact system G alpha = 1 / alpha (||d|| = sqrt(T)); so does this.
    solve = lambda: _solvers.alpha_fair_weights(gram, 1.0)
    if update_weights_every == 1:
      alpha = solve()
    else:
      alpha = lax.cond(state.step % update_weights_every == 0, solve, lambda: state.alpha)
    weights = alpha
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(alpha @ gram @ alpha, 0.0))
      weights = alpha * jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, _solvers.TINY), 1.0)
    return weights, NashMTLState(weights=weights, alpha=alpha, step=state.step + 1)

  return from_gram_weights(init, weigh)


_SCALE_MODES = ("min", "median", "rmse")


def aligned_transform(gram: jax.Array, scale_mode: str = "min") -> jax.Array:
  """Aligned-MTL's balance matrix B, so that the aligned Jacobian ``B J`` is orthogonal.

  With ``G = V diag(lambda) V^T`` restricted to its numerical rank R,
  ``B = sqrt(lambda_scale) V diag(lambda)^(-1/2) V^T``: then ``B G B = lambda_scale P`` (P
  the projector on G's range), i.e. the aligned gradients are orthogonal with equal norms.
  ``lambda_scale`` is the smallest kept eigenvalue for ``"min"`` (the paper), their lower
  median or their mean for the official code's ``"median"`` / ``"rmse"``. The rank cut is
  the official ``max(lambda) * T * eps``; with rank 0 (all gradients zero) B is the identity,
  as in torchjd.

  Args:
    gram: ``[T, T]`` Gram matrix.
    scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

  Returns:
    ``[T, T]`` B, for the trace-normalised G (B does not depend on G's scale).
  """
  normalized, _ = _solvers.normalize_gram(gram)
  n = normalized.shape[0]
  eigenvalues, eigenvectors = jnp.linalg.eigh(normalized)  # ascending
  tolerance = jnp.max(eigenvalues) * n * jnp.finfo(jnp.float32).eps
  kept = eigenvalues > tolerance
  rank = jnp.sum(kept)
  inverse_sqrt = jnp.where(kept, lax.rsqrt(jnp.where(kept, eigenvalues, 1.0)), 0.0)
  if scale_mode == "min":
    scale = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
  elif scale_mode == "median":
    # Kept eigenvalues are the top `rank` of the ascending list; torch.median's lower median.
    scale = eigenvalues[n - rank + (rank - 1) // 2]
  else:
    scale = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(rank, 1)
  transform = jnp.sqrt(scale) * (eigenvectors * inverse_sqrt) @ eigenvectors.T
  return jnp.where(rank > 0, transform, jnp.eye(n, dtype=jnp.float32))


@register("aligned_mtl", paper="Senushkin et al. 2023, Independent Component Alignment for "
                               "Multi-Task Learning, CVPR")
def aligned_mtl(num_tasks: int, *, scale_mode: str = "min",
                reduction: Reduction = "mean") -> Balancer:
  """Aligned-MTL: align the task gradients' principal components, then average.

  The aligned Jacobian ``B J`` (see `aligned_transform`) has condition number 1; the update
  is the mean of its rows, ``d = J^T B 1 / T``, i.e. weights ``B 1 / T`` (jmtl's scale
  convention, as torchjd; the official code and LibMTL sum the aligned gradients,
  ``reduction="sum"``: weights ``B 1``).

  A ``"gram"`` method.

  Args:
    num_tasks: T.
    scale_mode: ``"min"`` (paper), ``"median"`` or ``"rmse"`` (official code's options).
    reduction: ``"mean"`` (jmtl's convention) or ``"sum"`` (paper, official code).
  """
  scale = reduction_scale(reduction, num_tasks, "aligned_mtl")
  if scale_mode not in _SCALE_MODES:
    raise ValueError(f"aligned_mtl scale_mode must be one of {_SCALE_MODES}, got {scale_mode!r}")

  def init(params):
    del params
    return AlignedMTLState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state, task_losses
    weights = scale * jnp.sum(aligned_transform(gram, scale_mode), axis=1)
    return weights, AlignedMTLState(weights=weights)

  return from_gram_weights(init, weigh)


@register("fairgrad", paper="Ban & Ji 2024, Fair Resource Allocation in Multi-Task Learning, ICML")
def fairgrad(num_tasks: int, *, alpha: float = 1.0) -> Balancer:
  """FairGrad: alpha-fair utilities, weights solving ``G w = w^(-1/alpha)``.

  Maximising ``sum_i (g_i . d)^(1 - alpha) / (1 - alpha)`` over a ball gives ``d = J^T w``
  with ``g_i . d = w_i^(-1/alpha)``; alpha = 1 is proportional fairness (Nash-MTL's
  system without its clipping), larger alpha approaches max-min fairness. The official
  code solves the system with ``scipy.optimize.least_squares``; here
  `_solvers.alpha_fair_weights` solves it by damped Newton on device. The weights are not
  scale-invariant (``w ~ G^(-alpha / (1 + alpha))``), as in the paper.

  A ``"gram"`` method.

  Args:
    num_tasks: T.
    alpha: fairness exponent > 0 (LibMTL's default 1.0).
  """
  if alpha <= 0:
    raise ValueError(f"fairgrad alpha must be > 0, got {alpha}")

  def init(params):
    del params
    return FairGradState(weights=uniform_weights(num_tasks))

  def weigh(gram, state, *, task_losses=None):
    del state, task_losses
    weights = _solvers.alpha_fair_weights(gram, alpha)
    return weights, FairGradState(weights=weights)

  return from_gram_weights(init, weigh)

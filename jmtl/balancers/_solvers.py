"""On-device solvers for the min-norm and QP balancers, with fixed iteration budgets.

Every problem here lives on a T x T Gram matrix, so each solver is a `lax.fori_loop` over a
fixed number of small dense steps: jittable, vmappable, deterministic, no host round trip.
Callers pass Gram matrices already scaled to O(1) entries (see `normalize_gram`), so the
tolerances below are absolute in those units.

* `project_to_simplex`: Euclidean projection onto the probability simplex (sort based).
* `min_norm_frank_wolfe`: Sener & Koltun's Frank-Wolfe min-norm solver, step for step.
* `min_norm_exact`: the min-norm point of the convex hull by an interior-point method.
* `nonneg_qp`: ``min_z 1/2 z^T H z + q^T z`` s.t. ``z >= 0`` (duals of UPGrad and DualProj).
* `cagrad_dual`: CAGrad's ``min_{w in simplex} a^T w + r ||J^T w||``.
* `alpha_fair_weights`: the positive solution of ``G w = w^(-1/alpha)`` (Nash-MTL, FairGrad).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax

# Floor for a Gram matrix's scale: far below the squared norm of any float32 gradient that is
# not exactly zero, so it only stops 0/0 on all-zero inputs.
TINY = 1e-30

# Interior point: stop moving once the mean complementarity is this small (O(1) units); past
# it float32 ratios y/x overflow long before the answer changes.
_IPM_MU_TOL = 1e-12
_FRACTION_TO_BOUNDARY = 0.99
# Newton line searches: trial steps 1, 1/2, ..., 2^-(n-1) of the largest feasible step, all
# evaluated at once (a fixed cost) rather than in a data-dependent loop.
_NUM_TRIAL_STEPS = 24
_ARMIJO = 1e-4
# Barrier method: Newton steps at one barrier weight before moving on regardless.
_STEPS_PER_CENTRING = 6


def normalize_gram(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(G / trace(G), trace(G))`` in float32; the trace is floored at `TINY`.

  Every weighting here either ignores a global rescaling of the gradients or rescales in a
  known way, so the solvers work on the trace-normalised matrix (entries in [-1, 1]).
  """
  gram = jnp.asarray(gram, jnp.float32)
  gram = 0.5 * (gram + gram.T)  # exact symmetry; float32 matmuls are not always
  scale = jnp.maximum(jnp.trace(gram), TINY)
  return gram / scale, scale


# ---------------------------------------------------------------- simplex projection


def project_to_simplex(y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Euclidean projection of ``y [n]`` onto ``{w >= 0, sum w = 1}`` (``w_i = 0`` off ``mask``).

  The sort-based algorithm of Held et al. (1974) / Duchi et al. (2008): the projection is
  ``max(y - theta, 0)`` with the threshold theta found from the sorted values. With a bool
  ``mask`` the projection is onto the face of the simplex spanned by the masked entries
  (all zeros if none is masked).
  """
  n = y.shape[-1]
  if mask is not None:
    y = jnp.where(mask, y, -jnp.inf)
  # The projection ignores a common shift; moving the largest entry to 0 keeps the
  # cumulative sums exact for huge inputs (the top entry is always in the support).
  peak = jnp.max(y)
  y = y - jnp.where(jnp.isfinite(peak), peak, 0.0)
  descending = -jnp.sort(-y)
  cumulative = jnp.cumsum(jnp.where(jnp.isfinite(descending), descending, 0.0)) - 1.0
  counts = jnp.arange(1, n + 1, dtype=y.dtype)
  # The support is the longest prefix whose smallest kept value stays above the threshold.
  support = jnp.sum(descending - cumulative / counts > 0)
  support = jnp.maximum(support, 1)
  theta = cumulative[support - 1] / support.astype(y.dtype)
  return jnp.maximum(y - theta, 0.0)


def onto_simplex_face(y: jax.Array) -> jax.Array:
  """``y`` put exactly on the simplex without leaving its face, for a ``y`` already on it up to
  round-off: negatives within round-off of 0 clipped, the rest rescaled to sum 1. Otherwise
  ``project_to_simplex``.

  A solver's answer sums to 1 only up to float32 round-off; the Euclidean projection then
  shifts every entry by the same ~1e-7, zeros included, moving the answer off its face: on a
  min-norm problem whose inactive tasks have large gradients that cost 1e-4 in the combined
  gradient (relative), far more than the solve's own error.
  """
  tolerance = 16 * y.shape[-1] * jnp.finfo(y.dtype).eps
  clipped = jnp.maximum(y, 0.0)
  total = jnp.sum(clipped)
  near = (jnp.min(y) >= -tolerance) & (jnp.abs(total - 1.0) <= tolerance)
  return jnp.where(near, clipped / jnp.where(near, total, 1.0), project_to_simplex(y))


# ---------------------------------------------------------------- Sener & Koltun's solver


def _min_norm_of_pair(v1v1, v1v2, v2v2):
  """``argmin_gamma ||gamma v1 + (1 - gamma) v2||^2`` on [0, 1]: Sener & Koltun's closed form.

  Returns ``(gamma, cost)``. A solution at a vertex is exactly 1 or 0: the reference code's
  ``0.999`` / ``0.001`` there keeps 0.1% of the other vector, which is far longer than the
  min-norm point when the norms differ by orders of magnitude.
  """
  curvature = v1v1 + v2v2 - 2.0 * v1v2
  gamma = (v2v2 - v1v2) / jnp.where(curvature > 0, curvature, 1.0)
  gamma = jnp.clip(gamma, 0.0, 1.0)
  cost = v2v2 + gamma * (v1v2 - v2v2)
  gamma = jnp.where(v1v2 >= v1v1, 1.0, jnp.where(v1v2 >= v2v2, 0.0, gamma))
  cost = jnp.where(v1v2 >= v1v1, v1v1, jnp.where(v1v2 >= v2v2, v2v2, cost))
  return gamma, cost


def min_norm_frank_wolfe(gram: jax.Array, num_iters: int = 250,
                         stop_crit: float = 1e-5) -> jax.Array:
  """Simplex weights of the min-norm point, by Sener & Koltun's ``find_min_norm_element_FW``.

  Starts from the best pair of vertices (exact for T = 2), then runs Frank-Wolfe with the
  exact line search; once an update moves the weights by less than ``stop_crit`` (L1) the
  weights stay put, which is the reference code's early return. (The reference never
  increments its iteration counter, so it runs until that criterion; here at most
  ``num_iters`` steps.)

  Args:
    gram: ``[T, T]`` Gram matrix of the vectors.
    num_iters: Frank-Wolfe iterations (MAX_ITER; LibMTL's copy uses 250).
    stop_crit: the reference's STOP_CRIT.

  Returns:
    ``[T]`` weights on the simplex.
  """
  gram = jnp.asarray(gram, jnp.float32)
  n = gram.shape[0]
  if n == 1:
    return jnp.ones((1,), jnp.float32)
  diag = jnp.diagonal(gram)
  gamma, cost = _min_norm_of_pair(diag[:, None], gram, diag[None, :])
  upper = jnp.arange(n)[:, None] < jnp.arange(n)[None, :]
  # argmin's first hit in row-major order is the reference's (i, j) loop order with `<`.
  best = jnp.argmin(jnp.where(upper, cost, jnp.inf))
  i, j = best // n, best % n
  weights = jnp.zeros((n,), jnp.float32).at[i].set(gamma[i, j]).at[j].add(1.0 - gamma[i, j])
  if n == 2:
    return weights

  def step(_, carry):
    weights, stopped = carry
    gram_weights = gram @ weights
    vertex = jnp.argmin(gram_weights)
    step_size, _ = _min_norm_of_pair(
        weights @ gram_weights, gram_weights[vertex], gram[vertex, vertex])
    new = step_size * weights + (1.0 - step_size) * jax.nn.one_hot(vertex, n, dtype=jnp.float32)
    stopped = stopped | (jnp.sum(jnp.abs(new - weights)) < stop_crit)
    return jnp.where(stopped, weights, new), stopped

  weights, _ = lax.fori_loop(0, num_iters, step, (weights, jnp.array(False)))
  # Frank-Wolfe converges sublinearly, and on badly conditioned Gram matrices 250 steps can
  # stop ~1e-3 short of the KKT point: an active-set polish from its support finishes the
  # job exactly (and keeps the Frank-Wolfe answer if that is better).
  gram_weights = gram @ weights
  multipliers = gram_weights - weights @ gram_weights
  weights = _polish_qp(gram, jnp.zeros((n,), jnp.float32), weights, multipliers, simplex=True)
  return onto_simplex_face(weights)


# ---------------------------------------------------------------- interior point


def _max_step(value, direction, fraction):
  """Largest step in [0, 1] keeping ``value + step * direction >= (1 - fraction) value``."""
  ratios = jnp.where(direction < 0, -value / jnp.where(direction < 0, direction, -1.0), jnp.inf)
  return jnp.minimum(1.0, fraction * jnp.min(ratios))


def _interior_point(hessian: jax.Array, linear: jax.Array, *, simplex: bool,
                    num_iters: int) -> tuple[jax.Array, jax.Array]:
  """Primal-dual interior point for ``min 1/2 x^T H x + q^T x`` s.t. ``x >= 0`` [``sum x = 1``].

  Mehrotra's predictor-corrector on the KKT system ``H x + q - y - lam 1 = 0``,
  ``sum x = 1``, ``x * y = sigma mu``: one LU factorisation per iteration, the predictor's
  progress sets the centring ``sigma = (mu_aff / mu)^3``, and the corrector adds the
  second-order term; both iterates stop just short of the boundary. A step that would leave
  finite positive numbers is not taken, and iterates freeze once ``mu`` is negligible.

  Args:
    hessian: ``[n, n]`` positive semidefinite H with O(1) entries.
    linear: ``[n]`` q.
    simplex: add the constraint ``sum x = 1``.
    num_iters: iterations.

  Returns:
    The last iterate's primal ``x`` and bound multipliers ``y``.
  """
  n = linear.shape[0]
  ones = jnp.ones((n,), jnp.float32)

  def direction(factors, m_inv_ones, x, y, dual, primal, comp_rhs):
    # y dx + x dy = comp_rhs eliminates dy; the one equality row is a rank-one Schur step.
    dx = jsl.lu_solve(factors, -dual + comp_rhs / x)
    dlam = jnp.zeros((), jnp.float32)
    if simplex:
      dlam = (-primal - jnp.sum(dx)) / jnp.sum(m_inv_ones)
      dx = dx + dlam * m_inv_ones
    dy = (comp_rhs - y * dx) / x
    return dx, dy, dlam

  def step(_, carry):
    x, y, lam = carry
    mu = jnp.dot(x, y) / n
    dual = hessian @ x + linear - y - (lam * ones if simplex else 0.0)
    primal = jnp.sum(x) - 1.0 if simplex else jnp.zeros((), jnp.float32)
    factors = jsl.lu_factor(hessian + jnp.diag(y / x))
    m_inv_ones = jsl.lu_solve(factors, ones) if simplex else ones
    # Predictor: the pure Newton (affine-scaling) step says how much centring is needed.
    dx_aff, dy_aff, _ = direction(factors, m_inv_ones, x, y, dual, primal, -x * y)
    step_aff = jnp.minimum(_max_step(x, dx_aff, 1.0), _max_step(y, dy_aff, 1.0))
    mu_aff = jnp.dot(x + step_aff * dx_aff, y + step_aff * dy_aff) / n
    sigma = jnp.clip((mu_aff / mu)**3, 0.0, 1.0)
    dx, dy, dlam = direction(factors, m_inv_ones, x, y, dual, primal,
                             sigma * mu - x * y - dx_aff * dy_aff)
    step_size = jnp.minimum(_max_step(x, dx, _FRACTION_TO_BOUNDARY),
                            _max_step(y, dy, _FRACTION_TO_BOUNDARY))
    new = (x + step_size * dx, y + step_size * dy, lam + step_size * dlam)
    valid = jnp.all(jnp.isfinite(new[0]) & jnp.isfinite(new[1]) & (new[0] > 0) & (new[1] > 0))
    keep = (mu < _IPM_MU_TOL) | ~valid
    return jax.tree.map(lambda old, new: jnp.where(keep, old, new), carry, new)

  x0 = jnp.full((n,), 1.0 / n, jnp.float32)
  gradient0 = hessian @ x0 + linear
  # Start dual feasible where possible: y = H x0 + q - lam0 with a margin of 1 above zero.
  lam0 = (jnp.min(gradient0) - 1.0) if simplex else jnp.zeros((), jnp.float32)
  y0 = gradient0 - lam0 if simplex else jnp.maximum(gradient0, 1.0)
  x, y, _ = lax.fori_loop(0, num_iters, step, (x0, y0, lam0))
  return x, y


def _kkt_violation(x, grad, simplex):
  """Natural residual ``||x - P(x - grad)||_inf`` (P onto the feasible set); 0 iff optimal."""
  projected = project_to_simplex(x - grad) if simplex else jnp.maximum(x - grad, 0.0)
  violation = jnp.max(jnp.abs(x - projected))
  return jnp.where(jnp.isfinite(violation), violation, jnp.inf)


def _solve_on_face(hessian, rhs, free, simplex):
  """Solves the QP's KKT system with the variables outside ``free`` pinned at 0.

  Rows ``H_FF x_F - lam 1_F = rhs_F`` (``- lam`` only with the simplex row ``sum x_F = 1``
  or 0), and ``x_i = 0`` off the face. ``rhs`` is ``[n, k]`` for k right-hand sides; its
  simplex-row value is 1 in the first column and 0 in the others. Returns ``(x [n, k],
  lam [k])``; a singular face gives non-finite values, which callers reject.
  """
  n = hessian.shape[0]
  reduced = jnp.where(free[:, None] & free[None, :], hessian, jnp.eye(n, dtype=jnp.float32))
  rhs = jnp.where(free[:, None], rhs, 0.0)
  if not simplex:
    return jnp.linalg.solve(reduced, rhs), jnp.zeros(rhs.shape[1:], jnp.float32)
  column = free.astype(jnp.float32)
  corner = jnp.zeros((1, 1), jnp.float32)  # float32 under jax_enable_x64 too (scan carries)
  system = jnp.block([[reduced, -column[:, None]], [column[None, :], corner]])
  simplex_row = jnp.zeros((1, rhs.shape[1]), jnp.float32).at[0, 0].set(1.0)
  solution = jnp.linalg.solve(system, jnp.concatenate([rhs, simplex_row]))
  return solution[:n], solution[n]


def _polish_qp(hessian, linear, x, y, *, simplex, num_rounds=3):
  """Active-set polish of a solver's answer to a QP, keeping the best candidate.

  Interior points stop a little inside the feasible set, Frank-Wolfe a little short of the
  optimum, and in float32 a degenerate QP can stall there. Guessing the active set
  ``{x_i < y_i}`` and solving the equality-constrained QP on the free variables gives the
  exact answer once the guess is right; a few rounds of this primal-dual active-set update
  (Hintermueller, Ito & Kunisch 2002) fix a guess that is slightly off.

  Candidates are projected onto the feasible set and judged by the objective
  ``1/2 x^T H x + q^T x``, so this never does worse than ``x``. (The KKT residual was the
  judge before: it is not scale-free, and with task gradients 1e5 apart in norm the small
  tasks' block of the trace-normalised Gram is ~1e-11, where every point's residual is
  noise; a vertex 30% above the min norm then won 3% of the time.) A candidate within 1e-6
  (relative) of the best so far still wins, so an exact face solution replaces an answer
  that is equal to round-off.
  """
  project = onto_simplex_face if simplex else (lambda v: jnp.maximum(v, 0.0))

  def objective(candidate):
    value = 0.5 * candidate @ (hessian @ candidate) + linear @ candidate
    return jnp.where(jnp.isfinite(value), value, jnp.inf)

  def round_(carry, _):
    best, best_value, guess, multipliers = carry
    candidate, lam = _solve_on_face(hessian, -linear[:, None], guess > multipliers, simplex)
    candidate, lam = candidate[:, 0], lam[0]
    finite = jnp.all(jnp.isfinite(candidate))
    feasible = project(jnp.where(finite, candidate, x))
    value = jnp.where(finite, objective(feasible), jnp.inf)
    better = value <= best_value + 1e-6 * jnp.abs(best_value)
    best = jnp.where(better, feasible, best)
    best_value = jnp.where(better, jnp.minimum(value, best_value), best_value)
    multipliers = hessian @ candidate + linear - lam
    return (best, best_value, candidate, multipliers), None

  start = (x, objective(x), x, y)
  (best, _, _, _), _ = lax.scan(round_, start, None, length=num_rounds)
  return best


def min_norm_exact(gram: jax.Array, num_iters: int = 40) -> jax.Array:
  """Simplex weights of the min-norm point of the convex hull, ``argmin_{w in simplex} w^T G w``.

  Solved by `_interior_point` (a QP: Mehrotra predictor-corrector), accurate to float32
  round-off for any positive semidefinite ``G`` (singular included).

  Args:
    gram: ``[T, T]`` Gram matrix scaled to O(1) entries.
    num_iters: interior-point iterations.

  Returns:
    ``[T]`` weights on the simplex.
  """
  gram = jnp.asarray(gram, jnp.float32)
  linear = jnp.zeros((gram.shape[0],), jnp.float32)
  weights, multipliers = _interior_point(gram, linear, simplex=True, num_iters=num_iters)
  weights = _polish_qp(gram, linear, weights, multipliers, simplex=True)
  return onto_simplex_face(weights)  # removes the last float32 drift off the simplex


def nonneg_qp(hessian: jax.Array, linear: jax.Array, num_iters: int = 40) -> jax.Array:
  """``argmin_{z >= 0} 1/2 z^T H z + q^T z`` for positive semidefinite ``H``.

  Solved by `_interior_point` (Mehrotra predictor-corrector). The problem must be bounded
  below (always true for the projection duals of UPGrad and DualProj). vmap it over ``q``
  for a batch of problems sharing ``H``.

  Args:
    hessian: ``[n, n]`` H scaled to O(1) entries.
    linear: ``[n]`` q.
    num_iters: interior-point iterations.

  Returns:
    ``[n]`` the minimiser ``z >= 0``.
  """
  hessian = jnp.asarray(hessian, jnp.float32)
  linear = jnp.asarray(linear, jnp.float32)
  z, multipliers = _interior_point(hessian, linear, simplex=False, num_iters=num_iters)
  return jnp.maximum(_polish_qp(hessian, linear, z, multipliers, simplex=False), 0.0)


def _cagrad_on_support(gram, linear, radius, free):
  """CAGrad's dual solution when the support of ``w`` is ``free``: exact, in closed form.

  With the support fixed the optimality conditions are those of the simplex QP
  ``min a^T w + rho/2 w^T G w`` on that face with ``rho = r / ||g_w||``. Its solution is
  ``w = w_a + w_b / rho`` (two linear solves), and ``rho ||g_w|| = r`` is then a quadratic
  equation in rho, whose larger root is the one where ``rho ||g_w||`` increases through r.
  """
  solution, _ = _solve_on_face(
      gram, jnp.stack([jnp.zeros_like(linear), -linear], axis=1), free, simplex=True)
  w_a, w_b = solution[:, 0], solution[:, 1]
  quad_a, quad_b, quad_c = w_a @ gram @ w_a, w_a @ gram @ w_b, w_b @ gram @ w_b
  discriminant = jnp.maximum(quad_b**2 - quad_a * (quad_c - radius**2), 0.0)
  rho = (-quad_b + jnp.sqrt(discriminant)) / quad_a
  return w_a + w_b / rho


def cagrad_dual(gram: jax.Array, linear: jax.Array, radius: jax.Array, *,
                smoothing: float = 1e-4, num_iters: int = 60,
                num_polish_rounds: int = 3) -> jax.Array:
  """``argmin_{w in simplex} a^T w + r ||J^T w||``: CAGrad's dual problem, from ``G = J J^T``.

  With ``a = G 1/T`` and ``r = c ||g_0||`` this is Liu et al. (2021)'s
  ``min_w g_w^T g_0 + sqrt(phi) ||g_w||``.

  A log-barrier method finds the support: damped Newton on ``t f_s(w) - sum log w`` over
  ``sum w = 1``, multiplying t by 10 whenever the Newton decrement says the centre is
  reached (or after a few steps: float32 noise can keep the decrement from shrinking),
  where ``f_s`` replaces the norm by ``sqrt(||g_w||^2 + smoothing)``: the kink at
  ``g_w = 0``, which float32 Gram entries cannot resolve below ~1e-4, would otherwise trap
  the iterates. The Armijo test uses objective *differences* computed without cancellation
  (``log1p``, a difference of square roots), so it keeps working in float32 at large t.
  Then `_cagrad_on_support` solves the exact (unsmoothed) problem on the support guess
  ``{w_i^2 > 1/t}``, refined by primal-dual active-set rounds; the candidate with the
  smallest KKT violation wins.

  Args:
    gram: ``[T, T]`` Gram matrix scaled to O(1) entries.
    linear: ``[T]`` a.
    radius: scalar r >= 0.
    smoothing: added under the square root in the barrier phase (O(1) units).
    num_iters: Newton iterations of the barrier phase.
    num_polish_rounds: exact solves on a guessed support.

  Returns:
    ``[T]`` weights on the simplex.
  """
  gram = jnp.asarray(gram, jnp.float32)
  linear = jnp.asarray(linear, jnp.float32)
  radius = jnp.asarray(radius, jnp.float32)
  n = gram.shape[0]
  ones = jnp.ones((n,), jnp.float32)

  def objective_grad(w, exact=False):
    gram_w = gram @ w
    squared_norm = w @ gram_w + (0.0 if exact else smoothing)
    return linear + radius * gram_w / jnp.sqrt(jnp.maximum(squared_norm, TINY))

  def objective_hess(w):
    gram_w = gram @ w
    norm = jnp.sqrt(w @ gram_w + smoothing)
    return radius * (gram / norm - jnp.outer(gram_w, gram_w) / norm**3)

  def barrier_change(w, delta, step, t):
    """``phi(w + step delta) - phi(w)`` for ``phi = t f - sum log``, cancellation free."""
    sq_old = w @ gram @ w + smoothing
    sq_change = 2.0 * step * (w @ gram @ delta) + step**2 * (delta @ gram @ delta)
    sq_new = jnp.maximum(sq_old + sq_change, smoothing)
    norm_change = sq_change / (jnp.sqrt(sq_new) + jnp.sqrt(sq_old))
    f_change = step * (linear @ delta) + radius * norm_change
    return t * f_change - jnp.sum(jnp.log1p(step * delta / w))

  def newton_step(_, carry):
    w, t, steps_at_t = carry
    grad = t * objective_grad(w) - 1.0 / w
    hess = t * objective_hess(w) + jnp.diag(1.0 / w**2)
    factors = jsl.lu_factor(hess)
    h_inv_grad, h_inv_ones = jsl.lu_solve(factors, grad), jsl.lu_solve(factors, ones)
    # Newton direction within {sum delta = 0}.
    delta = -(h_inv_grad - (jnp.sum(h_inv_grad) / jnp.sum(h_inv_ones)) * h_inv_ones)
    decrement = -(grad @ delta)
    trials = _max_step(w, delta, _FRACTION_TO_BOUNDARY) * 0.5**jnp.arange(
        _NUM_TRIAL_STEPS, dtype=jnp.float32)
    changes = jax.vmap(lambda step: barrier_change(w, delta, step, t))(trials)
    accepted = changes <= -_ARMIJO * trials * decrement
    step = jnp.where(jnp.any(accepted), trials[jnp.argmax(accepted)], 0.0)
    new_w = w + step * delta
    ok = jnp.all(jnp.isfinite(new_w) & (new_w > 0))
    new_w = jnp.where(ok, new_w, w)
    # Centred, stuck, or at float32's noise floor (where the decrement stops shrinking):
    # move along the central path.
    advance = (decrement < 1e-3) | (step == 0.0) | ~ok | (steps_at_t >= _STEPS_PER_CENTRING)
    t = jnp.where(advance, jnp.minimum(10.0 * t, 1e10), t)
    return new_w, t, jnp.where(advance, 0, steps_at_t + 1)

  w0 = jnp.full((n,), 1.0 / n, jnp.float32)
  w, t, _ = lax.fori_loop(0, num_iters, newton_step, (w0, jnp.ones((), jnp.float32), 0))

  def violation(candidate):
    return _kkt_violation(candidate, objective_grad(candidate, exact=True), simplex=True)

  def round_(carry, _):
    best, best_violation, free = carry
    candidate = _cagrad_on_support(gram, linear, radius, free)
    candidate_violation = violation(candidate)
    better = candidate_violation < best_violation
    best = jnp.where(better, candidate, best)
    best_violation = jnp.where(better, candidate_violation, best_violation)
    grad = objective_grad(candidate, exact=True)
    # f is 1-homogeneous, so the equality multiplier is w^T grad f(w) = f(w).
    multipliers = grad - candidate @ grad
    return (best, best_violation, candidate > multipliers), None

  start = (w, violation(w), w**2 > 1.0 / t)
  (best, _, _), _ = lax.scan(round_, start, None, length=num_polish_rounds)
  return project_to_simplex(best)


# ---------------------------------------------------------------- G w = w^(-1/alpha)


def _alpha_fair_newton(gram, w0, power, num_iters, coefficients=1.0):
  """Damped Newton for ``gram w = c w^(-power)`` from ``w0 > 0`` (see `alpha_fair_weights`)."""
  def gradient(w):
    return gram @ w - coefficients * w**(-power)

  def newton_step(_, w):
    grad = gradient(w)
    hessian = gram + jnp.diag(power * coefficients * w**(-power - 1.0))
    delta = -jnp.linalg.solve(hessian, grad)
    trials = _max_step(w, delta, _FRACTION_TO_BOUNDARY) * 0.5**jnp.arange(
        _NUM_TRIAL_STEPS, dtype=jnp.float32)
    # Newton's direction descends ||grad||^2 too (its derivative is -2 ||grad||^2), and that
    # merit keeps resolving progress in float32 where the objective's values stop changing.
    merits = jax.vmap(lambda t: jnp.sum(gradient(w + t * delta)**2))(trials)
    accepted = merits <= (1.0 - _ARMIJO * trials) * jnp.sum(grad**2)
    step_size = jnp.where(jnp.any(accepted), trials[jnp.argmax(accepted)], 0.0)
    new = w + step_size * delta
    return jnp.where(jnp.all(jnp.isfinite(new) & (new > 0)), new, w)

  return lax.fori_loop(0, num_iters, newton_step, w0)


def alpha_fair_weights(gram: jax.Array, alpha: float | jax.Array = 1.0, *, ridge: float = 1e-6,
                       num_iters: int = 40, num_polish_iters: int = 8) -> jax.Array:
  """The positive solution of ``G w = w^(-1/alpha)`` (elementwise power), on device.

  ``alpha = 1`` is Nash-MTL's ``G alpha = 1 / alpha`` (Navon et al. 2022); general alpha is
  FairGrad's alpha-fair system (Ban & Ji 2024). The solution is the unique minimiser of the
  strictly convex ``1/2 w^T G w + sum_i h(w_i)`` with ``h'(w) = -w^(-1/alpha)``
  (``h = -log`` for alpha = 1), found by damped Newton with a backtracking search on the
  gradient norm, on ``G / trace(G)``; the answer maps back exactly by
  ``w = w_n * trace^(-alpha / (1 + alpha))``.

  When a nonnegative combination of the gradients vanishes (a zero gradient, two opposite
  ones) the system has no solution and some weights grow without bound. So Newton first
  solves the system with ``ridge`` added to the diagonal (always solvable), then polishes
  on the exact system from there; the polished answer is kept only if it solves the exact
  system to 1e-4 relative, otherwise the ridge answer is (finite, and its weights on the
  degenerate directions multiply gradients that cancel).

  Args:
    gram: ``[T, T]`` Gram matrix (any scale).
    alpha: fairness exponent > 0 (a Python float, or traced).
    ridge: added to the diagonal of the trace-normalised G in the first phase.
    num_iters: Newton iterations of the ridge phase.
    num_polish_iters: Newton iterations on the exact system.

  Returns:
    ``[T]`` positive weights.
  """
  if isinstance(alpha, (int, float)) and alpha <= 0:  # a traced alpha is the caller's job
    raise ValueError(f"alpha must be positive, got {alpha}")
  normalized, scale = normalize_gram(gram)
  n = normalized.shape[0]
  power = 1.0 / alpha
  # Solved on unit gradients: with G = N C N (N the norms, C the cosines) and b = N w the
  # system is C b = N^(power - 1) b^(-power), whose matrix has entries in [-1, 1] however
  # far apart the norms are (norm spreads of 1e4 make G itself hopeless in float32).
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(normalized), 0.0))
  norms = jnp.where(norms > 1e-12 * jnp.max(norms), norms, 1.0)  # zero rows: the ridge copes
  cosines = normalized / norms[:, None] / norms[None, :]
  coefficients = norms**(power - 1.0)
  ridged = cosines + ridge * jnp.eye(n, dtype=jnp.float32)
  # Exact when the gradients are orthogonal, and on the right scale otherwise.
  b0 = (coefficients / jnp.diagonal(ridged))**(alpha / (1.0 + alpha))
  b_ridge = _alpha_fair_newton(ridged, b0, power, num_iters, coefficients)
  b_exact = _alpha_fair_newton(cosines, b_ridge, power, num_polish_iters, coefficients)
  relative_residual = jnp.max(jnp.abs((cosines @ b_exact) * b_exact**power / coefficients - 1.0))
  solved = jnp.isfinite(relative_residual) & (relative_residual < 1e-4)
  w = jnp.where(solved, b_exact, b_ridge) / norms
  return w * scale**(-alpha / (1.0 + alpha))

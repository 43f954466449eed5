"""On-device solvers against float64 SciPy / NumPy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jmtl.balancers import _solvers

from references import alpha_fair_reference
from references import cagrad_dual_reference
from references import degenerate_jacobians
from references import frank_wolfe_reference
from references import min_norm_reference
from references import relative_error
from references import scaled_jacobian
from references import simplex_projection
from references import trace_normalized_gram

NUM_TASKS = (2, 3, 8)
BATCH = 6  # problems per vmapped call: one compilation per (solver, T)

# Jitted once at module level, so each shape compiles once for the whole file.
frank_wolfe = jax.jit(jax.vmap(_solvers.min_norm_frank_wolfe))
min_norm_exact = jax.jit(jax.vmap(_solvers.min_norm_exact))
nonneg_qp = jax.jit(jax.vmap(_solvers.nonneg_qp))
cagrad_dual = jax.jit(jax.vmap(_solvers.cagrad_dual))
alpha_fair = jax.jit(jax.vmap(_solvers.alpha_fair_weights, in_axes=(0, None)))


def random_jacobian(num_tasks, seed):
  """Gaussian rows with different scales (dim > T, so G is positive definite)."""
  return scaled_jacobian(num_tasks, seed, dim=num_tasks + 4)


def random_grams(num_tasks, first_seed):
  """``BATCH`` random Jacobians and their trace-normalised Gram matrices ``[BATCH, T, T]``."""
  jacobians = [random_jacobian(num_tasks, seed=first_seed + s) for s in range(BATCH)]
  return jacobians, np.stack([trace_normalized_gram(j) for j in jacobians])


def as_f32(array):
  return jnp.asarray(array, jnp.float32)


DEGENERATE = degenerate_jacobians(seed=7, dim=5)


# ---------------------------------------------------------------- simplex projection


@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_project_to_simplex_matches_threshold_root(size):
  project = jax.jit(jax.vmap(_solvers.project_to_simplex))
  points = np.random.default_rng(size).normal(scale=2.0, size=(20, size))
  projected = np.asarray(project(as_f32(points)))
  for point, result in zip(points, projected):
    np.testing.assert_allclose(result, simplex_projection(point), atol=1e-6)
  np.testing.assert_allclose(projected.sum(axis=1), 1.0, atol=1e-6)
  assert (projected >= 0).all()


def test_project_to_simplex_keeps_simplex_points():
  point = np.array([0.2, 0.5, 0.3])
  np.testing.assert_allclose(_solvers.project_to_simplex(as_f32(point)), point, atol=1e-7)


# ---------------------------------------------------------------- min-norm point


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_frank_wolfe_reaches_the_min_norm_point(num_tasks):
  # The reference code's Frank-Wolfe stops short (and keeps 0.001 of the other vertex at a
  # vertex solution); jmtl's is exact there and polished to the KKT point, so it matches
  # the SLSQP min-norm point and is never worse than the reference's answer.
  jacobians, gram = random_grams(num_tasks, first_seed=10 * num_tasks)
  weights = np.asarray(frank_wolfe(as_f32(gram)), np.float64)
  for jacobian, matrix, found in zip(jacobians, gram, weights):
    expected = min_norm_reference(matrix)
    assert relative_error(jacobian.T @ found, jacobian.T @ expected) < 1e-4
    paper = frank_wolfe_reference(matrix)
    assert found @ matrix @ found <= paper @ matrix @ paper * (1 + 1e-5)


def test_frank_wolfe_objective_matches_reference_on_many_problems():
  gram = np.stack([trace_normalized_gram(random_jacobian(8, seed)) for seed in range(5 * BATCH)])
  weights = np.concatenate([
      np.asarray(frank_wolfe(as_f32(batch)), np.float64) for batch in np.split(gram, 5)])
  for matrix, found in zip(gram, weights):
    expected = min_norm_reference(matrix)
    np.testing.assert_allclose(found @ matrix @ found, expected @ matrix @ expected, rtol=1e-4)
    paper = frank_wolfe_reference(matrix)
    assert found @ matrix @ found <= paper @ matrix @ paper * (1 + 1e-5)
    np.testing.assert_allclose(found.sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_min_norm_exact_matches_slsqp_and_kkt(num_tasks):
  jacobians, gram = random_grams(num_tasks, first_seed=100 * num_tasks)
  weights = np.asarray(min_norm_exact(as_f32(gram)), np.float64)
  for jacobian, matrix, found in zip(jacobians, gram, weights):
    expected = min_norm_reference(matrix)
    assert relative_error(jacobian.T @ found, jacobian.T @ expected) < 1e-4
    assert relative_error(found, expected) < 1e-4
    # KKT of the min-norm point d: g_i . d >= ||d||^2 for every vertex.
    direction = jacobian.T @ found
    assert (jacobian @ direction >= direction @ direction * (1 - 1e-4)).all()


def test_min_norm_exact_when_zero_is_in_the_hull():
  half = np.random.default_rng(3).normal(size=(4, 3))
  jacobian = np.concatenate([half, -2.0 * half[::-1]])  # 8 directions in R^3, 0 in the hull
  gram = np.repeat(trace_normalized_gram(jacobian)[None], BATCH, axis=0)
  weights = np.asarray(min_norm_exact(as_f32(gram)), np.float64)[0]
  # Pareto stationary: the min-norm point is 0 up to float32 resolution of the Gram entries.
  assert np.linalg.norm(jacobian.T @ weights) < 1e-3 * np.linalg.norm(jacobian)
  np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
  assert (weights >= 0).all()


# ---------------------------------------------------------------- nonnegative QP


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_nonneg_qp_matches_nnls(num_tasks):
  # 1/2 z^T J J^T z + (J b)^T z = 1/2 ||J^T z + b||^2 + const: exactly scipy's NNLS.
  rng = np.random.default_rng(num_tasks)
  jacobians = [random_jacobian(num_tasks, seed=200 + s) for s in range(BATCH)]
  scales = [np.sqrt(np.trace(j @ j.T)) for j in jacobians]
  shifts = [rng.normal(size=j.shape[1]) * s for j, s in zip(jacobians, scales)]
  hessians = np.stack([j @ j.T / s**2 for j, s in zip(jacobians, scales)])
  linears = np.stack([j @ b / s**2 for j, b, s in zip(jacobians, shifts, scales)])
  solutions = np.asarray(nonneg_qp(as_f32(hessians), as_f32(linears)), np.float64)
  for jacobian, shift, scale, found in zip(jacobians, shifts, scales, solutions):
    expected, _ = scipy.optimize.nnls(jacobian.T / scale, -shift / scale)
    assert (found >= 0).all()
    assert np.abs(found - expected).max() < 1e-4 * max(np.abs(expected).max(), 1.0)


def test_nonneg_qp_shares_hessian_under_vmap():
  hessian = trace_normalized_gram(random_jacobian(3, seed=5))
  linears = np.eye(3) @ hessian / 3  # UPGrad's three duals, one batched call
  shared = jax.jit(jax.vmap(functools.partial(_solvers.nonneg_qp, as_f32(hessian))))
  together = np.asarray(shared(as_f32(linears)))
  apart = np.asarray(nonneg_qp(as_f32(np.repeat(hessian[None], 3, axis=0)), as_f32(linears)))
  np.testing.assert_allclose(together, apart, atol=1e-6)


# ---------------------------------------------------------------- CAGrad's dual


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
@pytest.mark.parametrize("c", [0.1, 0.4, 0.9])
def test_cagrad_dual_matches_slsqp(num_tasks, c):
  _, gram = random_grams(num_tasks, first_seed=300)
  linear = gram.mean(axis=2)
  radius = c * np.sqrt(gram.mean(axis=(1, 2)))
  weights = np.asarray(cagrad_dual(as_f32(gram), as_f32(linear), as_f32(radius)), np.float64)
  for matrix, a, r, found in zip(gram, linear, radius, weights):
    expected = cagrad_dual_reference(matrix, a, r)
    assert relative_error(found, expected) < 1e-4
    objective = lambda w: a @ w + r * np.sqrt(w @ matrix @ w)
    assert objective(found) <= objective(expected) + 1e-7


def test_cagrad_dual_when_zero_is_in_the_hull():
  # The barrier iterates pass near g_w = 0, where float32 cannot resolve the norm.
  jacobian = np.random.default_rng(236).normal(size=(8, 3))
  gram = trace_normalized_gram(jacobian)
  linear, radius = gram.mean(axis=1), 0.4 * np.sqrt(gram.mean())
  batch = lambda x: as_f32(np.repeat(np.asarray(x)[None], BATCH, axis=0))
  found = np.asarray(cagrad_dual(batch(gram), batch(linear), batch(radius)), np.float64)[0]
  expected = cagrad_dual_reference(gram, linear, radius)
  assert relative_error(jacobian.T @ found, jacobian.T @ expected) < 1e-4


# ---------------------------------------------------------------- G w = w^(-1/alpha)


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_alpha_fair_weights_match_least_squares(num_tasks, alpha):
  rng = np.random.default_rng(num_tasks)
  jacobians = [random_jacobian(num_tasks, seed=400 + s) * 10.0**rng.uniform(-3, 3)
               for s in range(BATCH)]
  gram = np.stack([j @ j.T for j in jacobians])
  weights = np.asarray(alpha_fair(as_f32(gram), alpha), np.float64)
  for matrix, found in zip(gram, weights):
    expected = alpha_fair_reference(matrix, alpha)
    np.testing.assert_allclose(found, expected, rtol=1e-4)
    # The defining system, on the float64 Gram matrix.
    np.testing.assert_allclose(matrix @ found, found**(-1 / alpha), rtol=1e-4)


def test_alpha_fair_weights_rescale_exactly():
  jacobians = [random_jacobian(3, seed=9 + s) for s in range(BATCH)]
  gram = np.stack([j @ j.T for j in jacobians])
  for alpha in (1.0, 2.0):
    base = np.asarray(alpha_fair(as_f32(gram), alpha), np.float64)
    scaled = np.asarray(alpha_fair(as_f32(1e6 * gram), alpha), np.float64)
    np.testing.assert_allclose(scaled, base * 1e6**(-alpha / (1 + alpha)), rtol=1e-5)


def test_alpha_fair_weights_reject_nonpositive_alpha():
  with pytest.raises(ValueError, match="alpha"):
    _solvers.alpha_fair_weights(jnp.eye(2), alpha=0.0)


# ---------------------------------------------------------------- degenerate inputs


@jax.jit
def all_solvers(gram):
  normalized, _ = _solvers.normalize_gram(gram)
  n = gram.shape[0]
  return {
      "frank_wolfe": _solvers.min_norm_frank_wolfe(normalized),
      "min_norm_exact": _solvers.min_norm_exact(normalized),
      "nonneg_qp": _solvers.nonneg_qp(normalized, normalized @ jnp.full((n,), 1.0 / n)),
      "cagrad_dual": _solvers.cagrad_dual(
          normalized, jnp.mean(normalized, axis=1), 0.4 * jnp.sqrt(jnp.abs(jnp.mean(normalized)))),
      "nash": _solvers.alpha_fair_weights(gram, 1.0),
      "fair_3": _solvers.alpha_fair_weights(gram, 3.0),
  }


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_solvers_stay_finite_on_degenerate_inputs(case):
  jacobian = DEGENERATE[case]
  results = all_solvers(as_f32(jacobian @ jacobian.T))
  for name, result in results.items():
    assert np.isfinite(np.asarray(result)).all(), (case, name, result)
  for name in ("frank_wolfe", "min_norm_exact", "cagrad_dual"):
    np.testing.assert_allclose(np.sum(results[name]), 1.0, atol=1e-5, err_msg=name)


def test_solvers_on_a_single_task():
  results = all_solvers(as_f32([[4.0]]))
  for name in ("frank_wolfe", "min_norm_exact", "cagrad_dual"):
    np.testing.assert_allclose(results[name], [1.0], atol=1e-6)
  np.testing.assert_allclose(results["nonneg_qp"], [0.0], atol=1e-6)
  np.testing.assert_allclose(results["nash"], [0.5], rtol=1e-5)  # 4 a = 1 / a
  np.testing.assert_allclose(results["fair_3"], [4.0**(-3 / 4)], rtol=1e-5)


def test_min_norm_on_degenerate_inputs_matches_reference_norm():
  for case in ("zero_row", "identical_rows", "opposite_rows"):
    jacobian = DEGENERATE[case]
    gram = trace_normalized_gram(jacobian)
    found = np.asarray(all_solvers(as_f32(gram))["min_norm_exact"], np.float64)
    expected = min_norm_reference(gram)
    assert abs(found @ gram @ found - expected @ gram @ expected) < 1e-6, case


def test_solvers_are_deterministic():
  gram = as_f32(trace_normalized_gram(random_jacobian(3, seed=11)))
  first, second = all_solvers(gram), all_solvers(gram)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])


def test_onto_simplex_face_keeps_a_face_solution_on_its_face():
  """A face solution that sums to 1 only up to float32 round-off: the Euclidean projection
  lifts its zeros by the shortfall/n (off the face); onto_simplex_face keeps them at exactly 0
  and sums to 1. Far from the simplex it is the Euclidean projection."""
  face = np.array([0.3, 0.0, 0.7 - 3e-7, 0.0], np.float32)
  on_face = np.asarray(_solvers.onto_simplex_face(jnp.asarray(face)))
  assert on_face[1] == 0.0 and on_face[3] == 0.0
  assert abs(float(on_face.sum()) - 1.0) < 1e-6
  assert np.asarray(_solvers.project_to_simplex(jnp.asarray(face)))[1] > 0
  far = jnp.asarray([0.9, -0.5, 0.4, 0.3], jnp.float32)
  np.testing.assert_array_equal(_solvers.onto_simplex_face(far), _solvers.project_to_simplex(far))

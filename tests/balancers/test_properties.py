"""Each Gram method's defining property, in float32, on the Jacobians training produces.

Hypothesis draws Jacobians whose row norms spread over 1e-2..1e2, whose overall scale is
anywhere in 1e-6..1e6, with nearly collinear rows or conflicting pairs, for T in {2, 3, 8}.
Every property is checked in float64 NumPy / SciPy on the float32 Jacobian, independently
of the solver that produced the weights.
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jmtl.balancers as balancers

DIM = 16
SETTINGS = hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])


@st.composite
def jacobians(draw, task_counts=(2, 3, 8), kinds=("spread", "collinear", "conflicting")):
  num_tasks = draw(st.sampled_from(task_counts))
  kind = draw(st.sampled_from(kinds))
  rng = np.random.default_rng(draw(st.integers(0, 2**20)))
  rows = rng.normal(size=(num_tasks, DIM))
  if kind == "collinear":  # every row within ~1e-2 radians of a common direction
    rows = rng.normal(size=DIM) + 1e-2 * rows
  elif kind == "conflicting":  # task 1 points mostly against task 0
    rows[1] = -rows[0] + 0.3 * rows[1]
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  norms = 10.0 ** rng.uniform(-2, 2, size=(num_tasks, 1))
  scale = 10.0 ** draw(st.floats(-6, 6))
  return np.asarray(rows * norms * scale, np.float32).astype(np.float64)


@functools.cache
def weigher(name, num_tasks, **hparams):
  balancer = balancers.get(name, num_tasks, **hparams)
  return jax.jit(lambda jacobian: balancer.update(jacobian, balancer.init(jacobian[0]))[0])


def combine(name, jacobian, **hparams):
  """The method's update for ``jacobian`` (float32 in, float64 out)."""
  run = weigher(name, jacobian.shape[0], **hparams)
  return np.asarray(run(jnp.asarray(jacobian, jnp.float32)), np.float64)


def min_norm_reference(jacobian):
  """Float64 min-norm point of the convex hull: closed form for T=2 (Sener & Koltun)."""
  g1, g2 = jacobian
  gamma = np.clip((g2 @ (g2 - g1)) / max((g1 - g2) @ (g1 - g2), 1e-300), 0.0, 1.0)
  return gamma * g1 + (1 - gamma) * g2


@SETTINGS
@hypothesis.given(jacobian=jacobians())
def test_mgda_is_the_min_norm_point(jacobian):
  d = combine("mgda", jacobian)
  smallest = np.min(np.sum(jacobian**2, axis=1))
  if jacobian.shape[0] == 2:
    best = min_norm_reference(jacobian)
    assert d @ d <= best @ best + 1e-3 * smallest, (d @ d, best @ best)
    return
  # T > 2: the weights are KKT-optimal for min_{w in simplex} w^T G w on G / trace(G):
  # natural residual ||w - P(w - G w)|| within 1e-3 (w recovered from d by least squares).
  gram = jacobian @ jacobian.T
  weights = weights_of("mgda", jacobian)
  normalized = gram / np.trace(gram)
  residual = weights - project_to_simplex_reference(weights - normalized @ weights)
  assert np.max(np.abs(residual)) < 1e-3
  np.testing.assert_allclose(weights @ jacobian, d, atol=1e-5 * np.sqrt(np.trace(gram)))
  assert d @ d <= smallest * (1 + 1e-3)  # never longer than the shortest gradient


def project_to_simplex_reference(y):
  """Float64 Euclidean projection onto the simplex, by bisection on the threshold."""
  low, high = np.min(y) - 1.0, np.max(y)
  for _ in range(200):
    middle = (low + high) / 2
    low, high = (middle, high) if np.sum(np.maximum(y - middle, 0)) > 1 else (low, middle)
  return np.maximum(y - (low + high) / 2, 0)


@functools.cache
def weigh_run(name, num_tasks):
  balancer = balancers.get(name, num_tasks)
  return jax.jit(lambda gram: balancer.weigh_gram(gram, balancer.init(None))[0])


def weights_of(name, jacobian):
  gram = jnp.asarray(jacobian, jnp.float32) @ jnp.asarray(jacobian, jnp.float32).T
  return np.asarray(weigh_run(name, jacobian.shape[0])(gram), np.float64)


@SETTINGS
@hypothesis.given(jacobian=jacobians())
def test_imtl_g_projections_are_equal(jacobian):
  d = combine("imtl_g", jacobian)
  projections = (jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)) @ d
  np.testing.assert_allclose(projections, projections[0], rtol=1e-3,
                             atol=1e-3 * np.max(np.abs(projections)))


@functools.cache
def nash_alpha(num_tasks):
  balancer = balancers.get("nash_mtl", num_tasks, max_norm=0.0)
  return jax.jit(lambda gram: balancer.weigh_gram(gram, balancer.init(None))[0])


@SETTINGS
@hypothesis.given(jacobian=jacobians(kinds=("spread", "conflicting")))
def test_nash_mtl_alpha_solves_its_system(jacobian):
  gram = jacobian @ jacobian.T
  alpha = np.asarray(nash_alpha(jacobian.shape[0])(jnp.asarray(gram, jnp.float32)), np.float64)
  assert np.all(alpha > 0)
  utilities = gram @ alpha  # g_i . d
  assert np.all(utilities > 0)
  np.testing.assert_allclose(alpha * utilities, 1.0, rtol=1e-3)


@SETTINGS
@hypothesis.given(jacobian=jacobians())
def test_cagrad_worst_task_at_least_as_good_as_under_the_mean(jacobian):
  d = combine("cagrad", jacobian, rescale=0)
  mean = jacobian.mean(axis=0)
  tolerance = 1e-3 * np.linalg.norm(mean) * np.max(np.linalg.norm(jacobian, axis=1))
  assert np.min(jacobian @ d) >= np.min(jacobian @ mean) - tolerance


@functools.cache
def pcgrad_projected(num_tasks):
  """The projected gradients g_i' of PCGrad in index order, through its weights."""
  from jmtl.balancers._pcgrad import pcgrad_coefficients, projection_orders
  orders = projection_orders(None, num_tasks)
  return jax.jit(lambda gram: pcgrad_coefficients(gram, orders)), np.asarray(orders)


@SETTINGS
@hypothesis.given(jacobian=jacobians())
def test_pcgrad_leaves_no_conflict_with_the_last_projection(jacobian):
  num_tasks = jacobian.shape[0]
  coefficients, orders = pcgrad_projected(num_tasks)
  projected = np.asarray(coefficients(jnp.asarray(jacobian @ jacobian.T, jnp.float32)),
                         np.float64) @ jacobian
  norms = np.linalg.norm(jacobian, axis=1)
  for i in range(num_tasks):
    # With two tasks no conflict is left at all; with more, the last task visited never
    # conflicts with the result (earlier ones may again: PCGrad's own behaviour).
    others = [j for j in range(num_tasks) if j != i] if num_tasks == 2 else [orders[i, -1]]
    for j in others:
      assert projected[i] @ jacobian[j] >= -1e-4 * np.linalg.norm(projected[i]) * norms[j]


def dual_cone_reference(gram, unit_weights, reg_eps=1e-4):
  """Float64 ``argmin_{v >= u} v^T G v`` by NNLS on a Cholesky factor (torchjd's problem)."""
  normalized = gram / np.trace(gram) + reg_eps * np.eye(len(gram))
  factor = np.linalg.cholesky(normalized).T  # G = F^T F
  shifts = [scipy.optimize.nnls(factor, -factor @ u, maxiter=1000)[0] for u in unit_weights]
  return unit_weights + np.asarray(shifts)


@SETTINGS
@hypothesis.given(jacobian=jacobians())
def test_upgrad_and_dualproj_match_a_float64_qp(jacobian):
  num_tasks = jacobian.shape[0]
  gram = jacobian @ jacobian.T
  expected = {
      "upgrad": dual_cone_reference(gram, np.eye(num_tasks) / num_tasks).sum(axis=0) @ jacobian,
      "dualproj": dual_cone_reference(gram, np.full((1, num_tasks), 1 / num_tasks))[0] @ jacobian,
  }
  for name, want in expected.items():
    got = combine(name, jacobian)
    scale = np.max(np.linalg.norm(jacobian, axis=1))
    # Same problem as torchjd's (trace-normalised G plus reg_eps = 1e-4 on its diagonal),
    # so the ridge's small conflicts are in the reference too.
    np.testing.assert_allclose(got, want, atol=2e-3 * scale, err_msg=name)


GRAM_METHODS = ("mgda", "imtl_g", "cagrad", "pcgrad", "upgrad", "dualproj", "aligned_mtl",
                "config", "nash_mtl", "sdmgrad", "gradvac", "krum")


@pytest.mark.parametrize("name", GRAM_METHODS)
@hypothesis.settings(max_examples=6, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(jacobian=jacobians(task_counts=(3,)), exponent=st.sampled_from([-6, 6]))
def test_direction_does_not_depend_on_the_overall_scale(name, jacobian, exponent):
  base = combine(name, jacobian)
  scaled = combine(name, jacobian * 10.0**exponent)
  cosine = base @ scaled / max(np.linalg.norm(base) * np.linalg.norm(scaled), 1e-300)
  assert np.linalg.norm(base) == 0 or cosine > 1 - 1e-3, (name, cosine)

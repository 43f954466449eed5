"""mgda, upgrad and dualproj against float64 NumPy/SciPy implementations of the papers."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jmtl.balancers as balancers

from references import assert_update_matches
from references import check_pytree_matches_flat
from references import degenerate_jacobians
from references import frank_wolfe_reference
from references import min_norm_reference
from references import relative_error
from references import run_update
from references import scaled_jacobian
from references import trace_normalized_gram

DIM = 12  # > every T used here, so random Gram matrices are positive definite
NUM_TASKS = (2, 3, 8)

random_jacobian = functools.partial(scaled_jacobian, dim=DIM)


def random_losses(num_tasks, seed):
  return np.random.default_rng(seed + 1000).uniform(0.1, 3.0, size=num_tasks)


# ---------------------------------------------------------------- float64 references


def mgda_reference(jacobian, losses, solver, normalization):
  """Sener & Koltun's training step: normalise, min-norm weights, weights on raw losses."""
  norms = np.linalg.norm(jacobian, axis=1)
  divisors = {"none": lambda: np.ones(len(jacobian)), "l2": lambda: norms,
              "loss": lambda: losses, "loss+": lambda: losses * norms}[normalization]()
  # FW's decisions and the QP's solution ignore the scale.
  gram = trace_normalized_gram(jacobian / divisors[:, None])
  weights = frank_wolfe_reference(gram) if solver == "frank_wolfe" else min_norm_reference(gram)
  return weights @ jacobian, weights


def project_onto_dual_cone_primal(jacobian, vector):
  """``argmin_x ||x - vector||^2`` s.t. ``J x >= 0``, solved in the primal (d variables)."""
  result = scipy.optimize.minimize(
      lambda x: 0.5 * np.sum((x - vector)**2), vector, jac=lambda x: x - vector,
      method="SLSQP", constraints={"type": "ineq", "fun": lambda x: jacobian @ x,
                                   "jac": lambda x: jacobian},
      options={"ftol": 1e-15, "maxiter": 1000})
  return result.x


def dual_cone_weights_torchjd(jacobian, coefficients, reg_eps):
  """torchjd's project_weights: ``min_{v >= u} v^T G' v`` per row u, G' = G/tr G + eps I."""
  gram = jacobian @ jacobian.T
  gram = gram / np.trace(gram) + reg_eps * np.eye(len(gram))
  factor = np.linalg.cholesky(gram)  # v^T G' v = ||L^T v||^2: NNLS in z = v - u >= 0
  return np.stack([u + scipy.optimize.nnls(factor.T, -factor.T @ u)[0] for u in coefficients])


# ---------------------------------------------------------------- mgda


@pytest.mark.parametrize("solver", ["frank_wolfe", "exact"])
@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_mgda_matches_paper_code(num_tasks, solver):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=seed)
    grads, state = run_update("mgda", jacobian, solver=solver)
    # Both solvers reach the min-norm point (Frank-Wolfe is polished to it).
    assert_update_matches(grads, state, *mgda_reference(jacobian, None, "exact", "none"))


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
@pytest.mark.parametrize("solver", ["frank_wolfe", "exact"])
def test_mgda_normalizations_match_paper_code(normalization, solver):
  for seed in range(3):
    jacobian, losses = random_jacobian(3, seed=seed), random_losses(3, seed)
    grads, _ = run_update("mgda", jacobian, losses=losses, solver=solver,
                          normalization=normalization)
    expected, _ = mgda_reference(jacobian, losses, solver, normalization)
    assert relative_error(grads, expected) < 1e-4


def test_mgda_exact_direction_is_the_min_norm_point():
  for seed in range(5):
    jacobian = random_jacobian(8, seed=10 + seed)
    grads, state = run_update("mgda", jacobian, solver="exact")
    # KKT of min ||d|| over the hull: every task gradient projects onto d at least ||d||^2.
    assert (jacobian @ grads >= (grads @ grads) * (1 - 1e-4)).all()
    np.testing.assert_allclose(np.sum(state.weights), 1.0, atol=1e-5)
    assert (np.asarray(state.weights) >= 0).all()


def test_mgda_frank_wolfe_approaches_the_exact_min_norm():
  # Frank-Wolfe converges as O(1/k): after 250 steps within a few percent of the optimum.
  for seed in range(5):
    jacobian = random_jacobian(8, seed=20 + seed)
    fw_grads, _ = run_update("mgda", jacobian, solver="frank_wolfe")
    exact_grads, _ = run_update("mgda", jacobian, solver="exact")
    exact_norm = exact_grads @ exact_grads
    assert exact_norm * (1 - 1e-5) <= fw_grads @ fw_grads <= exact_norm * 1.1


def test_mgda_ignores_gradient_scale():
  jacobian = random_jacobian(3, seed=5)
  _, state = run_update("mgda", jacobian, solver="exact", normalization="l2")
  _, scaled_state = run_update("mgda", 1e4 * jacobian, solver="exact", normalization="l2")
  np.testing.assert_allclose(scaled_state.weights, state.weights, rtol=1e-5, atol=1e-6)


def test_mgda_loss_normalization_needs_losses():
  balancer = balancers.get("mgda", 2, normalization="loss")
  state = balancer.init(jnp.zeros(3))
  with pytest.raises(ValueError, match="task_losses"):
    balancer.update(jnp.ones((2, 3)), state)


@pytest.mark.parametrize("hparams", [{"solver": "sgd"}, {"normalization": "l1"}])
def test_mgda_rejects_unknown_options(hparams):
  with pytest.raises(ValueError, match="mgda"):
    balancers.get("mgda", 3, **hparams)


# ---------------------------------------------------------------- upgrad / dualproj


# Per method: torchjd's coefficient rows u (the weights sum argmin_{v >= u} v^T G' v over the
# rows), and the vectors whose projections onto the dual cone the paper averages.
PROJECTIONS = {
    "upgrad": (lambda num_tasks: np.eye(num_tasks) / num_tasks, lambda jacobian: jacobian),
    "dualproj": (lambda num_tasks: np.full((1, num_tasks), 1.0 / num_tasks),
                 lambda jacobian: jacobian.mean(axis=0, keepdims=True)),
}


@pytest.mark.parametrize("name,first_seed", [("upgrad", 30), ("dualproj", 50)])
@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_projection_methods_match_torchjd_formulation(name, first_seed, num_tasks):
  coefficients, _ = PROJECTIONS[name]
  for seed in range(first_seed, first_seed + 3):
    jacobian = random_jacobian(num_tasks, seed=seed)
    grads, state = run_update(name, jacobian)
    weights = dual_cone_weights_torchjd(jacobian, coefficients(num_tasks), reg_eps=1e-4).sum(axis=0)
    assert_update_matches(grads, state, weights @ jacobian, weights)


@pytest.mark.parametrize("name,first_seed", [("upgrad", 40), ("dualproj", 60)])
@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_projection_methods_without_ridge_average_primal_projections(name, first_seed, num_tasks):
  # The papers' definitions, solved in the primal: UPGrad is (1/T) sum_i pi_J(g_i), DualProj
  # is pi_J of the mean gradient.
  _, projected_vectors = PROJECTIONS[name]
  for seed in range(first_seed, first_seed + 2):
    jacobian = random_jacobian(num_tasks, seed=seed)
    grads, _ = run_update(name, jacobian, reg_eps=0.0)
    projections = [project_onto_dual_cone_primal(jacobian, g) for g in projected_vectors(jacobian)]
    assert relative_error(grads, np.mean(projections, axis=0)) < 1e-4


def conflicting_jacobian(seed):
  """Eight tasks, several pulling against the mean: the projections have work to do."""
  jacobian = random_jacobian(8, seed)
  jacobian[4:] -= 1.5 * jacobian[:4]
  return jacobian


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_projection_methods_conflict_with_no_task(name):
  for seed in range(4):
    jacobian = conflicting_jacobian(seed)
    scale = np.sum(jacobian**2)
    exact, _ = run_update(name, jacobian, reg_eps=0.0)
    assert (jacobian @ exact >= -1e-5 * scale).all()
    # With torchjd's ridge the QP constraint becomes (G + eps tr(G) I) v >= 0: a conflict of
    # at most eps * tr(G) * v_i is allowed, and no more.
    ridged, state = run_update(name, jacobian)
    allowed = 1e-4 * scale * np.asarray(state.weights) + 1e-5 * scale
    assert (jacobian @ ridged >= -allowed).all()
    assert (jacobian.mean(axis=0) @ jacobian.T < 0).any()  # the mean itself does conflict


def test_projection_methods_leave_conflict_free_inputs_alone():
  jacobian = np.abs(random_jacobian(3, seed=70))  # positive entries: no pair conflicts
  upgrad_grads, _ = run_update("upgrad", jacobian, reg_eps=0.0)
  dualproj_grads, _ = run_update("dualproj", jacobian, reg_eps=0.0)
  assert relative_error(upgrad_grads, jacobian.mean(axis=0)) < 1e-5
  assert relative_error(dualproj_grads, jacobian.mean(axis=0)) < 1e-5


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_projection_methods_reject_negative_ridge(name):
  with pytest.raises(ValueError, match="reg_eps"):
    balancers.get(name, 3, reg_eps=-1.0)


# ---------------------------------------------------------------- all three


METHODS = [("mgda", {"solver": "frank_wolfe"}), ("mgda", {"solver": "exact"}),
           ("mgda", {"solver": "exact", "normalization": "loss+"}), ("upgrad", {}),
           ("upgrad", {"reg_eps": 0.0}), ("dualproj", {}), ("dualproj", {"reg_eps": 0.0})]


DEGENERATE = degenerate_jacobians(seed=42, dim=DIM)


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name,hparams", METHODS)
def test_degenerate_jacobians_give_finite_outputs(name, hparams, case):
  losses = np.array([0.5, 0.0, 2.0])  # a zero loss too
  grads, state = run_update(name, DEGENERATE[case], losses=losses, **hparams)
  assert np.isfinite(grads).all() and np.isfinite(state.weights).all()
  if case == "all_zero":
    np.testing.assert_allclose(grads, 0.0, atol=1e-30)


@pytest.mark.parametrize("name,hparams", METHODS)
def test_single_task_returns_its_gradient(name, hparams):
  jacobian = random_jacobian(1, seed=80)
  grads, state = run_update(name, jacobian, **hparams)
  np.testing.assert_allclose(grads, jacobian[0], rtol=1e-5)
  np.testing.assert_allclose(state.weights, [1.0], rtol=1e-5)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "dualproj"])
def test_pytree_gradients_match_flat_ones(name):
  check_pytree_matches_flat(name, random_jacobian(3, seed=90), task_losses=np.ones(3))


# G of a real step: the tiny model's topic, score and pos tasks (tests/train/test_step.py's
# multi-input batches with regression targets x1000), gradient norms 2.2, 4.1e5 and 3.8.
GRAM_OF_NORMS_1E5_APART = np.array([
    [4.8219604539310055e+00, -3.0116712918482022e+05, -3.3918478107373495e-01],
    [-3.0116712918482022e+05, 1.6597586742430328e+11, 2.1419583907517014e+05],
    [-3.3918478107373495e-01, 2.1419583907517014e+05, 1.4311990184975180e+01]])


def min_norm_by_faces(gram):
  """``min_{w in simplex} w^T G w`` in float64, exact for small T: the KKT system solved on
  every face of the simplex, the smallest feasible value kept."""
  n, best = len(gram), np.inf
  for size in range(1, n + 1):
    for face in itertools.combinations(range(n), size):
      face = list(face)
      system = np.block([[gram[np.ix_(face, face)], np.ones((size, 1))],
                         [np.ones((1, size)), np.zeros((1, 1))]])
      weights = np.zeros(n)
      weights[face] = np.linalg.solve(system, np.r_[np.zeros(size), 1.0])[:size]
      if (weights >= 0).all():
        best = min(best, weights @ gram @ weights)
  return best


@pytest.mark.parametrize("solver", ["frank_wolfe", "exact"])
def test_mgda_finds_the_min_norm_when_gradient_norms_are_1e5_apart(solver):
  """After trace normalisation the two small tasks' block of G is ~1e-11, where a KKT
  residual is noise for every point: for 200 perturbations of G at float32 round-off,
  MGDA must land on the min-norm point (judging the polish by its residual, 6 of 200 landed
  on a vertex 30% above it)."""
  rng = np.random.default_rng(0)
  noise = rng.normal(size=(200, 3, 3)) * 1e-7
  grams = GRAM_OF_NORMS_1E5_APART * (1 + (noise + noise.transpose(0, 2, 1)) / 2)
  balancer = balancers.get("mgda", num_tasks=3, solver=solver)
  state = balancer.init(jnp.zeros(3))
  weigh = jax.jit(jax.vmap(lambda gram: balancer.weigh_gram(gram, state)[0]))
  weights = np.asarray(weigh(jnp.asarray(grams, jnp.float32)), np.float64)
  values = np.einsum("ni,nij,nj->n", weights, grams, weights)
  best = np.array([min_norm_by_faces(gram) for gram in grams])
  # 1e-3: float32 weights near 1 move in steps of 6e-8, and each step of the 4e5-norm
  # task's weight changes the squared norm by ~3e-4 of itself.
  bad = np.flatnonzero(values > best * (1 + 1e-3))
  assert not len(bad), (bad, values[bad] / best[bad], weights[bad])

"""mgda, upgrad and dualproj against float64 NumPy/SciPy implementations of the papers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jmtl.balancers as balancers

DIM = 12  # > every T used here, so random Gram matrices are positive definite
NUM_TASKS = (2, 3, 8)


def random_jacobian(num_tasks, seed, dim=DIM):
  """Gaussian rows with different scales, so normalisation choices matter."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(num_tasks, dim)) * rng.uniform(0.2, 3.0, size=(num_tasks, 1))


def random_losses(num_tasks, seed):
  return np.random.default_rng(seed + 1000).uniform(0.1, 3.0, size=num_tasks)


@functools.cache
def compiled(name, num_tasks, **hparams):
  """(balancer, jitted update from a fresh state); cached so each shape compiles once."""
  balancer = balancers.get(name, num_tasks, **hparams)

  def update(task_grads, losses):
    state = balancer.init(jax.tree.map(lambda leaf: leaf[0], task_grads))
    return balancer.update(task_grads, state, task_losses=losses)

  return balancer, jax.jit(update)


def run(name, jacobian, losses=None, **hparams):
  """One jitted float32 update; returns (float64 grads, state)."""
  num_tasks = jacobian.shape[0]
  losses = np.ones(num_tasks) if losses is None else losses
  _, update = compiled(name, num_tasks, **hparams)
  grads, state = update(jnp.asarray(jacobian, jnp.float32), jnp.asarray(losses, jnp.float32))
  return np.asarray(grads, np.float64), state


def relative_error(actual, expected):
  return np.linalg.norm(np.asarray(actual, np.float64) - expected) / np.linalg.norm(expected)


def degenerate_jacobians():
  rng = np.random.default_rng(42)
  base = rng.normal(size=(3, DIM))
  zero_row, identical, opposite = base.copy(), base.copy(), base.copy()
  zero_row[1] = 0.0
  identical[1] = identical[0]
  opposite[1] = -opposite[0]
  return {"zero_row": zero_row, "all_zero": np.zeros((3, DIM)), "identical_rows": identical,
          "opposite_rows": opposite, "tiny": 1e-8 * base, "huge": 1e8 * base,
          "mixed_magnitudes": base * np.array([[1e-8], [1.0], [1e8]])}


# ---------------------------------------------------------------- float64 references


def _pair(v1v1, v1v2, v2v2):
  """MinNormSolver._min_norm_element_from2 (Sener & Koltun's code)."""
  if v1v2 >= v1v1:
    return 0.999, v1v1
  if v1v2 >= v2v2:
    return 0.001, v2v2
  gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
  return gamma, v2v2 + gamma * (v1v2 - v2v2)


def frank_wolfe_reference(gram, max_iter=250, stop_crit=1e-5):
  """MinNormSolver.find_min_norm_element_FW in float64 (MAX_ITER enforced)."""
  n = len(gram)
  if n == 1:
    return np.ones(1)
  best_cost = np.inf
  for i in range(n):
    for j in range(i + 1, n):
      gamma, cost = _pair(gram[i, i], gram[i, j], gram[j, j])
      if cost < best_cost:
        best_cost, best = cost, (i, j, gamma)
  weights = np.zeros(n)
  weights[best[0]], weights[best[1]] = best[2], 1 - best[2]
  if n < 3:
    return weights
  for _ in range(max_iter):
    vertex = np.argmin(gram @ weights)
    step, _ = _pair(weights @ gram @ weights, weights @ gram[:, vertex], gram[vertex, vertex])
    new = step * weights
    new[vertex] += 1 - step
    if np.abs(new - weights).sum() < stop_crit:
      return weights
    weights = new
  return weights


def min_norm_slsqp(gram):
  n = len(gram)
  result = scipy.optimize.minimize(
      lambda w: w @ gram @ w, np.full(n, 1 / n), jac=lambda w: 2 * gram @ w, method="SLSQP",
      bounds=[(0, 1)] * n, constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
      options={"ftol": 1e-15, "maxiter": 1000})
  return result.x


def mgda_reference(jacobian, losses, solver, normalization):
  """Sener & Koltun's training step: normalise, min-norm weights, weights on raw losses."""
  norms = np.linalg.norm(jacobian, axis=1)
  divisors = {"none": lambda: np.ones(len(jacobian)), "l2": lambda: norms,
              "loss": lambda: losses, "loss+": lambda: losses * norms}[normalization]()
  normalized = jacobian / divisors[:, None]
  gram = normalized @ normalized.T
  gram = gram / np.trace(gram)  # FW's decisions and the QP's solution ignore the scale
  weights = frank_wolfe_reference(gram) if solver == "frank_wolfe" else min_norm_slsqp(gram)
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
    grads, state = run("mgda", jacobian, solver=solver)
    expected, expected_weights = mgda_reference(jacobian, None, solver, "none")
    assert relative_error(grads, expected) < 1e-4
    assert relative_error(state.weights, expected_weights) < 1e-4


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
@pytest.mark.parametrize("solver", ["frank_wolfe", "exact"])
def test_mgda_normalizations_match_paper_code(normalization, solver):
  for seed in range(3):
    jacobian, losses = random_jacobian(3, seed=seed), random_losses(3, seed)
    grads, _ = run("mgda", jacobian, losses, solver=solver, normalization=normalization)
    expected, _ = mgda_reference(jacobian, losses, solver, normalization)
    assert relative_error(grads, expected) < 1e-4


def test_mgda_exact_direction_is_the_min_norm_point():
  for seed in range(5):
    jacobian = random_jacobian(8, seed=10 + seed)
    grads, state = run("mgda", jacobian, solver="exact")
    # KKT of min ||d|| over the hull: every task gradient projects onto d at least ||d||^2.
    assert (jacobian @ grads >= (grads @ grads) * (1 - 1e-4)).all()
    np.testing.assert_allclose(np.sum(state.weights), 1.0, atol=1e-5)
    assert (np.asarray(state.weights) >= 0).all()


def test_mgda_frank_wolfe_approaches_the_exact_min_norm():
  # Frank-Wolfe converges as O(1/k): after 250 steps within a few percent of the optimum.
  for seed in range(5):
    jacobian = random_jacobian(8, seed=20 + seed)
    fw_grads, _ = run("mgda", jacobian, solver="frank_wolfe")
    exact_grads, _ = run("mgda", jacobian, solver="exact")
    exact_norm = exact_grads @ exact_grads
    assert exact_norm * (1 - 1e-5) <= fw_grads @ fw_grads <= exact_norm * 1.1


def test_mgda_ignores_gradient_scale():
  jacobian = random_jacobian(3, seed=5)
  _, state = run("mgda", jacobian, solver="exact", normalization="l2")
  _, scaled_state = run("mgda", 1e4 * jacobian, solver="exact", normalization="l2")
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


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_upgrad_matches_torchjd_formulation(num_tasks):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=30 + seed)
    grads, state = run("upgrad", jacobian)
    unit = np.eye(num_tasks) / num_tasks
    weights = dual_cone_weights_torchjd(jacobian, unit, reg_eps=1e-4).sum(axis=0)
    assert relative_error(grads, weights @ jacobian) < 1e-4
    assert relative_error(state.weights, weights) < 1e-4


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_upgrad_without_ridge_averages_primal_projections(num_tasks):
  # The paper's definition, solved in the primal: (1/T) sum_i pi_J(g_i).
  for seed in range(2):
    jacobian = random_jacobian(num_tasks, seed=40 + seed)
    grads, _ = run("upgrad", jacobian, reg_eps=0.0)
    projections = [project_onto_dual_cone_primal(jacobian, g) for g in jacobian]
    assert relative_error(grads, np.mean(projections, axis=0)) < 1e-4


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_dualproj_matches_torchjd_formulation(num_tasks):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=50 + seed)
    grads, state = run("dualproj", jacobian)
    mean = np.full((1, num_tasks), 1.0 / num_tasks)
    weights = dual_cone_weights_torchjd(jacobian, mean, reg_eps=1e-4)[0]
    assert relative_error(grads, weights @ jacobian) < 1e-4
    assert relative_error(state.weights, weights) < 1e-4


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_dualproj_without_ridge_projects_the_mean(num_tasks):
  for seed in range(2):
    jacobian = random_jacobian(num_tasks, seed=60 + seed)
    grads, _ = run("dualproj", jacobian, reg_eps=0.0)
    expected = project_onto_dual_cone_primal(jacobian, jacobian.mean(axis=0))
    assert relative_error(grads, expected) < 1e-4


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
    exact, _ = run(name, jacobian, reg_eps=0.0)
    assert (jacobian @ exact >= -1e-5 * scale).all()
    # With torchjd's ridge the QP constraint becomes (G + eps tr(G) I) v >= 0: a conflict of
    # at most eps * tr(G) * v_i is allowed, and no more.
    ridged, state = run(name, jacobian)
    allowed = 1e-4 * scale * np.asarray(state.weights) + 1e-5 * scale
    assert (jacobian @ ridged >= -allowed).all()
    assert (jacobian.mean(axis=0) @ jacobian.T < 0).any()  # the mean itself does conflict


def test_projection_methods_leave_conflict_free_inputs_alone():
  jacobian = np.abs(random_jacobian(3, seed=70))  # positive entries: no pair conflicts
  upgrad_grads, _ = run("upgrad", jacobian, reg_eps=0.0)
  dualproj_grads, _ = run("dualproj", jacobian, reg_eps=0.0)
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


@pytest.mark.parametrize("name,hparams", METHODS)
def test_degenerate_jacobians_give_finite_outputs(name, hparams):
  losses = np.array([0.5, 0.0, 2.0])  # a zero loss too
  for case, jacobian in degenerate_jacobians().items():
    grads, state = run(name, jacobian, losses, **hparams)
    assert np.isfinite(grads).all() and np.isfinite(state.weights).all(), case
    if case in ("all_zero",):
      np.testing.assert_allclose(grads, 0.0, atol=1e-30)


@pytest.mark.parametrize("name,hparams", METHODS)
def test_single_task_returns_its_gradient(name, hparams):
  jacobian = random_jacobian(1, seed=80)
  grads, state = run(name, jacobian, **hparams)
  np.testing.assert_allclose(grads, jacobian[0], rtol=1e-5)
  np.testing.assert_allclose(state.weights, [1.0], rtol=1e-5)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "dualproj"])
def test_pytree_gradients_match_flat_ones(name):
  jacobian = random_jacobian(3, seed=90)
  tree = {"encoder": {"kernel": jacobian[:, :8].reshape(3, 2, 4)}, "head": jacobian[:, 8:]}
  balancer = balancers.get(name, 3)
  state = balancer.init(jax.tree.map(lambda leaf: leaf[0], tree))
  tree_grads, _ = jax.jit(lambda t, s: balancer.update(t, s, task_losses=jnp.ones(3)))(
      jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), tree), state)
  flat_grads, _ = run(name, jacobian)
  flattened = np.concatenate(
      [np.ravel(tree_grads["encoder"]["kernel"]), np.ravel(tree_grads["head"])])
  np.testing.assert_allclose(flattened, flat_grads, rtol=1e-5, atol=1e-6)
  assert balancer.needs == "gram"

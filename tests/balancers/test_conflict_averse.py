"""cagrad, imtl_g, nash_mtl, aligned_mtl and fairgrad against float64 NumPy/SciPy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jmtl.balancers as balancers
from jmtl.balancers._conflict_averse import aligned_transform

DIM = 12  # > every T used here, so random Gram matrices are positive definite
NUM_TASKS = (2, 3, 8)


def random_jacobian(num_tasks, seed, dim=DIM):
  """Gaussian rows with different scales."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(num_tasks, dim)) * rng.uniform(0.2, 3.0, size=(num_tasks, 1))


@functools.cache
def compiled(name, num_tasks, **hparams):
  """Jitted ``(task_grads, state) -> (grads, state)``; cached so each shape compiles once."""
  balancer = balancers.get(name, num_tasks, **hparams)
  return balancer, jax.jit(lambda grads, state: balancer.update(grads, state, task_losses=None))


def run(name, jacobian, state=None, **hparams):
  """One jitted float32 update; returns (float64 grads, state)."""
  balancer, update = compiled(name, jacobian.shape[0], **hparams)
  if state is None:
    state = balancer.init(jnp.zeros(jacobian.shape[1:], jnp.float32))
  grads, state = update(jnp.asarray(jacobian, jnp.float32), state)
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
          "opposite_rows": opposite,
          "opposite_pair_only": np.stack([base[0], -base[0], 0 * base[0]]),
          "tiny": 1e-8 * base, "huge": 1e8 * base,
          "mixed_magnitudes": base * np.array([[1e-8], [1.0], [1e8]])}


# ---------------------------------------------------------------- float64 references


def cagrad_reference(jacobian, c, rescale):
  """The official cagrad(): SLSQP on the dual, then g_0 + lambda g_w, rescaled."""
  num_tasks = len(jacobian)
  gram = jacobian @ jacobian.T
  mean_weights = np.full(num_tasks, 1 / num_tasks)
  radius = c * np.sqrt(gram.mean())
  objective = lambda x: x @ gram @ mean_weights + radius * np.sqrt(x @ gram @ x)
  gradient = lambda x: gram @ mean_weights + radius * gram @ x / np.sqrt(x @ gram @ x)
  best = None
  for start in [mean_weights] + [0.9 * np.eye(num_tasks)[i] + 0.1 / num_tasks
                                 for i in range(num_tasks)]:
    result = scipy.optimize.minimize(
        objective, start, jac=gradient, method="SLSQP", bounds=[(0, 1)] * num_tasks,
        constraints={"type": "eq", "fun": lambda x: 1 - x.sum()},
        options={"ftol": 1e-15, "maxiter": 1000})
    if best is None or result.fun < best.fun:
      best = result
  combined = best.x @ jacobian
  direction = jacobian.mean(axis=0) + radius / np.linalg.norm(combined) * combined
  return direction / (1.0, 1 + c**2, 1 + c)[rescale]


def imtl_g_reference(jacobian):
  """The IMTL paper's closed form (LibMTL's IMTL gradient part) in float64."""
  units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
  differences = jacobian[0] - jacobian[1:]
  unit_differences = units[0] - units[1:]
  rest = jacobian[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
  weights = np.concatenate([[1 - rest.sum()], rest])
  return weights @ jacobian, weights


def alpha_fair_reference(gram, alpha):
  """``G w = w^(-1/alpha)`` by least squares on log w, float64 (LibMTL's FairGrad system)."""
  scale = np.trace(gram)
  result = scipy.optimize.least_squares(
      lambda log_w: gram / scale @ np.exp(log_w) - np.exp(log_w)**(-1 / alpha),
      np.zeros(len(gram)), xtol=1e-15, ftol=1e-15, gtol=1e-15)
  assert result.cost < 1e-20
  return np.exp(result.x) * scale**(-alpha / (1 + alpha))


def nash_reference(jacobian, max_norm):
  alpha = alpha_fair_reference(jacobian @ jacobian.T, 1.0)
  norm = np.linalg.norm(alpha @ jacobian)
  if max_norm > 0 and norm > max_norm:
    alpha = alpha * max_norm / norm
  return alpha @ jacobian, alpha


def aligned_reference(jacobian, scale_mode):
  """The official ProcrustesSolver.apply in float64, summed over tasks."""
  gram = jacobian @ jacobian.T
  singulars, basis = np.linalg.eigh(gram)
  tolerance = singulars.max() * len(gram) * np.finfo(np.float32).eps  # torch's default dtype
  rank = int(np.sum(singulars > tolerance))
  order = np.argsort(-singulars)
  singulars, basis = singulars[order][:rank], basis[:, order][:, :rank]
  scale = {"min": singulars[-1], "median": np.sort(singulars)[(rank - 1) // 2],
           "rmse": singulars.mean()}[scale_mode]
  transform = (basis * np.sqrt(scale) / np.sqrt(singulars)) @ basis.T
  weights = transform.sum(axis=-1)
  return weights @ jacobian, weights


# ---------------------------------------------------------------- cagrad


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_cagrad_matches_official_algorithm(num_tasks):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=seed)
    grads, _ = run("cagrad", jacobian)
    assert relative_error(grads, cagrad_reference(jacobian, 0.4, rescale=1)) < 1e-4


@pytest.mark.parametrize("c,rescale", [(0.4, 0), (0.4, 2), (0.9, 1), (0.0, 1)])
def test_cagrad_options_match_official_algorithm(c, rescale):
  for seed in range(3):
    jacobian = random_jacobian(3, seed=10 + seed)
    grads, _ = run("cagrad", jacobian, c=c, rescale=rescale)
    assert relative_error(grads, cagrad_reference(jacobian, c, rescale)) < 1e-4


def test_cagrad_maximises_the_worst_task_improvement_in_its_ball():
  rng = np.random.default_rng(0)
  for seed in range(4):
    jacobian = random_jacobian(8, seed=20 + seed)
    jacobian[4:] -= 1.2 * jacobian[:4]  # real conflicts
    mean = jacobian.mean(axis=0)
    radius = 0.4 * np.linalg.norm(mean)
    direction, _ = run("cagrad", jacobian, rescale=0)
    np.testing.assert_allclose(np.linalg.norm(direction - mean), radius, rtol=1e-4)
    # No point of the ball does better on the worst task (sampled: sphere and interior).
    samples = rng.normal(size=(4000, DIM))
    samples *= radius * rng.uniform(0.5, 1.0, size=(4000, 1))**0.1 / np.linalg.norm(
        samples, axis=1, keepdims=True)
    worst_elsewhere = np.min((mean + samples) @ jacobian.T, axis=1).max()
    assert np.min(jacobian @ direction) >= worst_elsewhere - 1e-6 * np.sum(jacobian**2)


def test_cagrad_rejects_bad_options():
  with pytest.raises(ValueError, match="rescale"):
    balancers.get("cagrad", 3, rescale=3)
  with pytest.raises(ValueError, match="c must"):
    balancers.get("cagrad", 3, c=-0.1)


# ---------------------------------------------------------------- imtl_g


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_imtl_g_matches_paper_closed_form(num_tasks):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=30 + seed)
    grads, state = run("imtl_g", jacobian)
    expected, weights = imtl_g_reference(jacobian)
    assert relative_error(grads, expected) < 1e-4
    assert relative_error(state.weights, weights) < 1e-4


def test_imtl_g_projects_equally_on_every_unit_gradient():
  for seed in range(4):
    jacobian = random_jacobian(8, seed=40 + seed)
    grads, state = run("imtl_g", jacobian)
    projections = jacobian @ grads / np.linalg.norm(jacobian, axis=1)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-4)
    np.testing.assert_allclose(np.sum(state.weights), 1.0, rtol=1e-5)


def test_imtl_g_with_dependent_gradients_uses_the_pseudo_inverse():
  jacobian = random_jacobian(3, seed=50)
  jacobian[2] = 2.0 * jacobian[0]  # same direction as task 0, twice as long
  grads, state = run("imtl_g", jacobian)
  projections = jacobian @ grads / np.linalg.norm(jacobian, axis=1)
  np.testing.assert_allclose(projections, projections.mean(), rtol=1e-4)
  np.testing.assert_allclose(np.sum(state.weights), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- nash_mtl


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_mtl_matches_scipy_solution(num_tasks, max_norm):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=60 + seed) * 10.0**(seed - 1)
    grads, state = run("nash_mtl", jacobian, max_norm=max_norm)
    expected, weights = nash_reference(jacobian, max_norm)
    assert relative_error(grads, expected) < 1e-4
    assert relative_error(state.weights, weights) < 1e-4


def test_nash_mtl_is_the_bargaining_solution():
  for seed in range(4):
    jacobian = random_jacobian(8, seed=70 + seed)
    grads, state = run("nash_mtl", jacobian, max_norm=0.0)
    # Every task's utility g_i . d is the inverse of its weight.
    np.testing.assert_allclose(np.asarray(state.weights) * (jacobian @ grads), 1.0, rtol=1e-4)
    np.testing.assert_allclose(grads @ grads, 8.0, rtol=1e-4)  # sum_i alpha_i / alpha_i


def test_nash_mtl_clips_to_max_norm():
  jacobian = random_jacobian(3, seed=80)  # unclipped norm is sqrt(3)
  grads, _ = run("nash_mtl", jacobian, max_norm=0.5)
  np.testing.assert_allclose(np.linalg.norm(grads), 0.5, rtol=1e-5)
  grads, _ = run("nash_mtl", jacobian, max_norm=10.0)
  np.testing.assert_allclose(np.linalg.norm(grads), np.sqrt(3.0), rtol=1e-4)


def test_nash_mtl_reuses_alpha_between_updates():
  jacobians = [random_jacobian(3, seed=90 + i) for i in range(4)]
  state = None
  alphas = []
  for step, jacobian in enumerate(jacobians):
    grads, state = run("nash_mtl", jacobian, state, update_weights_every=3)
    alphas.append(np.asarray(state.alpha))
    # The clipping scale always uses the current gradients.
    assert np.linalg.norm(grads) <= 1.0 + 1e-5
    assert int(state.step) == step + 1
  _, fresh = nash_reference(jacobians[0], max_norm=0.0)
  np.testing.assert_allclose(alphas[0], fresh, rtol=1e-4)
  np.testing.assert_array_equal(alphas[1], alphas[0])
  np.testing.assert_array_equal(alphas[2], alphas[0])
  np.testing.assert_allclose(alphas[3], nash_reference(jacobians[3], 0.0)[1], rtol=1e-4)


def test_nash_mtl_rejects_bad_period():
  with pytest.raises(ValueError, match="update_weights_every"):
    balancers.get("nash_mtl", 3, update_weights_every=0)


# ---------------------------------------------------------------- aligned_mtl


@pytest.mark.parametrize("num_tasks,scale_mode", [(2, "min"), (3, "min"), (8, "min"),
                                                   (8, "median"), (8, "rmse")])
def test_aligned_mtl_matches_official_solver(num_tasks, scale_mode):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=100 + seed)
    grads, state = run("aligned_mtl", jacobian, scale_mode=scale_mode)
    expected, weights = aligned_reference(jacobian, scale_mode)
    assert relative_error(grads, expected) < 1e-4
    assert relative_error(state.weights, weights) < 1e-4


@pytest.mark.parametrize("dim", [12, 2])
def test_aligned_gradients_are_orthogonal_with_equal_norms(dim):
  jacobian = random_jacobian(3, seed=110, dim=dim)  # dim 2: rank 2 of 3
  gram = jacobian @ jacobian.T
  transform = np.asarray(jax.jit(aligned_transform)(jnp.asarray(gram, jnp.float32)), np.float64)
  aligned = transform @ jacobian
  eigenvalues, eigenvectors = np.linalg.eigh(gram / np.trace(gram))
  kept = eigenvectors[:, eigenvalues > 1e-6]
  smallest_kept = eigenvalues[eigenvalues > 1e-6].min()
  # (B J)(B J)^T = lambda_min P in trace-normalised units (P: projector on G's range).
  np.testing.assert_allclose(aligned @ aligned.T / np.trace(gram), smallest_kept * kept @ kept.T,
                             atol=1e-5)


def test_aligned_mtl_rank_deficient_matches_official_solver():
  jacobian = random_jacobian(3, seed=120, dim=2)
  grads, _ = run("aligned_mtl", jacobian)
  expected, _ = aligned_reference(jacobian, "min")
  assert relative_error(grads, expected) < 1e-4


def test_aligned_mtl_rejects_unknown_scale_mode():
  with pytest.raises(ValueError, match="scale_mode"):
    balancers.get("aligned_mtl", 3, scale_mode="max")


# ---------------------------------------------------------------- fairgrad


@pytest.mark.parametrize("num_tasks,alpha", [(2, 1.0), (3, 1.0), (8, 1.0), (3, 2.0)])
def test_fairgrad_matches_least_squares(num_tasks, alpha):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=130 + seed) * 10.0**(2 * seed - 2)
    grads, state = run("fairgrad", jacobian, alpha=alpha)
    weights = alpha_fair_reference(jacobian @ jacobian.T, alpha)
    assert relative_error(grads, weights @ jacobian) < 1e-4
    assert relative_error(state.weights, weights) < 1e-4
    # Its defining system: g_i . d = w_i^(-1/alpha).
    weights_found = np.asarray(state.weights, np.float64)
    np.testing.assert_allclose(jacobian @ grads, weights_found**(-1 / alpha), rtol=1e-4)


def test_fairgrad_rejects_nonpositive_alpha():
  with pytest.raises(ValueError, match="alpha"):
    balancers.get("fairgrad", 3, alpha=0.0)


# ---------------------------------------------------------------- all five


METHODS = [("cagrad", {}), ("imtl_g", {}), ("nash_mtl", {}), ("nash_mtl", {"max_norm": 0.0}),
           ("aligned_mtl", {}), ("aligned_mtl", {"scale_mode": "median"}), ("fairgrad", {}),
           ("fairgrad", {"alpha": 4.0})]


@pytest.mark.parametrize("name,hparams", METHODS)
def test_degenerate_jacobians_give_finite_outputs(name, hparams):
  for case, jacobian in degenerate_jacobians().items():
    grads, state = run(name, jacobian, **hparams)
    assert np.isfinite(grads).all() and np.isfinite(np.asarray(state.weights)).all(), case
    if case == "all_zero":
      np.testing.assert_array_equal(grads, 0.0)


def test_nash_mtl_on_opposite_gradients_keeps_the_rest_solved():
  # g_0 = -g_1 has no bargaining solution; the ridge keeps alpha finite, and the remaining
  # task (orthogonal to the pair) still gets its utility g_2 . d = 1 / alpha_2.
  rng = np.random.default_rng(5)
  pair, other = rng.normal(size=DIM), rng.normal(size=DIM)
  other -= (other @ pair) / (pair @ pair) * pair
  jacobian = np.stack([pair, -pair, other])
  grads, state = run("nash_mtl", jacobian, max_norm=0.0)
  np.testing.assert_allclose(state.weights[2] * (jacobian[2] @ grads), 1.0, rtol=1e-3)


@pytest.mark.parametrize("name,hparams", METHODS)
def test_single_task(name, hparams):
  jacobian = random_jacobian(1, seed=140)
  grads, _ = run(name, jacobian, **hparams)
  assert np.isfinite(grads).all()
  cosine = grads @ jacobian[0] / (np.linalg.norm(grads) * np.linalg.norm(jacobian[0]))
  np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "fairgrad"])
def test_pytree_gradients_match_flat_ones(name):
  jacobian = random_jacobian(3, seed=150)
  tree = {"encoder": {"kernel": jacobian[:, :8].reshape(3, 2, 4)}, "head": jacobian[:, 8:]}
  balancer = balancers.get(name, 3)
  state = balancer.init(jax.tree.map(lambda leaf: leaf[0], tree))
  tree_grads, _ = jax.jit(lambda t, s: balancer.update(t, s, task_losses=None))(
      jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), tree), state)
  flat_grads, _ = run(name, jacobian)
  flattened = np.concatenate(
      [np.ravel(tree_grads["encoder"]["kernel"]), np.ravel(tree_grads["head"])])
  np.testing.assert_allclose(flattened, flat_grads, rtol=1e-5, atol=1e-6)
  assert balancer.needs == "gram"

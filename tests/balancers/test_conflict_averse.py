"""cagrad, imtl_g, nash_mtl, aligned_mtl and fairgrad against float64 NumPy/SciPy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.balancers as balancers
from jmtl.balancers._conflict_averse import aligned_transform

from references import alpha_fair_reference
from references import assert_update_matches
from references import cagrad_dual_reference
from references import check_pytree_matches_flat
from references import degenerate_jacobians
from references import relative_error
from references import run_update
from references import scaled_jacobian

DIM = 12  # > every T used here, so random Gram matrices are positive definite
NUM_TASKS = (2, 3, 8)

random_jacobian = functools.partial(scaled_jacobian, dim=DIM)


# ---------------------------------------------------------------- float64 references


def cagrad_reference(jacobian, c, rescale):
  """The official cagrad(): SLSQP on the dual, then g_0 + lambda g_w, rescaled."""
  gram = jacobian @ jacobian.T
  radius = c * np.sqrt(gram.mean())
  # The dual's linear term is G 1/T: each task's inner product with the mean gradient.
  weights = cagrad_dual_reference(gram, gram.mean(axis=1), radius)
  combined = weights @ jacobian
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


def nash_reference(jacobian, max_norm):
  alpha = alpha_fair_reference(jacobian @ jacobian.T, 1.0)
  norm = np.linalg.norm(alpha @ jacobian)
  if max_norm > 0 and norm > max_norm:
    alpha = alpha * max_norm / norm
  return alpha @ jacobian, alpha


def aligned_reference(jacobian, scale_mode):
  """The official ProcrustesSolver.apply in float64, averaged over tasks (jmtl's scale
  convention, as torchjd; the official code sums)."""
  gram = jacobian @ jacobian.T
  singulars, basis = np.linalg.eigh(gram)
  tolerance = singulars.max() * len(gram) * np.finfo(np.float32).eps  # torch's default dtype
  rank = int(np.sum(singulars > tolerance))
  order = np.argsort(-singulars)
  singulars, basis = singulars[order][:rank], basis[:, order][:, :rank]
  scale = {"min": singulars[-1], "median": np.sort(singulars)[(rank - 1) // 2],
           "rmse": singulars.mean()}[scale_mode]
  transform = (basis * np.sqrt(scale) / np.sqrt(singulars)) @ basis.T
  weights = transform.sum(axis=-1) / len(gram)
  return weights @ jacobian, weights


# ---------------------------------------------------------------- cagrad


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
def test_cagrad_matches_official_algorithm(num_tasks):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=seed)
    grads, _ = run_update("cagrad", jacobian)
    assert relative_error(grads, cagrad_reference(jacobian, 0.4, rescale=1)) < 1e-4


@pytest.mark.parametrize("c,rescale", [(0.4, 0), (0.4, 2), (0.9, 1), (0.0, 1)])
def test_cagrad_options_match_official_algorithm(c, rescale):
  for seed in range(3):
    jacobian = random_jacobian(3, seed=10 + seed)
    grads, _ = run_update("cagrad", jacobian, c=c, rescale=rescale)
    assert relative_error(grads, cagrad_reference(jacobian, c, rescale)) < 1e-4


def test_cagrad_maximises_the_worst_task_improvement_in_its_ball():
  rng = np.random.default_rng(0)
  for seed in range(4):
    jacobian = random_jacobian(8, seed=20 + seed)
    jacobian[4:] -= 1.2 * jacobian[:4]  # real conflicts
    mean = jacobian.mean(axis=0)
    radius = 0.4 * np.linalg.norm(mean)
    direction, _ = run_update("cagrad", jacobian, rescale=0)
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
    grads, state = run_update("imtl_g", jacobian)
    assert_update_matches(grads, state, *imtl_g_reference(jacobian))


def test_imtl_g_projects_equally_on_every_unit_gradient():
  for seed in range(4):
    jacobian = random_jacobian(8, seed=40 + seed)
    grads, state = run_update("imtl_g", jacobian)
    projections = jacobian @ grads / np.linalg.norm(jacobian, axis=1)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-4)
    np.testing.assert_allclose(np.sum(state.weights), 1.0, rtol=1e-5)


def test_imtl_g_with_dependent_gradients_uses_the_pseudo_inverse():
  jacobian = random_jacobian(3, seed=50)
  jacobian[2] = 2.0 * jacobian[0]  # same direction as task 0, twice as long
  grads, state = run_update("imtl_g", jacobian)
  projections = jacobian @ grads / np.linalg.norm(jacobian, axis=1)
  np.testing.assert_allclose(projections, projections.mean(), rtol=1e-4)
  np.testing.assert_allclose(np.sum(state.weights), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- nash_mtl


@pytest.mark.parametrize("num_tasks", NUM_TASKS)
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_mtl_matches_scipy_solution(num_tasks, max_norm):
  for seed in range(3):
    jacobian = random_jacobian(num_tasks, seed=60 + seed) * 10.0**(seed - 1)
    grads, state = run_update("nash_mtl", jacobian, max_norm=max_norm)
    assert_update_matches(grads, state, *nash_reference(jacobian, max_norm))


def test_nash_mtl_is_the_bargaining_solution():
  for seed in range(4):
    jacobian = random_jacobian(8, seed=70 + seed)
    grads, state = run_update("nash_mtl", jacobian, max_norm=0.0)
    # Every task's utility g_i . d is the inverse of its weight.
    np.testing.assert_allclose(np.asarray(state.weights) * (jacobian @ grads), 1.0, rtol=1e-4)
    np.testing.assert_allclose(grads @ grads, 8.0, rtol=1e-4)  # sum_i alpha_i / alpha_i


def test_nash_mtl_clips_to_max_norm():
  jacobian = random_jacobian(3, seed=80)  # unclipped norm is sqrt(3)
  grads, _ = run_update("nash_mtl", jacobian, max_norm=0.5)
  np.testing.assert_allclose(np.linalg.norm(grads), 0.5, rtol=1e-5)
  grads, _ = run_update("nash_mtl", jacobian, max_norm=10.0)
  np.testing.assert_allclose(np.linalg.norm(grads), np.sqrt(3.0), rtol=1e-4)


def test_nash_mtl_reuses_alpha_between_updates():
  jacobians = [random_jacobian(3, seed=90 + i) for i in range(4)]
  state = None
  alphas = []
  for step, jacobian in enumerate(jacobians):
    grads, state = run_update("nash_mtl", jacobian, state, update_weights_every=3)
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
    grads, state = run_update("aligned_mtl", jacobian, scale_mode=scale_mode)
    assert_update_matches(grads, state, *aligned_reference(jacobian, scale_mode))


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
  grads, _ = run_update("aligned_mtl", jacobian)
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
    grads, state = run_update("fairgrad", jacobian, alpha=alpha)
    weights = alpha_fair_reference(jacobian @ jacobian.T, alpha)
    assert_update_matches(grads, state, weights @ jacobian, weights)
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


DEGENERATE = degenerate_jacobians(seed=42, dim=DIM)


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name,hparams", METHODS)
def test_degenerate_jacobians_give_finite_outputs(name, hparams, case):
  grads, state = run_update(name, DEGENERATE[case], **hparams)
  assert np.isfinite(grads).all() and np.isfinite(np.asarray(state.weights)).all()
  if case == "all_zero":
    np.testing.assert_array_equal(grads, 0.0)


def test_nash_mtl_on_opposite_gradients_keeps_the_rest_solved():
  # g_0 = -g_1 has no bargaining solution; the ridge keeps alpha finite, and the remaining
  # task (orthogonal to the pair) still gets its utility g_2 . d = 1 / alpha_2.
  rng = np.random.default_rng(5)
  pair, other = rng.normal(size=DIM), rng.normal(size=DIM)
  other -= (other @ pair) / (pair @ pair) * pair
  jacobian = np.stack([pair, -pair, other])
  grads, state = run_update("nash_mtl", jacobian, max_norm=0.0)
  np.testing.assert_allclose(state.weights[2] * (jacobian[2] @ grads), 1.0, rtol=1e-3)


@pytest.mark.parametrize("name,hparams", METHODS)
def test_single_task(name, hparams):
  jacobian = random_jacobian(1, seed=140)
  grads, _ = run_update(name, jacobian, **hparams)
  assert np.isfinite(grads).all()
  cosine = grads @ jacobian[0] / (np.linalg.norm(grads) * np.linalg.norm(jacobian[0]))
  np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "fairgrad"])
def test_pytree_gradients_match_flat_ones(name):
  check_pytree_matches_flat(name, random_jacobian(3, seed=150), task_losses=None)

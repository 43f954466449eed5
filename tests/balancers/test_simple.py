"""equal_weight, sum, constant and random against float64 NumPy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jmtl.balancers as balancers

from references import assert_relative_close
from references import gaussian_jacobian
from references import run_update

DIM = 7

random_jacobian = functools.partial(gaussian_jacobian, dim=DIM)


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_equal_weight_is_mean(num_tasks):
  jacobian = random_jacobian(num_tasks, seed=num_tasks)
  grads, state = run_update("equal_weight", jacobian)
  assert_relative_close(grads, jacobian.mean(axis=0))
  np.testing.assert_allclose(state.weights, np.full(num_tasks, 1 / num_tasks), rtol=1e-6)


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_sum_is_sum(num_tasks):
  jacobian = random_jacobian(num_tasks, seed=10 + num_tasks)
  grads, state = run_update("sum", jacobian)
  assert_relative_close(grads, jacobian.sum(axis=0))
  np.testing.assert_array_equal(state.weights, np.ones(num_tasks))


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_constant_applies_user_weights(num_tasks):
  user_weights = np.random.default_rng(num_tasks).uniform(-1, 3, size=num_tasks)
  jacobian = random_jacobian(num_tasks, seed=20 + num_tasks)
  grads, state = run_update("constant", jacobian, weights=tuple(user_weights))
  assert_relative_close(grads, user_weights @ jacobian)
  np.testing.assert_allclose(state.weights, user_weights, rtol=1e-6)


def test_constant_defaults_to_ones():
  jacobian = random_jacobian(3, seed=0)
  grads, _ = run_update("constant", jacobian)
  assert_relative_close(grads, jacobian.sum(axis=0))


def test_constant_rejects_wrong_length_and_non_finite():
  with pytest.raises(ValueError, match="got 2 weights .* num_tasks=3"):
    balancers.get("constant", 3, weights=[1.0, 2.0])
  with pytest.raises(ValueError, match="finite"):
    balancers.get("constant", 2, weights=[1.0, float("nan")])


def test_loss_methods_ignore_loss_values():
  jacobian = random_jacobian(3, seed=1)
  for name in ("equal_weight", "sum", "constant"):
    first, _ = run_update(name, jacobian, losses=[1.0, 2.0, 3.0])
    second, _ = run_update(name, jacobian, losses=[100.0, 0.0, -5.0])
    np.testing.assert_array_equal(first, second)


def draw_random_weights(num_tasks, steps, **hparams):
  """Weights of ``steps`` consecutive updates, as a [steps, T] float64 array."""
  balancer = balancers.get("random", num_tasks, **hparams)
  losses = jnp.ones(num_tasks)

  def step(state, _):
    _, state = balancer.update(jnp.eye(num_tasks), state, task_losses=losses)
    return state, state.weights

  _, weights = jax.jit(lambda s: jax.lax.scan(step, s, None, length=steps))(balancer.init(None))
  return np.asarray(weights, np.float64)


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_random_output_is_weighted_sum_of_positive_simplex_weights(num_tasks):
  jacobian = random_jacobian(num_tasks, seed=30 + num_tasks)
  grads, state = run_update("random", jacobian)
  weights = np.asarray(state.weights, np.float64)
  assert np.all(weights > 0)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
  assert_relative_close(grads, weights @ jacobian)
  # The key is split, so the next step draws different weights.
  _, next_state = run_update("random", jacobian, state=state)
  assert not np.allclose(next_state.weights, state.weights)
  assert not np.array_equal(next_state.key, state.key)


def test_random_two_tasks_is_uniform_on_the_simplex():
  # Dirichlet(1, 1): the first weight is Uniform(0, 1).
  weights = draw_random_weights(2, steps=2000)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
  assert scipy.stats.kstest(weights[:, 0], "uniform").pvalue > 1e-3


def test_random_is_equal_weight_on_average_and_seeded():
  weights = draw_random_weights(4, steps=2000)
  # Each Dirichlet(1,1,1,1) marginal is Beta(1, 3): mean 1/4, std ~0.19, so the sample
  # mean of 2000 draws is within 0.02 of 1/4 with overwhelming probability.
  np.testing.assert_allclose(weights.mean(axis=0), 0.25, atol=0.02)
  np.testing.assert_array_equal(weights, draw_random_weights(4, steps=2000))
  assert not np.allclose(weights[:10], draw_random_weights(4, steps=10, seed=1))


def test_random_concentration_controls_spread():
  concentrated = draw_random_weights(3, steps=200, concentration=1e4)
  spread = draw_random_weights(3, steps=200, concentration=0.1)
  assert np.abs(concentrated - 1 / 3).max() < 0.03
  assert np.abs(spread - 1 / 3).max() > 0.4
  with pytest.raises(ValueError, match="concentration"):
    balancers.get("random", 3, concentration=0.0)


@pytest.mark.parametrize("name", ["equal_weight", "sum", "constant", "random"])
def test_nested_pytree_matches_flat(name):
  rng = np.random.default_rng(5)
  tree = {"encoder": {"kernel": rng.normal(size=(3, 2, 4))}, "head": rng.normal(size=(3, 5))}
  flat = np.concatenate([tree["encoder"]["kernel"].reshape(3, -1), tree["head"]], axis=1)
  balancer = balancers.get(name, 3)
  tree32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  state = balancer.init(jax.tree.map(lambda x: x[0], tree32))
  grads, _ = balancer.update(tree32, state, task_losses=jnp.ones(3))
  flat_grads, _ = run_update(name, flat)
  assert grads["encoder"]["kernel"].shape == (2, 4) and grads["head"].shape == (5,)
  assert_relative_close(np.concatenate([np.ravel(grads["encoder"]["kernel"]), grads["head"]]),
                        flat_grads, tol=1e-6)


@pytest.mark.parametrize("name", ["equal_weight", "sum", "constant", "random"])
@pytest.mark.parametrize("case", ["zero", "identical", "opposite", "single"])
def test_degenerate_jacobians_are_finite(name, case):
  g = random_jacobian(1, seed=3)[0]
  jacobian = {"zero": np.stack([g, np.zeros_like(g), g]),
              "identical": np.stack([g, g, g]),
              "opposite": np.stack([g, -g]),
              "single": g[None]}[case]
  grads, state = run_update(name, jacobian)
  assert np.all(np.isfinite(grads)) and np.all(np.isfinite(state.weights))
  if case == "single" and name != "constant":  # every method weighs a lone task by 1
    assert_relative_close(grads, g)

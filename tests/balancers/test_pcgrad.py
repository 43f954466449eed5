"""PCGrad against a float64 NumPy transcription of Yu et al. 2020, Algorithm 1."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.balancers as balancers
from jmtl.balancers._pcgrad import projection_orders

from references import assert_relative_close
from references import gaussian_jacobian
from references import run_update

DIM = 10

random_jacobian = functools.partial(gaussian_jacobian, dim=DIM)
# The paper's sum, so hand-derived expectations read as in Algorithm 1; the default
# (jmtl's mean convention) is checked in test_fixed_order_matches_reference.
run_pcgrad = functools.partial(run_update, "pcgrad", reduction="sum")  # (jacobian, state=None, **hparams)


def index_orders(num_tasks):
  return [[j for j in range(num_tasks) if j != i] for i in range(num_tasks)]


def reference_projections(jacobian, orders):
  """``[T, d]`` projected gradients g_i' of Algorithm 1, visiting ``orders[i]`` for task i."""
  projected = []
  for i, task_grad in enumerate(jacobian):
    current = task_grad.copy()
    for j in orders[i]:
      inner = current @ jacobian[j]
      if inner < 0:
        current = current - inner / (jacobian[j] @ jacobian[j]) * jacobian[j]
    projected.append(current)
  return np.array(projected)


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_order_matches_reference(num_tasks, seed):
  jacobian = random_jacobian(num_tasks, seed=100 * num_tasks + seed)
  expected = reference_projections(jacobian, index_orders(num_tasks))
  grads, state = run_update("pcgrad", jacobian, random_order=False)  # default: the mean
  assert_relative_close(grads, expected.mean(axis=0))
  # The weights reproduce the output exactly: the method is a Gram weighting.
  assert_relative_close(np.asarray(state.weights, np.float64) @ jacobian, expected.mean(axis=0))
  sum_grads, _ = run_pcgrad(jacobian, random_order=False, reduction="sum")
  assert_relative_close(sum_grads, expected.sum(axis=0))


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_random_order_matches_reference_with_the_drawn_orders(num_tasks):
  jacobian = random_jacobian(num_tasks, seed=7 + num_tasks)
  balancer = balancers.get("pcgrad", num_tasks)
  state = balancer.init(jnp.zeros(DIM))
  for _ in range(3):
    # Replays the key schedule: split, draw this step's orders from the second half.
    _, order_key = jax.random.split(state.key)
    orders = np.asarray(projection_orders(order_key, num_tasks))
    grads, state = run_pcgrad(jacobian, state=state)
    assert_relative_close(grads, reference_projections(jacobian, orders).sum(axis=0))


def test_random_output_is_always_one_of_the_orderings_and_varies():
  # Without looking at the drawn orders: each output must equal Algorithm 1 for SOME
  # choice of per-task orders, and more than one choice must show up across steps.
  jacobian = random_jacobian(3, seed=4, dim=3)
  candidates = {}
  for choice in itertools.product(*[itertools.permutations(row) for row in index_orders(3)]):
    candidates[choice] = reference_projections(jacobian, choice).sum(axis=0)
  assert len({tuple(np.round(v, 6)) for v in candidates.values()}) > 1  # orders matter here
  balancer = balancers.get("pcgrad", 3)
  state = balancer.init(jnp.zeros(3))
  seen = set()
  for _ in range(12):
    grads, state = run_pcgrad(jacobian, state=state)
    matches = [c for c, v in candidates.items() if np.linalg.norm(grads - v) < 1e-4 * np.linalg.norm(v)]
    assert matches, grads
    seen.add(tuple(np.round(grads, 4)))
  assert len(seen) > 1


def test_projection_orders_are_uniform_permutations_of_the_other_tasks():
  for num_tasks in (2, 3, 8):
    orders = np.asarray(projection_orders(jax.random.PRNGKey(num_tasks), num_tasks))
    assert orders.shape == (num_tasks, num_tasks - 1)
    for i, row in enumerate(orders):
      assert sorted(row) == [j for j in range(num_tasks) if j != i]
  np.testing.assert_array_equal(projection_orders(None, 4), index_orders(4))
  # T=3: task 0 visits 1 before 2 half of the time.
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  first = np.asarray(jax.vmap(lambda k: projection_orders(k, 3))(keys))[:, 0, 0]
  assert abs(np.mean(first == 1) - 0.5) < 0.05


def test_orders_change_across_steps_and_fixed_order_ignores_the_key():
  jacobian = random_jacobian(8, seed=3)
  balancer = balancers.get("pcgrad", 8)
  state = balancer.init(jnp.zeros(DIM))
  keys = []
  for _ in range(3):
    keys.append(jax.random.split(state.key)[1])
    _, state = run_pcgrad(jacobian, state=state)
  orders = [np.asarray(projection_orders(k, 8)) for k in keys]
  assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
  fixed_first, fixed_state = run_pcgrad(jacobian, random_order=False)
  fixed_second, _ = run_pcgrad(jacobian, state=fixed_state, random_order=False)
  np.testing.assert_array_equal(fixed_first, fixed_second)


def test_two_conflicting_tasks_by_hand():
  # g1 . g2 = -1: g1' = g1 + g2/2 = (.5, .5), g2' = g2 + g1 = (0, 1).
  grads, state = run_pcgrad(np.array([[1.0, 0.0], [-1.0, 1.0]]))
  np.testing.assert_allclose(grads, [0.5, 1.5], rtol=1e-6)
  np.testing.assert_allclose(state.weights, [2.0, 1.5], rtol=1e-6)  # 2 g1 + 1.5 g2


@pytest.mark.parametrize("seed", range(5))
def test_properties_that_hold(seed):
  rng = np.random.default_rng(seed)
  num_tasks = int(rng.integers(2, 6))
  jacobian = rng.normal(size=(num_tasks, 3))
  orders = index_orders(num_tasks)
  projected = reference_projections(jacobian, orders)
  grads, _ = run_pcgrad(jacobian, random_order=False)
  assert_relative_close(grads, projected.sum(axis=0))
  # Projections never lengthen a gradient, and g_i' never conflicts with the last g_j it visited.
  assert np.all(np.linalg.norm(projected, axis=1) <= np.linalg.norm(jacobian, axis=1) + 1e-12)
  for i in range(num_tasks):
    assert projected[i] @ jacobian[orders[i][-1]] >= -1e-9
  # With two tasks the final direction conflicts with neither (the paper's T=2 analysis).
  pair, _ = run_pcgrad(jacobian[:2], random_order=False)
  assert np.all(jacobian[:2] @ pair >= -1e-5 * np.linalg.norm(jacobian[:2], axis=1) * np.linalg.norm(pair))


def test_three_tasks_final_direction_can_conflict():
  # The non-conflict guarantee does not extend to T > 2: here the summed update
  # (0.5, 0.5) has a negative inner product with g_1 = (-1, -1).
  jacobian = np.array([[-1.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
  grads, _ = run_pcgrad(jacobian, random_order=False)
  np.testing.assert_allclose(grads, [0.5, 0.5], rtol=1e-6)
  assert jacobian[0] @ grads < 0


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_aligned_gradients_are_untouched(num_tasks):
  jacobian = np.abs(random_jacobian(num_tasks, seed=num_tasks))  # all inner products > 0
  grads, state = run_pcgrad(jacobian)
  assert_relative_close(grads, jacobian.sum(axis=0), tol=1e-6)
  np.testing.assert_array_equal(state.weights, np.ones(num_tasks))


@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_scale_invariant_weights(scale):
  # Every projection coefficient is a ratio of inner products: scaling all gradients by
  # the same factor leaves the weights unchanged, even for tiny gradients.
  jacobian = random_jacobian(8, seed=21)
  _, state = run_pcgrad(jacobian, random_order=False)
  _, scaled_state = run_pcgrad(scale * jacobian, random_order=False)
  np.testing.assert_allclose(scaled_state.weights, state.weights, rtol=1e-4)
  assert not np.allclose(state.weights, 1.0)  # some projections happened


def test_degenerate_cases():
  g = random_jacobian(1, seed=11)[0]
  # A zero gradient conflicts with nothing and is projected to nothing.
  grads, _ = run_pcgrad(np.stack([g, np.zeros_like(g), -0.5 * g + 0.1]))
  expected = reference_projections(np.stack([g, -0.5 * g + 0.1]), index_orders(2)).sum(axis=0)
  assert_relative_close(grads, expected)
  # Identical rows: no conflict, plain sum.
  grads, _ = run_pcgrad(np.stack([g, g, g]))
  assert_relative_close(grads, 3 * g, tol=1e-6)
  # Opposite rows cancel completely: each is projected to zero.
  grads, _ = run_pcgrad(np.stack([g, -g]))
  assert np.all(np.isfinite(grads)) and np.linalg.norm(grads) < 1e-5 * np.linalg.norm(g)
  # A single task passes through.
  grads, state = run_pcgrad(g[None])
  assert_relative_close(grads, g, tol=1e-6)
  np.testing.assert_array_equal(state.weights, [1.0])
  # All zero.
  grads, state = run_pcgrad(np.zeros((3, 4)))
  assert np.all(grads == 0) and np.all(np.isfinite(state.weights))


def test_nested_pytree_matches_flat():
  rng = np.random.default_rng(2)
  tree = {"a": {"kernel": rng.normal(size=(3, 2, 2))}, "b": rng.normal(size=(3, 4))}
  flat = np.concatenate([tree["a"]["kernel"].reshape(3, -1), tree["b"]], axis=1)
  balancer = balancers.get("pcgrad", 3, random_order=False)
  tree32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  grads, _ = jax.jit(lambda g, s: balancer.update(g, s, task_losses=jnp.ones(3)))(
      tree32, balancer.init(None))
  expected = reference_projections(flat, index_orders(3)).mean(axis=0)
  assert_relative_close(np.concatenate([np.ravel(grads["a"]["kernel"]), grads["b"]]), expected)


def test_bad_reduction():
  with pytest.raises(ValueError, match="reduction"):
    balancers.get("pcgrad", 2, reduction="max")

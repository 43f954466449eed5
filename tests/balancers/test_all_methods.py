"""The balancer contract, checked on EVERY registered method (whoever wrote it)."""

import functools
import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.balancers as balancers
from jmtl.balancers import gram_matrix
from jmtl.balancers import weighted_sum

from references import all_finite

NUM_TASKS = 3
NEEDS = ("losses", "gram", "jacobian")


def task_grads_of(kind, rng, num_tasks=NUM_TASKS):
  if kind == "array":
    return jnp.asarray(rng.normal(size=(num_tasks, 5)), jnp.float32)
  return {"encoder": {"kernel": jnp.asarray(rng.normal(size=(num_tasks, 2, 3)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(num_tasks, 3)), jnp.float32)},
          "head": {"kernel": jnp.asarray(rng.normal(size=(num_tasks, 3)), jnp.float32)}}


def one_task(tree):
  return jax.tree.map(lambda leaf: leaf[0], tree)


def assert_trees_close(actual, expected, rtol=1e-5):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.shape == e.shape and a.dtype == e.dtype
    if np.issubdtype(a.dtype, np.floating):
      np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * (np.abs(e).max(initial=0) + 1e-30))
    else:
      np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("kind", ["array", "tree"])
@pytest.mark.parametrize("name", balancers.names())
def test_contract(name, kind):
  rng = np.random.default_rng(0)
  balancer = balancers.get(name, num_tasks=NUM_TASKS)
  assert balancer.needs in NEEDS
  assert (balancer.weigh_losses is not None) == (balancer.needs == "losses")
  assert (balancer.weigh_gram is not None) == (balancer.needs == "gram")

  task_grads = task_grads_of(kind, rng)
  params = jax.tree.map(lambda leaf: leaf + 1.0, one_task(task_grads_of(kind, rng)))
  state = balancer.init(params)
  assert type(state).__name__.endswith("State") and hasattr(state, "_fields")
  assert state.weights.shape == (NUM_TASKS,) and state.weights.dtype == jnp.float32

  traces = []

  def step(task_grads, state, params, task_losses):
    traces.append(None)  # runs once per trace, not per call
    grads, new_state = balancer.update(task_grads, state, params, task_losses=task_losses)
    # The same step through ``weigh``: what a train step does for losses/gram methods.
    if balancer.needs == "losses":
      weights, weigh_state = balancer.weigh_losses(task_losses, state)
    elif balancer.needs == "gram":
      weights, weigh_state = balancer.weigh_gram(gram_matrix(task_grads), state,
                                                 task_losses=task_losses)
    else:
      return (grads, new_state), None
    return (grads, new_state), (weighted_sum(weights, task_grads), weigh_state)

  jitted = jax.jit(step)
  losses = jnp.asarray([0.9, 1.3, 0.5], jnp.float32)
  (grads, state), via_weigh = jitted(task_grads, state, params, losses)
  second_grads = task_grads_of(kind, rng)
  (grads2, state2), via_weigh2 = jitted(second_grads, state, params, 0.8 * losses)
  assert len(traces) == 1, f"{name}: update retraced (state dtypes/shapes/weak types changed?)"

  for out in (grads, grads2):
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for leaf, reference in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
      assert leaf.shape == reference.shape and leaf.dtype == reference.dtype
  assert all_finite((grads, grads2, state, state2)), name
  assert state2.weights.shape == (NUM_TASKS,) and state2.weights.dtype == jnp.float32

  if via_weigh is not None:
    assert_trees_close(via_weigh[0], grads)
    assert_trees_close(via_weigh[1], state)
    assert_trees_close(via_weigh2[0], grads2)
    assert_trees_close(via_weigh2[1], state2)

  # The state survives flatten/unflatten (what a checkpointer does) and still drives update.
  leaves, treedef = jax.tree.flatten(state)
  restored = jax.tree.unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
  assert type(restored) is type(state)
  (restored_grads, restored_state), _ = jitted(second_grads, restored, params, 0.8 * losses)
  assert_trees_close(restored_grads, grads2, rtol=1e-6)
  assert_trees_close(restored_state, state2, rtol=1e-6)


@pytest.mark.parametrize("name", balancers.names())
def test_registry_metadata_and_bad_hparam(name):
  assert re.search(r"(19|20)\d\d", balancers.papers()[name]), "paper should cite a year"
  with pytest.raises(TypeError, match="no_such_hyperparameter"):
    balancers.get(name, NUM_TASKS, no_such_hyperparameter=1)


def test_unknown_name_lists_valid_names():
  with pytest.raises(KeyError) as error:
    balancers.get("no-such-method", NUM_TASKS)
  for name in balancers.names():
    assert name in str(error.value)


@functools.cache
def compiled_two_steps(name, num_tasks):
  """Two consecutive jitted updates (the second sees an evolved state)."""
  balancer = balancers.get(name, num_tasks=num_tasks)

  def two_steps(jacobian, losses):
    state = balancer.init(jacobian[0])
    grads, state = balancer.update(jacobian, state, task_losses=losses)
    grads2, state2 = balancer.update(jacobian, state, task_losses=0.5 * losses)
    return grads, grads2, state2

  return jax.jit(two_steps)


@st.composite
def degenerate_jacobians(draw):
  """Degenerate ``[T, 4]`` Jacobians with row magnitudes anywhere in 1e-8..1e8."""
  case = draw(st.sampled_from(["zero_row", "all_zero", "identical", "opposite", "one_task",
                               "mixed_magnitudes"]))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  scale = 10.0 ** draw(st.integers(-8, 8))
  g = rng.normal(size=4)
  jacobian = {"zero_row": np.stack([g, np.zeros(4), rng.normal(size=4)]),
              "all_zero": np.zeros((3, 4)),
              "identical": np.stack([g, g, g]),
              "opposite": np.stack([g, -g, g]),
              "one_task": g[None],
              "mixed_magnitudes": rng.normal(size=(3, 4)) * 10.0 ** rng.integers(-8, 9, size=(3, 1)),
              }[case] * scale
  losses = np.asarray(draw(st.lists(st.floats(1e-3, 1e3), min_size=len(jacobian),
                                    max_size=len(jacobian))))
  return case, jacobian, losses


@pytest.mark.parametrize("name", balancers.names())
@hypothesis.settings(max_examples=15, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(example=degenerate_jacobians())
def test_degenerate_jacobians_give_finite_outputs(name, example):
  case, jacobian, losses = example
  try:
    run = compiled_two_steps(name, jacobian.shape[0])
  except ValueError as error:
    # Some methods (e.g. robust aggregators) cannot work with one task: they must say so
    # when built, naming the constraint, instead of returning garbage.
    assert case == "one_task" and "num_tasks" in str(error), (name, error)
    return
  grads, grads2, state = run(jnp.asarray(jacobian, jnp.float32), jnp.asarray(losses, jnp.float32))
  assert all_finite((grads, grads2, state)), (name, case, jacobian)

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


# ---------------------------------------------------------------- absent tasks


def task_axes(name, params, num_tasks=NUM_TASKS):
  """Per state leaf, the axes that grow with T (the per-task entries), from two inits."""
  small = jax.tree.leaves(balancers.get(name, num_tasks).init(params))
  large = jax.tree.leaves(balancers.get(name, num_tasks + 1).init(params))
  return [tuple(a for a, (n, m) in enumerate(zip(np.shape(x), np.shape(y))) if n != m)
          for x, y in zip(small, large)]


def take_tasks(leaf, axes, index):
  for axis in axes:
    leaf = np.take(leaf, index, axis=axis)
  return leaf


@functools.cache
def masked_update(name):
  balancer = balancers.get(name, NUM_TASKS)
  return jax.jit(lambda g, s, l, p: balancer.update(g, s, task_losses=l, present=p))


@pytest.mark.parametrize("name", balancers.names())
def test_absent_task_is_left_out(name):
  rng = np.random.default_rng(3)
  jacobian = jnp.asarray(rng.normal(size=(NUM_TASKS, 6)) * [[1e-2], [1.0], [30.0]], jnp.float32)
  losses = jnp.asarray([0.7, 1.9, 0.4], jnp.float32)
  present = jnp.asarray([True, False, True])
  kept = np.asarray([0, 2])
  balancer = balancers.get(name, NUM_TASKS)
  update = masked_update(name)
  # One step with every task present, so the state has per-task values worth keeping.
  _, state = update(jacobian, balancer.init(jacobian[0]), losses, jnp.ones(NUM_TASKS, bool))
  combined, new_state = update(0.5 * jacobian, state, 0.8 * losses, present)

  weights = balancers.applied_weights(new_state)
  if weights is not None:
    assert weights[1] == 0.0, (name, weights)
  # The update descends from the present tasks: never zero because one task is missing.
  assert np.linalg.norm(combined) > 1e-6 * np.linalg.norm(jacobian[kept]), name
  for axes, old, new, field in zip(task_axes(name, jacobian[0]), jax.tree.leaves(state),
                                   jax.tree.leaves(new_state), leaf_fields(new_state)):
    if axes and field != "weights":
      np.testing.assert_array_equal(take_tasks(np.asarray(new), axes, [1]),
                                    take_tasks(np.asarray(old), axes, [1]), err_msg=f"{name}.{field}")

  # From a fresh state, the result is the method run on the present tasks only, whenever
  # the fresh (T-1)-task state is the present tasks' share of the T-task one.
  fresh = balancer.init(jacobian[0])
  try:
    smaller = balancers.get(name, NUM_TASKS - 1)
  except ValueError:  # cannot run on T-1 tasks (Krum, trimmed mean): the mean of the present
    masked, _ = update(jacobian, fresh, losses, present)
    np.testing.assert_allclose(masked, jacobian[kept].mean(axis=0), rtol=1e-5)
    return
  smaller_state = smaller.init(jacobian[0])
  shared = jax.tree.structure(fresh) == jax.tree.structure(smaller_state) and all(
      np.allclose(take_tasks(np.asarray(a), axes, kept), np.asarray(b))
      for a, b, axes in zip(jax.tree.leaves(fresh), jax.tree.leaves(smaller_state),
                            task_axes(name, jacobian[0])))
  if shared:
    masked, _ = update(jacobian, fresh, losses, present)
    alone, _ = smaller.update(jacobian[kept], smaller_state, task_losses=losses[kept])
    np.testing.assert_allclose(masked, alone, rtol=2e-5, atol=1e-6 * np.abs(alone).max(), err_msg=name)


def leaf_fields(state):
  """The top-level state field each leaf belongs to, in leaf order."""
  return [field for field in state._fields for _ in jax.tree.leaves(getattr(state, field))]


@pytest.mark.parametrize("name", balancers.names())
def test_no_task_present_gives_zero_update_and_keeps_state(name):
  jacobian = jnp.asarray(np.random.default_rng(4).normal(size=(NUM_TASKS, 6)), jnp.float32)
  losses = jnp.asarray([0.7, 1.9, 0.4], jnp.float32)
  state = balancers.get(name, NUM_TASKS).init(jacobian[0])
  combined, new_state = masked_update(name)(jacobian, state, losses, jnp.zeros(NUM_TASKS, bool))
  np.testing.assert_array_equal(combined, 0.0)
  for old, new, field in zip(jax.tree.leaves(state), jax.tree.leaves(new_state),
                             leaf_fields(new_state)):
    if field == "weights":
      np.testing.assert_array_equal(new, 0.0)
    else:
      np.testing.assert_array_equal(new, old, err_msg=f"{name}.{field}")


def test_info_and_applied_weights_are_declared():
  for name in balancers.names():
    method = balancers.info(name)
    assert method.name == name and method.paper == balancers.papers()[name]
    assert method.needs == balancers.get(name, NUM_TASKS).needs
  assert {n for n in balancers.names() if balancers.info(n).param_shaped_state} == {
      "moco", "db_mtl", "excess_mtl"}
  assert balancers.applied_weights(balancers.get("trimmed_mean", 3).init(None)) is not None
  assert balancers.applied_weights(jax.numpy.zeros(3)) is None


def test_deprecated_weigh_alias_warns_and_works():
  balancer = balancers.get("mgda", 2)
  with pytest.warns(DeprecationWarning, match="weigh_gram"):
    weigh = balancer.weigh
  assert weigh is balancer.weigh_gram


def test_as_optax_chains_with_sgd():
  # Two quadratic tasks sharing x: the chained transform must take the MGDA step, scaled.
  import optax
  targets = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
  transform = optax.chain(balancers.as_optax(balancers.get("mgda", 2)), optax.sgd(0.1))
  x = jnp.zeros(2)
  state = transform.init(x)
  task_grads = x[None] - targets
  updates, state = transform.update(task_grads, state, x, task_losses=jnp.ones(2))
  expected_direction, _ = balancers.get("mgda", 2).update(task_grads, balancers.get(
      "mgda", 2).init(x))
  np.testing.assert_allclose(updates, -0.1 * expected_direction, rtol=1e-6)
  for _ in range(200):
    task_grads = x[None] - targets
    updates, state = transform.update(task_grads, state, x, task_losses=jnp.ones(2))
    x = optax.apply_updates(x, updates)
  # Pareto stationary: x on the segment between the two targets.
  assert np.all(x >= -1e-3) and abs(x[0] + x[1] / 2 - 1.0) < 1e-2


# ---------------------------------------------------------------- scale and precision

# MoCo's lambda step is gamma_k * (Y Y^T) lambda: its size, hence its direction after one
# step, depends on the gradients' scale by design (the paper's step sizes are absolute).
SCALE_DEPENDENT = {"moco"}


@pytest.mark.parametrize("name", balancers.names())
def test_direction_does_not_depend_on_the_gradients_scale(name):
  rng = np.random.default_rng(5)
  jacobian = rng.normal(size=(NUM_TASKS, 6)) * [[1e-2], [1.0], [1e2]]
  losses = jnp.asarray([0.7, 1.9, 0.4], jnp.float32)
  outputs = []
  for scale in (1e-4, 1.0, 1e4):
    scaled = jnp.asarray(jacobian * scale, jnp.float32)
    balancer = balancers.get(name, NUM_TASKS)
    for present in (None, jnp.asarray([True, False, True])):
      combined, _ = masked_update(name)(scaled, balancer.init(scaled[0]), losses,
                                        jnp.ones(NUM_TASKS, bool) if present is None else present)
      outputs.append(np.asarray(combined, np.float64) / scale)
  if name in SCALE_DEPENDENT:
    # Not invariant, and the test says so: the directions do differ across scales.
    assert min(o @ outputs[2] / np.linalg.norm(o) / np.linalg.norm(outputs[2])
               for o in outputs[0::2]) < 1 - 1e-4
    return
  by_mask = [outputs[0::2], outputs[1::2]]
  for group in by_mask:
    for found in group[1:]:
      cosine = found @ group[0] / (np.linalg.norm(found) * np.linalg.norm(group[0]))
      assert cosine > 1 - 1e-4, (name, cosine)


@pytest.mark.parametrize("name", balancers.names())
def test_runs_under_x64(name):
  with jax.enable_x64(True):
    jacobian = jnp.asarray(np.random.default_rng(6).normal(size=(NUM_TASKS, 6)), jnp.float32)
    losses = jnp.asarray([0.7, 1.9, 0.4], jnp.float32)
    balancer = balancers.get(name, NUM_TASKS)
    step = jax.jit(lambda g, s, l, p: balancer.update(g, s, task_losses=l, present=p))
    state = balancer.init(jacobian[0])
    for present in ([True, True, True], [True, False, True]):
      combined, state = step(jacobian, state, losses, jnp.asarray(present))
      assert combined.dtype == jnp.float32 and np.all(np.isfinite(combined)), name
    weights = balancers.applied_weights(state)
    assert weights is None or weights.dtype == jnp.float32


# ---------------------------------------------------------------- scale convention


def _norm_fixed_by_equation(num_tasks, g, max_norm=np.inf):
  # Nash-MTL (G a = 1/a) and FairGrad with alpha = 1 (G a = a^-1): for T identical g the
  # solution is a_i = 1 / (sqrt(T) |g|), so d = sqrt(T) g / |g| whatever |g| is; Nash-MTL
  # then clips to max_norm. Dividing by anything would change the papers' step.
  return min(np.sqrt(num_tasks), max_norm) / np.linalg.norm(g)


# The README's scale convention: T identical gradients g give back g (weights summing to 1),
# so a learning rate means the same thing across methods. The exceptions, each with why:
SCALE_EXCEPTIONS = {
    # The user's weights, applied as given (default ones): by definition, T g.
    "sum": lambda t, g: t, "constant": lambda t, g: t, "linear_scalarization": lambda t, g: t,
    # CAGrad: d = (1 + c) g around the mean, divided by 1 + c^2 (rescale=1, official code).
    "cagrad": lambda t, g: 1.4 / (1.0 + 0.4**2),
    "nash_mtl": lambda t, g: _norm_fixed_by_equation(t, g, max_norm=1.0),
    "fairgrad": _norm_fixed_by_equation,
}
# Methods whose buffer of tracked gradients starts at 0 (the papers' and authors' codes, no
# bias correction): they give g back once the buffer has filled, not on the first step.
BUFFERED = {"moco": 400, "db_mtl": 300}


@functools.cache
def jitted_update(name, num_tasks, **hparams):
  balancer = balancers.get(name, num_tasks, **hparams)
  return balancer, jax.jit(lambda g, s, l, p: balancer.update(g, s, task_losses=l, present=p))


@pytest.mark.parametrize("name", balancers.names())
def test_identical_gradients_give_back_the_gradient(name):
  g = np.random.default_rng(7).normal(size=6)
  jacobian = jnp.asarray(np.stack([g] * NUM_TASKS), jnp.float32)
  # Unit losses: STCH and DB-MTL weigh the gradients of log losses, g_i / L_i.
  losses = jnp.ones(NUM_TASKS)
  expected = SCALE_EXCEPTIONS.get(name, lambda t, g: 1.0)(NUM_TASKS, g) * g
  balancer, update = jitted_update(name, NUM_TASKS)
  for present in (np.ones(NUM_TASKS, bool), np.asarray([True, False, True])):
    state = balancer.init(jacobian[0])
    for _ in range(BUFFERED.get(name, 1)):
      combined, state = update(jacobian, state, losses, jnp.asarray(present))
    if name not in SCALE_EXCEPTIONS:  # the mean of the present tasks is g again
      np.testing.assert_allclose(combined, g, rtol=2e-3, atol=1e-5, err_msg=name)
    elif present.all():
      np.testing.assert_allclose(combined, expected, rtol=2e-3, atol=1e-5, err_msg=name)
  if name not in SCALE_EXCEPTIONS:
    weights = balancers.applied_weights(state)
    if weights is not None and name not in BUFFERED:  # DB-MTL's weigh the buffer
      np.testing.assert_allclose(np.sum(weights), 1.0, rtol=2e-3, err_msg=name)


def test_cagrad_rescale_two_gives_back_the_gradient():
  g = np.random.default_rng(8).normal(size=5)
  balancer = balancers.get("cagrad", NUM_TASKS, rescale=2)
  jacobian = jnp.asarray(np.stack([g] * NUM_TASKS), jnp.float32)
  combined, _ = balancer.update(jacobian, balancer.init(jacobian[0]))
  np.testing.assert_allclose(combined, g, rtol=1e-5)


def takes_reduction(name):
  try:
    balancers.get(name, NUM_TASKS, reduction="sum")
  except TypeError:  # get's error for an hparam the method does not take
    return False
  return True


WITH_REDUCTION = [name for name in balancers.names() if takes_reduction(name)]


def test_every_method_on_a_paper_sum_scale_offers_it():
  # Every method whose paper sums the (edited) task gradients keeps that scale selectable.
  assert set(WITH_REDUCTION) >= {"pcgrad", "gradvac", "graddrop", "aligned_mtl", "config",
                                 "db_mtl", "excess_mtl", "dwa", "uncertainty", "imtl_l", "stch"}


@pytest.mark.parametrize("name", WITH_REDUCTION)
def test_sum_reduction_is_the_mean_times_the_present_tasks(name):
  # Same direction and same state dynamics: only the update's scale differs, by #present.
  rng = np.random.default_rng(9)
  jacobian = jnp.asarray(rng.normal(size=(NUM_TASKS, 6)) * [[1e-2], [1.0], [30.0]], jnp.float32)
  losses = jnp.asarray([0.7, 1.9, 0.4], jnp.float32)
  runs = {}
  for reduction in ("mean", "sum"):
    balancer, update = jitted_update(name, NUM_TASKS, reduction=reduction)
    state, outputs = balancer.init(jacobian[0]), []
    for step, present in enumerate(([True] * 3, [True, False, True], [True] * 3)):
      combined, state = update((1.0 + step) * jacobian, state, (0.5 + step) * losses,
                               jnp.asarray(present))
      outputs.append(np.asarray(combined) / (sum(present) if reduction == "sum" else 1))
    runs[reduction] = outputs
  for mean, total in zip(runs["mean"], runs["sum"]):
    np.testing.assert_allclose(total, mean, rtol=1e-5, atol=1e-6 * np.abs(mean).max(), err_msg=name)


@pytest.mark.parametrize("name", WITH_REDUCTION)
def test_unknown_reduction_is_refused(name):
  with pytest.raises(ValueError, match="reduction"):
    balancers.get(name, NUM_TASKS, reduction="max")

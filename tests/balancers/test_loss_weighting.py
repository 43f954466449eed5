"""Loss-level weightings vs float64 NumPy references of the papers, over several steps.

The references give the papers' weights divided by T: jmtl's scale convention (README), under
which T identical gradients give g back; ``reduction="sum"`` (the papers' scale) is checked to
be T times that in test_all_methods.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.balancers as balancers

from references import NumpyAdam
from references import assert_close
from references import check_against_reference
from references import check_degenerate_inputs_stay_finite
from references import check_nested_pytree_matches_flat
from references import check_state_round_trips
from references import softmax

TASK_COUNTS = (2, 3, 8)


# ---------------------------------------------------------------- references (float64)


def reference_uncertainty(losses, lr, init=0.0):
  """Kendall et al.: weights exp(-s) (/ T), then an Adam step on sum exp(-s) L + s."""
  s, adam, out = np.full(losses.shape[1], init), NumpyAdam(lr), []
  for loss in losses:
    out.append(np.exp(-s) / losses.shape[1])
    s = adam.step(s, 1.0 - np.exp(-s) * loss)
  return np.stack(out)


def reference_imtl_l(losses, lr):
  """IMTL-L: weights e^s (/ T), then an Adam step on sum e^s L - s."""
  s, adam, out = np.zeros(losses.shape[1]), NumpyAdam(lr), []
  for loss in losses:
    out.append(np.exp(s) / losses.shape[1])
    s = adam.step(s, np.exp(s) * loss - 1.0)
  return np.stack(out)


def reference_dwa(losses, temperature, window):
  """Liu et al. 2019 eq. (8) with per-window ("epoch") mean losses, divided by T."""
  steps, num_tasks = losses.shape
  out = []
  for step in range(steps):
    done = step // window  # windows completed before this step
    if done < 2:
      out.append(np.full(num_tasks, 1.0 / num_tasks))
      continue
    last = losses[(done - 1) * window:done * window].mean(0)
    before = losses[(done - 2) * window:(done - 1) * window].mean(0)
    out.append(softmax(last / before / temperature))
  return np.stack(out)


def reference_gls(losses):
  """d/dL (prod L)^(1/T) = (prod L)^(1/T) / (T L)."""
  num_tasks = losses.shape[1]
  return np.prod(losses, axis=1, keepdims=True) ** (1 / num_tasks) / (num_tasks * losses)


# ---------------------------------------------------------------- linear scalarisation


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_linear_scalarization_matches_reference(num_tasks):
  user = np.linspace(0.5, 2.0, num_tasks)
  check_against_reference("linear_scalarization", {"weights": list(user)},
                          lambda losses: np.tile(user, (len(losses), 1)), num_tasks)


def test_linear_scalarization_defaults_to_ones_and_validates_length():
  state = balancers.get("linear_scalarization", 3).init(jnp.zeros(2))
  np.testing.assert_array_equal(state.weights, np.ones(3))
  with pytest.raises(ValueError, match="got 2 weights"):
    balancers.get("linear_scalarization", 3, weights=[1.0, 2.0])
  with pytest.raises(ValueError, match="finite"):
    balancers.get("linear_scalarization", 2, weights=[1.0, float("nan")])


# ---------------------------------------------------------------- uncertainty and IMTL-L


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_uncertainty_matches_reference(num_tasks):
  weights, _ = check_against_reference(
      "uncertainty", {"lr": 0.1, "init_log_variance": 0.3},
      lambda losses: reference_uncertainty(losses, 0.1, 0.3), num_tasks)
  assert np.ptp(weights[-1]) * num_tasks > 0.05  # the state really evolved (weights / T)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_imtl_l_matches_reference(num_tasks):
  weights, _ = check_against_reference("imtl_l", {"lr": 0.1},
                                       lambda losses: reference_imtl_l(losses, 0.1), num_tasks)
  assert np.ptp(weights[-1]) * num_tasks > 0.05


def _converge(name, losses, steps=400):
  """Runs ``steps`` updates on constant losses with a fast optimiser; the final state."""
  balancer = balancers.get(name, len(losses), lr=0.05)
  losses = jnp.asarray(losses, jnp.float32)

  def body(state, _):
    return balancer.weigh_losses(losses, state)[1], None

  state, _ = jax.lax.scan(body, balancer.init(jnp.zeros(2)), None, length=steps)
  return state


def test_uncertainty_log_variances_converge_to_log_losses():
  losses = np.array([0.3, 1.0, 4.0])
  state = _converge("uncertainty", losses)
  np.testing.assert_allclose(state.log_variances, np.log(losses), atol=0.02)


def test_imtl_l_scaled_losses_converge_to_one():
  losses = np.array([0.3, 1.0, 4.0])
  state = _converge("imtl_l", losses)
  np.testing.assert_allclose(np.exp(state.log_scales) * losses, np.ones(3), atol=0.03)


@pytest.mark.parametrize("name", ["uncertainty", "imtl_l"])
def test_learned_scale_of_absent_task_does_not_move(name):
  balancer = balancers.get(name, 2, lr=0.1)
  state = balancer.init(jnp.zeros(2))
  for _ in range(3):
    _, state = balancer.weigh_losses(jnp.array([0.0, 2.0]), state)
  scales = state.log_variances if name == "uncertainty" else state.log_scales
  assert scales[0] == 0.0 and abs(scales[1]) > 0.1


# ---------------------------------------------------------------- DWA


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("window", [1, 3])
def test_dwa_matches_reference(num_tasks, window):
  weights, _ = check_against_reference(
      "dwa", {"temperature": 2.0, "window": window},
      lambda losses: reference_dwa(losses, 2.0, window), num_tasks, steps=12)
  # equal until two windows exist
  np.testing.assert_allclose(weights[:2 * window], 1.0 / num_tasks, rtol=1e-6)
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)


def test_dwa_favours_the_task_whose_loss_fell_least():
  balancer = balancers.get("dwa", 2)
  state = balancer.init(jnp.zeros(2))
  for losses in ([1.0, 1.0], [1.0, 0.5], [1.0, 0.5]):
    weights, state = balancer.weigh_losses(jnp.array(losses), state)
  assert weights[0] > 0.5 > weights[1]


def test_dwa_absent_task_keeps_its_previous_average():
  balancer = balancers.get("dwa", 2)
  state = balancer.init(jnp.zeros(2))
  for losses in ([2.0, 1.0], [0.0, 0.5], [1.0, 1.0]):  # task 0 absent at step 2
    weights, state = balancer.weigh_losses(jnp.array(losses), state)
  # r = (2/2, 0.5/1): the carried average gives task 0 ratio 1, not 0 or inf.
  assert_close(weights, softmax(np.array([1.0, 0.5]) / 2.0))


# ---------------------------------------------------------------- RLW


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_rlw_is_softmax_of_the_state_keys_normal_draw(num_tasks):
  def reference(losses):
    key, out = jax.random.PRNGKey(7), []
    for _ in losses:
      key, draw_key = jax.random.split(key)
      out.append(softmax(np.asarray(jax.random.normal(draw_key, (num_tasks,)), np.float64)))
    return np.stack(out)

  weights, _ = check_against_reference("rlw", {"seed": 7}, reference, num_tasks)
  assert np.all(weights > 0) and not np.allclose(weights[0], weights[1])


def test_rlw_weights_average_to_equal_weighting():
  balancer = balancers.get("rlw", 3, seed=1)

  def body(state, _):
    weights, state = balancer.weigh_losses(jnp.ones(3), state)
    return state, weights

  _, draws = jax.lax.scan(body, balancer.init(jnp.zeros(2)), None, length=3000)
  np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(draws.mean(0), np.full(3, 1 / 3), atol=0.01)
  other = balancers.get("rlw", 3, seed=2)
  assert not np.allclose(other.weigh_losses(jnp.ones(3), other.init(jnp.zeros(2)))[0], draws[0])


# ---------------------------------------------------------------- GLS


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_gls_matches_reference(num_tasks):
  check_against_reference("gls", {}, reference_gls, num_tasks)


def test_gls_weights_are_the_gradient_of_the_geometric_mean():
  losses = np.array([0.4, 1.7, 2.5])
  geometric_mean = lambda l: np.prod(l) ** (1 / len(l))
  step = 1e-6
  numeric = [(geometric_mean(losses + step * e) - geometric_mean(losses - step * e)) / (2 * step)
             for e in np.eye(3)]
  balancer = balancers.get("gls", 3)
  weights, _ = balancer.weigh_losses(jnp.asarray(losses, jnp.float32), balancer.init(jnp.zeros(1)))
  assert_close(weights, numeric)
  assert_close(np.dot(weights, losses), geometric_mean(losses))


def test_gls_leaves_absent_tasks_out_of_the_geometric_mean():
  balancer = balancers.get("gls", 3)
  weights, _ = balancer.weigh_losses(jnp.array([0.0, 1.0, 4.0]), balancer.init(jnp.zeros(1)))
  assert_close(weights, [0.0, 2.0 / 2 / 1.0, 2.0 / 2 / 4.0])


# ---------------------------------------------------------------- every method


NAMES = ("linear_scalarization", "uncertainty", "imtl_l", "dwa", "rlw", "gls")


@pytest.mark.parametrize("name", NAMES)
def test_registered_as_a_losses_method(name):
  balancer = balancers.get(name, 3)
  assert balancer.needs == "losses" and balancer.weigh_losses is not None
  assert name in balancers.papers() and balancers.papers()[name]


@pytest.mark.parametrize("name", NAMES)
def test_nested_pytree_equals_flat_matrix(name):
  check_nested_pytree_matches_flat(name, {}, weights_rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs_stay_finite(name):
  check_degenerate_inputs_stay_finite(name, {})


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_tree_flatten(name):
  check_state_round_trips(name, {})

"""STCH, FAMO, DB-MTL and ExcessMTL vs float64 NumPy references, over several steps.

STCH, DB-MTL and ExcessMTL's references are the papers' (and LibMTL's) weights divided by T:
jmtl's scale convention (README); their ``reduction="sum"`` is T times that
(test_all_methods.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.balancers as balancers

from references import NumpyAdam
from references import PROBLEM_DIM as DIM
from references import assert_close
from references import check_against_reference
from references import check_degenerate_inputs_stay_finite
from references import check_nested_pytree_matches_flat
from references import check_state_round_trips
from references import random_problem
from references import run_steps
from references import softmax

TASK_COUNTS = (2, 3, 8)


# ---------------------------------------------------------------- references (float64)


def stch_objective(losses, nadir, mu):
  """LibMTL's STCH objective ``T mu logsumexp(log(L / n) / mu)``."""
  scaled = np.log(losses / nadir) / mu
  return len(losses) * mu * (np.max(scaled) + np.log(np.sum(np.exp(scaled - np.max(scaled)))))


def reference_stch(losses, mu, warmup_steps, nadir_steps, ideal_point=False):
  """LibMTL STCH with epochs as steps: log-loss warm-up, nadir average, then d(STCH)/dL; / T."""
  seen, ideal, out = [], np.inf, []
  for step, loss in enumerate(losses):
    if step < warmup_steps + nadir_steps:
      if step >= warmup_steps:
        seen.append(loss)
      out.append(1.0 / loss / len(loss))
      continue
    nadir = np.mean(seen, axis=0) if seen else np.ones_like(loss)
    objectives = np.log(loss / nadir)
    if ideal_point:
      ideal = np.minimum(ideal, objectives)
      objectives = objectives - ideal
    out.append(softmax(objectives / mu) / loss)
  return np.stack(out)


def reference_famo(losses, w_lr, gamma):
  """Liu et al. 2023 (authors' famo.py), with each logit step done at the next update."""
  logits = np.zeros(losses.shape[1])
  adam, previous, out = NumpyAdam(w_lr, weight_decay=gamma), None, []
  for loss in losses:
    if previous is not None:
      delta = np.log(previous + 1e-8) - np.log(loss + 1e-8)
      z = softmax(logits)
      jacobian = np.diag(z) - np.outer(z, z)  # d softmax / d logits
      logits = adam.step(logits, jacobian.T @ delta)
    z = softmax(logits)
    d = loss + 1e-8
    out.append(z / d / np.sum(z / d))
    previous = loss
  return np.stack(out)


def reference_db_mtl(jacobians, losses, beta, beta_sigma):
  """Lin et al. 2023 (LibMTL DB_MTL): EMA of grad log L, scaled to the largest norm; / T."""
  buffer, outputs, alphas = np.zeros(jacobians.shape[1:]), [], []
  for step, (jacobian, loss) in enumerate(zip(jacobians, losses), start=1):
    log_grads = jacobian / (loss + 1e-8)[:, None]
    buffer = log_grads + beta / step ** beta_sigma * (buffer - log_grads)
    norms = np.linalg.norm(buffer, axis=1)
    alpha = norms.max() / (norms + 1e-8) / len(norms)
    outputs.append(alpha @ buffer)
    alphas.append(alpha)
  return np.stack(outputs), np.stack(alphas)


def reference_excess_mtl(jacobians, robust_step_size):
  """He et al. 2024 (authors' LibMTL ExcessMTL): AdaGrad excess risks, multiplicative weights
  (summing to 1, the paper's divided by T)."""
  num_tasks = jacobians.shape[1]
  weights, squared_sum, initial, out = np.full(num_tasks, 1.0 / num_tasks), 0.0, None, []
  for jacobian in jacobians:
    squared_sum = squared_sum + jacobian ** 2
    excess = np.sum(jacobian ** 2 / np.sqrt(squared_sum + 1e-7), axis=1)
    if initial is None:
      initial = excess
    else:
      weights = weights * np.exp(robust_step_size * excess / initial)
      weights = weights / weights.sum()
    out.append(weights)
  return np.stack(out)


# ---------------------------------------------------------------- STCH


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("mu,ideal_point", [(1.0, False), (0.3, True)])
def test_stch_matches_reference(num_tasks, mu, ideal_point):
  hparams = dict(mu=mu, warmup_steps=2, nadir_steps=3, ideal_point=ideal_point)
  check_against_reference("stch", hparams, lambda losses: reference_stch(losses, **hparams),
                          num_tasks, steps=10)


def test_stch_weights_are_the_gradient_of_the_objective():
  losses = np.array([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0], [0.7, 2.5, 1.2]])
  balancer = balancers.get("stch", 3, mu=0.5, warmup_steps=0, nadir_steps=2)
  state = balancer.init(jnp.zeros(1))
  for loss in losses:
    weights, state = balancer.weigh_losses(jnp.asarray(loss, jnp.float32), state)
  nadir, step = losses[:2].mean(0), 1e-6
  numeric = [(stch_objective(losses[2] + step * e, nadir, 0.5)
              - stch_objective(losses[2] - step * e, nadir, 0.5)) / (2 * step) for e in np.eye(3)]
  assert_close(weights, np.asarray(numeric) / 3)  # jmtl's mean: the objective's gradient / T


def test_stch_small_mu_weighs_the_worst_normalised_loss():
  balancer = balancers.get("stch", 3, mu=0.01, warmup_steps=0, nadir_steps=1)
  state = balancer.init(jnp.zeros(1))
  _, state = balancer.weigh_losses(jnp.array([1.0, 1.0, 1.0]), state)
  weights, _ = balancer.weigh_losses(jnp.array([0.5, 3.0, 2.0]), state)
  # Tchebycheff limit: gradient T / L_k on the worst task k only, / T (jmtl's mean).
  assert_close(weights, [0.0, 1 / 3.0, 0.0], rtol=1e-3)


def test_stch_without_nadir_steps_does_not_normalise():
  balancer = balancers.get("stch", 2, warmup_steps=1, nadir_steps=0)
  state = balancer.init(jnp.zeros(1))
  _, state = balancer.weigh_losses(jnp.array([5.0, 5.0]), state)
  weights, _ = balancer.weigh_losses(jnp.array([1.0, 3.0]), state)
  assert_close(weights, softmax(np.log([1.0, 3.0])) / np.array([1.0, 3.0]))


# ---------------------------------------------------------------- FAMO


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_famo_matches_reference(num_tasks):
  weights, state = check_against_reference("famo", {"w_lr": 0.1, "gamma": 0.01},
                                           lambda losses: reference_famo(losses, 0.1, 0.01),
                                           num_tasks)
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
  assert np.ptp(np.asarray(state.logits)) > 0.05  # the logits really moved


def test_famo_weight_moves_to_the_task_that_stops_improving():
  balancer = balancers.get("famo", 3, w_lr=0.1)
  state = balancer.init(jnp.zeros(1))
  for step in range(10):  # task 0 is stuck, tasks 1 and 2 keep improving
    losses = jnp.array([1.0, 0.9 ** step, 0.8 ** step])
    _, state = balancer.weigh_losses(losses, state)
  z = jax.nn.softmax(state.logits)
  assert z[0] > z[1] > z[2]


def test_famo_first_update_leaves_the_logits_and_adam_untouched():
  balancer = balancers.get("famo", 2)
  initial = balancer.init(jnp.zeros(1))
  weights, state = balancer.weigh_losses(jnp.array([1.0, 4.0]), initial)
  np.testing.assert_array_equal(state.logits, 0.0)
  assert_close(weights, [0.8, 0.2])  # z = 1/2 each: w proportional to 1/L
  for new, old in zip(jax.tree.leaves(state.optimizer_state),
                      jax.tree.leaves(initial.optimizer_state)):
    np.testing.assert_array_equal(new, old)


def test_famo_absent_task_gets_no_weight_and_no_logit_signal():
  balancer = balancers.get("famo", 2)
  state = balancer.init(jnp.zeros(1))
  absent = jnp.array([False, True])
  _, state = balancer.weigh_losses(jnp.array([5.0, 1.0]), state, present=absent)
  weights, state = balancer.weigh_losses(jnp.array([2.0, 1.0]), state)
  np.testing.assert_array_equal(state.logits, 0.0)  # no delta from an absent task
  weights, _ = balancer.weigh_losses(jnp.array([7.0, 1.0]), state, present=absent)
  assert_close(weights, [0.0, 1.0])


def test_famo_lower_bounds_match_the_authors_toy_weights():
  # D_i = L_i - L*_i: with the toy's negative losses and bounds the weights stay defined.
  bounds = np.array([-2.1, -21.0])
  losses = np.array([[-1.5, -19.0], [-1.6, -19.5], [-1.8, -19.6]])
  balancer = balancers.get("famo", 2, min_losses=bounds.tolist(), gamma=0.0, w_lr=0.1)
  state = balancer.init(None)
  expected = reference_famo(losses - bounds, 0.1, 0.0)
  for loss, want in zip(losses, expected):
    weights, state = balancer.weigh_losses(jnp.asarray(loss, jnp.float32), state)
    np.testing.assert_allclose(weights, want, rtol=2e-4)


# ---------------------------------------------------------------- DB-MTL


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("beta_sigma", [0.0, 0.5])
def test_db_mtl_matches_reference(num_tasks, beta_sigma):
  jacobians, losses = random_problem(num_tasks)
  outputs, weights, _ = run_steps(balancers.get("db_mtl", num_tasks, beta_sigma=beta_sigma),
                                  jacobians, losses)
  expected_outputs, expected_alphas = reference_db_mtl(jacobians, losses, 0.9, beta_sigma)
  assert_close(weights, expected_alphas)
  assert_close(outputs, expected_outputs)


def test_db_mtl_balances_magnitudes_and_ignores_loss_scale():
  jacobians, losses = random_problem(3, steps=4)
  scales = np.array([1.0, 100.0, 0.01])
  _, _, state = run_steps(balancers.get("db_mtl", 3), jacobians, losses)
  scaled_out, _, _ = run_steps(balancers.get("db_mtl", 3), jacobians * scales[None, :, None],
                               losses * scales)
  plain_out, _, _ = run_steps(balancers.get("db_mtl", 3), jacobians, losses)
  assert_close(scaled_out, plain_out, 1e-4)  # log L makes c L_i look like L_i
  balanced = np.asarray(state.weights) * np.linalg.norm(np.asarray(state.gradient_buffer), axis=1)
  assert_close(balanced, np.full(3, balanced.max()), 1e-5)


def test_db_mtl_all_zero_buffer_stays_finite():
  # Losses <= 0 (the toy problem's) count as absent, so the buffer stays 0: 0/0 gave NaN
  # weights that then poisoned every later step.
  balancer = balancers.get("db_mtl", 2)
  update = jax.jit(balancer.update)
  jacobian = jnp.asarray(np.random.default_rng(1).normal(size=(2, DIM)), jnp.float32)
  state = balancer.init(jnp.zeros(DIM))
  out, state = update(jacobian, state, task_losses=jnp.array([-1.0, -2.0]))
  np.testing.assert_array_equal(out, 0.0)
  assert np.all(np.isfinite(state.weights))
  out, state = update(jacobian, state, task_losses=jnp.array([1.0, 1.0]))
  assert np.all(np.isfinite(out)) and np.linalg.norm(out) > 0


# ---------------------------------------------------------------- ExcessMTL


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_excess_mtl_matches_reference(num_tasks):
  jacobians, losses = random_problem(num_tasks)
  growth = np.linspace(0.5, 2.0, len(jacobians))[:, None, None]  # growing excess risks
  jacobians = jacobians * growth
  outputs, weights, _ = run_steps(balancers.get("excess_mtl", num_tasks, robust_step_size=0.5),
                                  jacobians, losses)
  expected = reference_excess_mtl(jacobians, 0.5)
  assert_close(weights, expected)
  assert_close(outputs, np.einsum("st,std->sd", expected, jacobians))
  np.testing.assert_allclose(weights[0], 1.0 / num_tasks, rtol=1e-6)
  assert np.ptp(weights[-1]) > 0.01 / num_tasks


def test_excess_mtl_task_absent_at_first_takes_its_reference_later():
  balancer = balancers.get("excess_mtl", 2, robust_step_size=0.5)
  update = jax.jit(balancer.update)
  state = balancer.init(jnp.zeros(DIM))
  row = jnp.asarray(np.random.default_rng(0).normal(size=DIM), jnp.float32)
  _, state = update(jnp.stack([jnp.zeros(DIM), row]), state, task_losses=jnp.array([0.0, 1.0]))
  assert state.initial_excess[0] == 0.0 and state.weights[0] < 0.5  # ratio 0 vs 1
  _, state = update(jnp.stack([row, row]), state, task_losses=jnp.array([1.0, 1.0]))
  assert state.initial_excess[0] > 0.0
  assert np.all(np.isfinite(state.weights)) and abs(float(state.weights.sum()) - 1.0) < 1e-5


# ---------------------------------------------------------------- every method


NEEDS = {"stch": "losses", "famo": "losses", "db_mtl": "jacobian", "excess_mtl": "jacobian"}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_registered_with_its_needs(name):
  balancer = balancers.get(name, 3)
  assert balancer.needs == NEEDS[name]
  assert (balancer.weigh_losses is not None) == (NEEDS[name] == "losses")
  assert balancers.papers()[name]


def short_phases(name, warmup_steps=1):
  """STCH with short warm-up and nadir phases, so a few steps reach its logsumexp phase."""
  return {"warmup_steps": warmup_steps, "nadir_steps": 1} if name == "stch" else {}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_nested_pytree_equals_flat_matrix(name):
  check_nested_pytree_matches_flat(name, short_phases(name), weights_rtol=1e-5)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_degenerate_inputs_stay_finite(name):
  # No warm-up, so the degenerate cases reach STCH's logsumexp phase too.
  check_degenerate_inputs_stay_finite(name, short_phases(name, warmup_steps=0))


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_state_round_trips_through_tree_flatten(name):
  check_state_round_trips(name, short_phases(name))

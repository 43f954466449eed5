"""GradNorm against a float64 NumPy transcription of Chen et al. 2018, Algorithm 1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.balancers as balancers
from jmtl.balancers._gradnorm import select_layer

from references import NumpyAdam


def gradnorm_loss(weights, norms, targets):
  return np.sum(np.abs(weights * norms - targets))


class ReferenceGradNorm:
  """Float64 GradNorm; dL_grad/dw by central differences with the target held constant."""

  def __init__(self, num_tasks, alpha=1.5, lr=0.025, optimizer="adam"):
    self.weights = np.ones(num_tasks)
    self.alpha, self.lr, self.optimizer = alpha, lr, optimizer
    self.initial_losses = None
    self.adam = NumpyAdam(lr)  # Kingma & Ba with optax's defaults

  def step(self, last_layer_jacobian, full_jacobian, losses):
    """Returns sum_i (w_i(t) / T) g_i (jmtl's mean convention) and moves to w(t+1)."""
    if self.initial_losses is None:
      self.initial_losses = losses.copy()
    combined = self.weights @ full_jacobian / len(self.weights)
    norms = np.linalg.norm(last_layer_jacobian, axis=1)  # ||grad_W L_i||
    rates = (losses / self.initial_losses)
    rates = rates / rates.mean()
    targets = np.mean(self.weights * norms) * rates ** self.alpha  # a constant
    h = 1e-7
    gradient = np.array([
        (gradnorm_loss(self.weights + h * e, norms, targets)
         - gradnorm_loss(self.weights - h * e, norms, targets)) / (2 * h)
        for e in np.eye(len(self.weights))])
    if self.optimizer == "adam":
      self.weights = self.adam.step(self.weights, gradient)
    else:
      self.weights = self.weights - self.lr * gradient
    self.weights = len(self.weights) * self.weights / self.weights.sum()
    return combined


@functools.cache
def compiled(num_tasks, **hparams):
  balancer = balancers.get("gradnorm", num_tasks, **hparams)
  return balancer, jax.jit(lambda g, s, l: balancer.update(g, s, task_losses=l))


def as_f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def random_task_grads(rng, num_tasks, scales):
  """Nested pytree (a body and a last 'head' layer); task i's grads scaled by scales[i]."""
  scale = scales[:, None, None]
  return {"body": {"kernel": rng.normal(size=(num_tasks, 3, 2)) * scale},
          "head": {"kernel": rng.normal(size=(num_tasks, 2, 2)) * scale,
                   "bias": rng.normal(size=(num_tasks, 2)) * scales[:, None]}}


def flat(tree):
  return np.concatenate([np.reshape(x, (x.shape[0], -1)) for x in jax.tree.leaves(tree)], axis=1)


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_evolution_matches_reference(num_tasks, optimizer):
  rng = np.random.default_rng(num_tasks)
  scales = rng.uniform(0.2, 3.0, size=num_tasks)  # unequal gradient norms
  reference = ReferenceGradNorm(num_tasks, optimizer=optimizer)
  balancer, update = compiled(num_tasks, optimizer=optimizer, layer="head")
  state = balancer.init(None)
  losses = rng.uniform(1.0, 2.0, size=num_tasks)
  for step in range(6):
    task_grads = random_task_grads(rng, num_tasks, scales)
    expected = reference.step(flat(task_grads["head"]), flat(task_grads), losses)
    grads, state = update(as_f32(task_grads), state, jnp.asarray(losses, jnp.float32))
    actual = flat(jax.tree.map(lambda x: np.asarray(x, np.float64)[None], grads))[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(state.task_weights, reference.weights, rtol=1e-4)
    np.testing.assert_allclose(np.sum(state.task_weights), num_tasks, rtol=1e-5)
    np.testing.assert_allclose(state.initial_losses, reference.initial_losses, rtol=1e-6)
    assert bool(np.all(state.seen))
    losses = losses * rng.uniform(0.7, 1.0, size=num_tasks)  # tasks train at different rates


def test_first_update_uses_unit_weights_and_captures_initial_losses():
  balancer, update = compiled(3)
  jacobian = np.random.default_rng(0).normal(size=(3, 4))
  grads, state = update(as_f32(jacobian), balancer.init(None), jnp.asarray([1.0, 2.0, 4.0]))
  np.testing.assert_allclose(grads, jacobian.mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(state.weights, 1.0 / 3)  # w(0) / T, applied
  assert not np.allclose(state.task_weights, 1.0)  # w(t+1) is already in the state
  _, state = update(as_f32(jacobian), state, jnp.asarray([0.5, 0.5, 0.5]))
  np.testing.assert_allclose(state.initial_losses, [1.0, 2.0, 4.0])


def test_alpha_zero_equalises_weighted_gradient_norms():
  # With alpha = 0 the target is the mean norm: at equilibrium w_i ||g_i|| are equal,
  # i.e. w_i is proportional to 1 / ||g_i||.
  norms = np.array([0.5, 1.0, 4.0])
  jacobian = jnp.asarray(np.diag(norms), jnp.float32)
  balancer, update = compiled(3, alpha=0.0)

  def step(state, _):
    _, state = balancer.update(jacobian, state, task_losses=jnp.ones(3))
    return state, None

  state, _ = jax.jit(lambda s: jax.lax.scan(step, s, None, length=400))(balancer.init(None))
  expected = 3 * (1 / norms) / np.sum(1 / norms)
  np.testing.assert_allclose(state.task_weights, expected, rtol=0.05)


def test_slow_task_gets_more_weight():
  # Equal gradient norms; task 0's loss stays at L(0) while task 1's halves, so task 0
  # has the larger inverse training rate and GradNorm raises its weight.
  balancer, update = compiled(2)
  state = balancer.init(None)
  jacobian = as_f32(np.eye(2))
  _, state = update(jacobian, state, jnp.asarray([1.0, 1.0]))
  for _ in range(20):
    _, state = update(jacobian, state, jnp.asarray([1.0, 0.5]))
  assert state.task_weights[0] > 1.2 > 0.8 > state.task_weights[1]


def test_layer_selection_by_path_not_dict_order():
  tree = {"encoder": {"layer_0": {"kernel": 1, "bias": 2}, "type_embedding": 7},
          "decoder": {"Dense_0": {"kernel": 3}, "Dense_1": {"kernel": 4, "bias": 5}}}
  assert select_layer(tree, "decoder/Dense_0") == {"kernel": 3}
  assert select_layer(tree, "encoder/layer_0/bias") == 2
  # jit sorts keys: the choice must not depend on the order keys come in.
  resorted = {key: dict(sorted(value.items())) for key, value in sorted(tree.items())}
  assert select_layer(resorted, "decoder/Dense_0") == {"kernel": 3}
  array = np.zeros((3, 4))
  assert select_layer(array, None) is array
  with pytest.raises(ValueError, match="encoder/layer_0/kernel") as error:
    select_layer(tree, "encoder/layer_9")
  assert "encoder/layer_9" in str(error.value)


def test_missing_layer_is_a_clear_error_in_update():
  balancer = balancers.get("gradnorm", 2, layer="encoder/final_norm")
  task_grads = {"encoder": {"pooler": jnp.ones((2, 3))}, "heads": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="available paths: encoder, encoder/pooler, heads"):
    balancer.update(task_grads, balancer.init(None), task_losses=jnp.ones(2))


def test_layer_decides_the_learned_weights():
  # Task 0 dominates the head, task 1 the body: the weights move in opposite directions.
  task_grads = {"body": jnp.asarray([[0.1, 0.0], [0.0, 5.0]]),
                "head": jnp.asarray([[5.0, 0.0], [0.0, 0.1]])}
  learned = {}
  for layer in ("body", "head"):
    balancer = balancers.get("gradnorm", 2, layer=layer, alpha=0.0)
    state = balancer.init(None)
    for _ in range(20):
      _, state = balancer.update(task_grads, state, task_losses=jnp.ones(2))
    learned[layer] = np.asarray(state.task_weights)
  assert learned["body"][0] > 1.0 > learned["body"][1]
  assert learned["head"][1] > 1.0 > learned["head"][0]


def test_custom_layer_selects_norms():
  # Whole-tree norms instead of the head's: same reference, different W.
  rng = np.random.default_rng(9)
  scales = np.array([0.5, 2.0])
  reference = ReferenceGradNorm(2)
  balancer, update = compiled(2)  # layer=None: all of task_grads
  state = balancer.init(None)
  for _ in range(3):
    task_grads = random_task_grads(rng, 2, scales)
    reference.step(flat(task_grads), flat(task_grads), np.ones(2))
    _, state = update(as_f32(task_grads), state, jnp.ones(2))
  np.testing.assert_allclose(state.task_weights, reference.weights, rtol=1e-4)


@pytest.mark.parametrize("case", ["zero", "identical", "opposite", "single", "zero_losses",
                                  "negative_losses", "huge"])
def test_degenerate_cases_are_finite(case):
  g = np.random.default_rng(1).normal(size=5)
  jacobian = {"zero": np.stack([g, 0 * g, g]), "identical": np.stack([g, g]),
              "opposite": np.stack([g, -g]), "single": g[None],
              "zero_losses": np.stack([g, 2 * g]), "negative_losses": np.stack([g, -g]),
              "huge": np.stack([1e8 * g, 1e-8 * g])}[case]
  num_tasks = jacobian.shape[0]
  losses = {"zero_losses": np.zeros(num_tasks),
            "negative_losses": np.array([-3.0, 2.0])}.get(case, np.ones(num_tasks))
  balancer, update = compiled(num_tasks)
  state = balancer.init(None)
  for scale in (1.0, 0.5, 0.0):
    grads, state = update(as_f32(jacobian), state, jnp.asarray(losses * scale, jnp.float32))
    assert np.all(np.isfinite(grads)) and np.all(np.isfinite(state.task_weights))
    assert np.all(state.task_weights > 0)
    np.testing.assert_allclose(np.sum(state.task_weights), num_tasks, rtol=1e-5)


def test_bad_optimizer():
  with pytest.raises(ValueError, match="optimizer"):
    balancers.get("gradnorm", 2, optimizer="rmsprop")

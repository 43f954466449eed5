"""A user's own Flax model (not MultiTaskModel) trains through jmtl.make_train_step."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from jmtl.models.protocol import MultiTaskProtocol


class Trunk(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.tanh(nn.Dense(16)(nn.tanh(nn.Dense(32)(x))))


class RegressionHead(nn.Module):
  @nn.compact
  def __call__(self, features):
    return nn.Dense(1)(features)[:, 0]


@dataclasses.dataclass(frozen=True)
class TwoTargets:
  """Two regression targets read from one shared trunk: the README's user-model example."""
  names: tuple = ("sum", "product")
  layout: str = "same_input"
  shared_key: str = "trunk"
  task_key: str = "heads"

  def init(self, rng, batch):
    rngs = jax.random.split(rng, 1 + len(self.names))
    trunk = Trunk().init(rngs[0], batch["x"])["params"]
    features = Trunk().apply({"params": trunk}, batch["x"])
    heads = {n: RegressionHead().init(r, features)["params"] for n, r in zip(self.names, rngs[1:])}
    return {"trunk": trunk, "heads": heads}

  def encode(self, trunk, batch, rng=None):
    return Trunk().apply({"params": trunk}, batch["x"])

  def loss_sum(self, name, head, features, batch):
    error = RegressionHead().apply({"params": head}, features) - batch[name]
    return jnp.sum(batch[name + "_mask"] * error ** 2)

  def label_count(self, name, batch):
    return jnp.sum(batch[name + "_mask"])


def make_batch(seed, size=32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(size, 4)).astype(np.float32)
  return {"x": x, "sum": x.sum(1), "product": 10.0 * np.tanh(x[:, 0] - x[:, 1]),  # scales differ
          "sum_mask": np.ones(size, np.float32), "product_mask": np.ones(size, np.float32)}


def _task_grads_float64(model, params, batch):
  """Reference: jax.grad of each task's mean loss alone, in float64."""
  with jax.enable_x64(True):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    batch = {k: jnp.asarray(v, jnp.float64) for k, v in batch.items()}
    def loss(p, name):
      features = model.encode(p["trunk"], batch)
      return model.loss_sum(name, p["heads"][name], features, batch) / model.label_count(name, batch)
    return [jax.tree.map(np.asarray, jax.grad(loss)(params, n)) for n in model.names]


def test_user_model_implements_the_protocol():
  assert isinstance(TwoTargets(), MultiTaskProtocol)


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "dwa"])
def test_user_model_trains_with_make_train_step(method):
  model = TwoTargets()
  balancer = jmtl.balancers.get(method, num_tasks=2)
  optimizer = optax.adam(1e-2)
  state = jax.jit(lambda: jmtl.create_train_state(model, balancer, optimizer, make_batch(0), 0))()
  step = jmtl.make_train_step(model, balancer, optimizer)
  losses = []
  for s in range(200):
    state, metrics = step(state, make_batch(s))
    losses.append(np.asarray(metrics["losses"]))
  first, last = np.mean(losses[:10], 0), np.mean(losses[-10:], 0)
  assert np.all(np.isfinite(last)) and np.all(last < 0.5 * first), (first, last)


def test_user_model_step_is_the_gram_balancers_weighted_sum():
  """One SGD(lr=1) step of MGDA equals sum_i w_i g_i of per-task float64 gradients, with the
  weights the step reports; each head moves by its own task's gradient alone."""
  model = TwoTargets()
  balancer = jmtl.balancers.get("mgda", num_tasks=2)
  optimizer = optax.sgd(1.0)
  batch = make_batch(3)
  state = jax.jit(lambda: jmtl.create_train_state(model, balancer, optimizer, batch, 0))()
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = jmtl.make_train_step(model, balancer, optimizer, donate=False)(state, batch)
  step_grads = jax.tree.map(lambda b, a: b - np.asarray(a, np.float64), before, state.params)
  reference = _task_grads_float64(model, before, batch)
  weights = np.asarray(metrics["weights"], np.float64)
  gram = np.array([[sum(np.vdot(a, b) for a, b in zip(jax.tree.leaves(gi["trunk"]),
                                                        jax.tree.leaves(gj["trunk"])))
                    for gj in reference] for gi in reference])
  # The two-task min-norm point in closed form (MGDA's defining property).
  alpha = np.clip((gram[1, 1] - gram[0, 1]) / (gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]), 0, 1)
  np.testing.assert_allclose(weights / weights.sum(), [alpha, 1 - alpha], rtol=1e-3, atol=1e-4)
  expected = jax.tree.map(lambda a, b: weights[0] * a + weights[1] * b,
                          reference[0]["trunk"], reference[1]["trunk"])
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-6),
               step_grads["trunk"], expected)
  for i, name in enumerate(model.names):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-6),
                 step_grads["heads"][name], reference[i]["heads"][name])


def test_a_batch_of_the_other_layout_is_a_clear_error():
  model = dataclasses.replace(TwoTargets(), layout="multi_input")
  balancer = jmtl.balancers.get("pcgrad", num_tasks=2)
  optimizer = optax.sgd(0.1)
  state = jmtl.create_train_state(TwoTargets(), balancer, optimizer, make_batch(0), 0)
  with pytest.raises(ValueError, match="layout is 'multi_input' but the batch has no per-task"):
    jmtl.make_train_step(model, balancer, optimizer)(state, make_batch(0))

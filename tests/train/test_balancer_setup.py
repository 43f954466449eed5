"""The runner's balancer: GradNorm's layer from the model's declaration (checked in the jitted
step on the real encoder), config validation, and rep-grad across length buckets."""

import jax
import numpy as np
import optax
import pytest

from tiny_model import TASKS, TINY, make_batch
from jmtl import balancers
from jmtl.config import ConfigError, base_config
from jmtl.models import MultiTaskModel
from jmtl.train.balancer_setup import build_balancer
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state

MODEL = MultiTaskModel(TINY, TASKS[:3])  # topic (pooled), score (pooled), pos (tokens)


def config_for(name, grad_mode="exact", **hparams):
  c = base_config()
  c.grad_mode = grad_mode
  c.balancer.name = name
  c.balancer.update(hparams)
  return c


def learned_weights(balancer, steps=6):
  optimizer = optax.adam(1e-2)
  example = make_batch(MODEL.tasks)
  state = jax.jit(lambda: create_train_state(MODEL, balancer, optimizer, example, 0))()
  step = make_train_step(MODEL, balancer, optimizer, dropout=False)
  for s in range(steps):
    state, metrics = step(state, make_batch(MODEL.tasks, seed=s))
  return np.asarray(metrics["weights"])


def test_gradnorm_learns_weights_that_depend_on_the_layer_it_names():
  get = lambda layer: balancers.get("gradnorm", 3, layer=layer, lr=0.1)
  by_layer = {layer: learned_weights(get(layer))
              for layer in ("final_norm", "pooler", "type_embedding")}
  for a, b in (("final_norm", "pooler"), ("final_norm", "type_embedding")):
    assert not np.allclose(by_layer[a], by_layer[b], rtol=1e-3), (a, b, by_layer)
  # The runner's default is the model's declared last shared layer, however the dict of
  # gradients is ordered (jit sorts keys: the old last-key guess picked type_embedding).
  default = build_balancer(config_for("gradnorm", lr=0.1), MODEL, make_batch(MODEL.tasks), (16,))
  np.testing.assert_array_equal(learned_weights(default), by_layer["final_norm"])
  prefixed = build_balancer(config_for("gradnorm", lr=0.1, layer="encoder/pooler"), MODEL,
                            make_batch(MODEL.tasks), (16,))
  np.testing.assert_array_equal(learned_weights(prefixed), by_layer["pooler"])


@pytest.mark.parametrize("layer", ["encoder/final_nrom", "heads/topic", "pooler/kernel/x"])
def test_unknown_layer_is_a_config_error_listing_valid_paths(layer):
  with pytest.raises(ConfigError, match=r"balancer.layer=.*valid paths: .*final_norm.*pooler"):
    build_balancer(config_for("gradnorm", layer=layer), MODEL, make_batch(MODEL.tasks), (16,))


def test_layer_under_rep_grad_is_a_config_error():
  with pytest.raises(ConfigError, match="grad_mode='rep' balances the shared representation"):
    build_balancer(config_for("gradnorm", "rep", layer="pooler"), MODEL, make_batch(MODEL.tasks),
                   (16,))


@pytest.mark.parametrize("name", ["moco", "db_mtl", "excess_mtl"])
def test_rep_grad_with_state_shaped_like_the_representation_needs_one_bucket(name):
  assert balancers.info(name).param_shaped_state
  with pytest.raises(ConfigError, match=rf"balancer.name='{name}'.*data.buckets=\(8, 16\)"):
    build_balancer(config_for(name, "rep"), MODEL, make_batch(MODEL.tasks), (8, 16))
  build_balancer(config_for(name, "rep"), MODEL, make_batch(MODEL.tasks), (16,))  # one shape
  build_balancer(config_for(name, "exact"), MODEL, make_batch(MODEL.tasks), (8, 16))


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "dwa"])
def test_rep_grad_without_such_state_trains_across_length_buckets(name):
  """Batches alternate between two lengths: a method without representation-shaped state is
  accepted by the runner and trains (one compilation per length)."""
  balancer = build_balancer(config_for(name, "rep"), MODEL, make_batch(MODEL.tasks), (6, 8))
  optimizer = optax.sgd(0.1)
  example = make_batch(MODEL.tasks, length=6)
  rep_shapes = jax.eval_shape(lambda b: MODEL.encode(
      MODEL.init(jax.random.PRNGKey(0), b)["encoder"], b), example)
  state = jax.jit(lambda: create_train_state(MODEL, balancer, optimizer, example, 0,
                                             balancer_params=rep_shapes))()
  step = make_train_step(MODEL, balancer, optimizer, grad_mode="rep", dropout=False)
  for s in range(4):
    state, metrics = step(state, make_batch(MODEL.tasks, length=(6, 8)[s % 2], seed=s))
    assert bool(metrics["finite"]), s
  assert int(state.nonfinite_steps) == 0 and step._fn_every_task_present._cache_size() == 2

"""The BERT encoder inside MultiTaskModel, trained through ``jmtl.make_train_step``: every
gradient path (exact Jacobian, compact Gram, rep-grad, loss-only) runs on a loaded checkpoint,
and one equal-weight step equals an independent jax.grad + optax step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from bert_reference import tiny_tensors, write_checkpoint
from jmtl import pretrained
from jmtl.models import MultiTaskModel
from jmtl.tasks import TaskSpec
from jmtl.train.state import create_train_state

TASKS = (TaskSpec("tags", "tagging", 5), TaskSpec("topic", "classification", 3))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([8, 5, 7, 3])
  mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
  batch = {"input_ids": (rng.integers(5, 40, (4, 8)) * mask).astype(np.int32),
           "attention_mask": mask,
           "tags": rng.integers(0, 5, (4, 8)).astype(np.int32),
           "tags_mask": mask.astype(np.float32),
           "topic": rng.integers(0, 3, 4).astype(np.int32),
           "topic_mask": np.array([1, 1, 0, 1], np.float32)}  # one sentence unlabelled
  return batch


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  root = tmp_path_factory.mktemp("bert")
  directory = write_checkpoint(root / "m", tiny_tensors(seed=5), prefix="bert.")
  return pretrained.load(str(directory), pooling="pooler", dropout=0.0, attention_dropout=0.0,
                         data_dir=root / "data", log=lambda m: None)


def _state(model, balancer, optimizer, loaded, batch):
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  params = dict(state.params)
  params["encoder"] = pretrained.with_pretrained(state.params["encoder"], loaded.params)
  return state.replace(params=params)


@pytest.mark.parametrize("method,grad_mode", [("pcgrad", "exact"), ("upgrad", "exact"),
                                              ("mgda", "rep"), ("dwa", "exact"),
                                              ("gradnorm", "exact")])
def test_every_gradient_path_trains_the_loaded_bert(loaded, method, grad_mode):
  model = MultiTaskModel(loaded.config, TASKS, head_hidden=8)
  balancer = jmtl.balancers.get(method, len(TASKS))
  optimizer = optax.adam(1e-3)
  batch = _batch()
  state = _state(model, balancer, optimizer, loaded, batch)
  before = jax.tree.map(np.asarray, state.params)
  step = jmtl.make_train_step(model, balancer, optimizer, grad_mode=grad_mode, dropout=False)
  for _ in range(3):
    state, metrics = step(state, batch)
  losses = np.asarray(metrics["losses"])
  assert np.all(np.isfinite(losses)) and losses.shape == (2,)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), state.params, before)
  assert moved["encoder"]["layer_1"]["output_norm"]["scale"] > 0
  assert moved["encoder"]["pooler"]["kernel"] > 0  # read by the classification head
  assert moved["heads"]["tags"]["out"]["kernel"] > 0


def test_equal_weight_step_equals_grad_of_mean_loss(loaded):
  model = MultiTaskModel(loaded.config, TASKS, head_hidden=8)
  balancer = jmtl.balancers.get("equal_weight", len(TASKS))
  optimizer = optax.sgd(0.1)
  batch = _batch(1)
  state = _state(model, balancer, optimizer, loaded, batch)
  params = jax.tree.map(jnp.asarray, state.params)
  step = jmtl.make_train_step(model, balancer, optimizer, dropout=False, donate=False)
  new_state, _ = step(state, batch)

  def task_loss(p, spec, batch):  # masked mean, written here from the heads' outputs
    tokens, pooled = model.encode(p["encoder"], batch)
    logits = model.head(spec, p["heads"][spec.name], (tokens, pooled))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch[spec.name][..., None], -1)[..., 0]
    mask = batch[spec.name + "_mask"]
    return jnp.sum(nll * mask) / jnp.sum(mask)

  # EW: the shared parameters get the mean of the task gradients (weights 1/T).
  shared = jax.grad(lambda p: sum(task_loss(p, s, batch) for s in TASKS) / len(TASKS))(params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, params["encoder"], shared["encoder"])
  np.testing.assert_allclose(new_state.params["encoder"]["layer_0"]["intermediate"]["kernel"],
                             expected["layer_0"]["intermediate"]["kernel"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_state.params["encoder"]["token_embedding"]["embedding"],
                             expected["token_embedding"]["embedding"], rtol=1e-4, atol=1e-6)

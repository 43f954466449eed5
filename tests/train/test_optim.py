"""Fine-tuning controls: freezing, layer-wise learning-rate decay, head learning rate, remat,
checked through ``make_train_step`` on the real multi-task model."""

import re

import jax
import numpy as np
import optax
import pytest

from tiny_model import TASKS, TINY, make_batch
from jmtl.balancers import get
from jmtl.config import ConfigError, base_config
from jmtl.models import MultiTaskModel
from jmtl.train.optim import build_optimizer, param_paths, trainable_mask
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state

TASKS3 = TASKS[:3]  # classification, regression, tagging: conflicting gradients


def _config(**optimizer):
  c = base_config()
  c.optimizer.update(dict(schedule="constant", clip_norm=0.0))
  c.optimizer.update(optimizer)
  return c


def _run(config, method="pcgrad", steps=3, encoder=TINY):
  """Params before and after ``steps`` steps (host copies), and the final state."""
  model = MultiTaskModel(encoder, TASKS3)
  balancer = get(method, num_tasks=len(TASKS3))
  optimizer = build_optimizer(config, 100)
  batch = make_batch(TASKS3)
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  before = jax.tree.map(np.asarray, state.params)
  step = make_train_step(model, balancer, optimizer)
  for seed in range(steps):  # different batches: different per-task gradients every step
    state, metrics = step(state, make_batch(TASKS3, seed=seed))
    assert bool(metrics["finite"])
  return before, jax.tree.map(np.asarray, state.params), state


def _by_path(tree):
  return dict(zip(jax.tree.leaves(param_paths(tree)), jax.tree.leaves(tree)))


def test_frozen_parameters_are_bit_identical_after_steps():
  config = _config(name="adamw", learning_rate=1e-2, clip_norm=1.0, freeze=("embed",),
                   freeze_layers=1)
  before, after, state = _run(config, steps=4)
  before, after = _by_path(before), _by_path(after)
  frozen = {p for p in before if "embed" in p or p.startswith("encoder/block_0/")}
  assert frozen and "encoder/block_0/mlp_in/kernel" in frozen
  assert "encoder/token_embedding/embedding" in frozen
  for path in before:
    if path in frozen:
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    elif path.endswith("kernel"):  # every trained weight matrix moved
      assert not np.array_equal(after[path], before[path]), path
  # Frozen parameters keep no Adam moments: the trained branch's state skips them.
  moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if np.ndim(leaf) >= 1]
  trained = [v for p, v in before.items() if p not in frozen]
  assert sum(np.size(m) for m in moments) == 2 * sum(np.size(v) for v in trained)


def test_trainable_mask_matches_the_freeze_patterns():
  model = MultiTaskModel(TINY, TASKS3)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), make_batch(TASKS3)))
  mask = _by_path(trainable_mask(params, _config(freeze=(r"^encoder/block_1/", "pooler"))))
  assert set(mask) == set(_by_path(params))
  for path, trainable in mask.items():
    assert trainable == (not (path.startswith("encoder/block_1/") or "pooler" in path)), path


def _expected_scale(path, decay, head_factor, depth=TINY.depth):
  """The LLRD closed form, written from the definition (not from jmtl's code)."""
  if path.startswith("heads/"):
    return head_factor
  block = re.match(r"encoder/block_(\d+)/", path)
  if block:
    return decay ** (depth - int(block.group(1)))
  if "embedding" in path:
    return decay ** (depth + 1)
  return 1.0  # final norm, pooler


@pytest.mark.parametrize("decay,head_lr", [(0.5, 0.3), (1.0, 0.25), (0.8, 0.0)])
def test_layer_decay_and_head_learning_rate_follow_the_closed_form(decay, head_lr):
  lr = 0.1
  # SGD without momentum or clipping: a step moves each parameter by -lr * scale * grad,
  # and equal weighting makes the gradients of both runs identical.
  plain = _config(name="sgd", learning_rate=lr)
  scaled = _config(name="sgd", learning_rate=lr, layer_decay=decay, head_learning_rate=head_lr)
  before, after_plain, _ = _run(plain, method="equal_weight", steps=1)
  _, after_scaled, _ = _run(scaled, method="equal_weight", steps=1)
  before, after_plain, after_scaled = map(_by_path, (before, after_plain, after_scaled))
  head_factor = head_lr / lr if head_lr else 1.0
  checked = set()
  for path, start in before.items():
    scale = _expected_scale(path, decay, head_factor)
    checked.add(round(scale, 12))
    np.testing.assert_allclose(after_scaled[path] - start, scale * (after_plain[path] - start),
                               rtol=2e-4, atol=2e-7, err_msg=path)
  expected_groups = {round(_expected_scale(p, decay, head_factor), 12) for p in before}
  assert checked == expected_groups and len(expected_groups) >= (4 if decay < 1 else 2)


def test_plain_optimizer_keeps_the_existing_state_layout():
  # Checkpoints written before the fine-tuning keys existed must still restore.
  config = _config(name="adamw", clip_norm=1.0, schedule="warmup_cosine")
  params = {"encoder": {"w": np.ones(3, np.float32)}, "heads": {"t": {"b": np.zeros(2)}}}
  old = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 10)))
  assert (jax.tree.structure(build_optimizer(config, 10).init(params))
          == jax.tree.structure(old.init(params)))


@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine", "warmup_linear"])
def test_every_schedule_builds_for_a_one_step_run(schedule):
  """``--config.train.steps=1`` (a smoke run) once failed inside optax's cosine schedule."""
  config = _config(schedule=schedule, warmup_steps=100)
  params = {"encoder": {"w": np.ones(3, np.float32)}}
  optimizer = build_optimizer(config, 1)
  updates, _ = optimizer.update({"encoder": {"w": np.ones(3, np.float32)}},
                                optimizer.init(params), params)
  assert np.all(np.isfinite(updates["encoder"]["w"]))


@pytest.mark.parametrize("overrides,message", [
    (dict(freeze=("encoder/embeding",)), "pattern 'encoder/embeding' matches no parameter"),
    (dict(freeze=("block_[",)), r"optimizer.freeze: 'block_\[' is not a regular expression"),
    (dict(layer_decay=1.5), r"optimizer.layer_decay 1.5: must be in \(0, 1\]"),
    (dict(head_learning_rate=-1.0), "optimizer.head_learning_rate -1.0: must be >= 0"),
    (dict(freeze_layers=-1), "optimizer.freeze_layers -1: must be >= 0"),
])
def test_bad_controls_name_the_key(overrides, message):
  config = _config(**overrides)
  model = MultiTaskModel(TINY, TASKS3)
  params = model.init(jax.random.PRNGKey(0), make_batch(TASKS3))
  with pytest.raises(ConfigError, match=message):
    build_optimizer(config, 10).init(params)


def test_layer_decay_needs_layer_indices_in_the_paths():
  params = {"encoder": {"dense": {"kernel": np.ones((2, 2), np.float32)}},
            "heads": {"t": {"kernel": np.ones(2, np.float32)}}}
  with pytest.raises(ConfigError, match="optimizer.layer_decay: the encoder has no parameter "
                                        "with a layer index"):
    build_optimizer(_config(layer_decay=0.9), 10).init(params)


def test_remat_changes_memory_not_results():
  import dataclasses
  config = _config(name="adamw", learning_rate=1e-2)
  _, plain, _ = _run(config, steps=2)
  _, remat, _ = _run(config, steps=2, encoder=dataclasses.replace(TINY, remat=True))
  assert jax.tree.structure(plain) == jax.tree.structure(remat)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _task_gradients(model, params, batch, trainable):
  """Per task, the gradient of its mean loss w.r.t. the trained shared leaves only: plain
  ``jax.grad`` task by task (no vmap, no balancer), frozen leaves dropped, float64."""
  keep = [p for p, t in _by_path(trainable["encoder"]).items() if t]
  rows = []
  for spec in model.tasks:
    def loss(encoder):
      features = model.encode(encoder, batch)
      return (model.loss_sum(spec.name, params["heads"][spec.name], features, batch)
              / model.label_count(spec.name, batch))
    grads = _by_path(jax.grad(loss)(params["encoder"]))
    rows.append(np.concatenate([np.asarray(grads[p], np.float64).ravel() for p in keep]))
  return np.stack(rows)


@pytest.mark.parametrize("method", ["mgda", "pcgrad"])  # the compact Gram path; the Jacobian
def test_balancer_sees_only_trained_parameters(method):
  """With the embeddings (the token table among them) frozen, the cosines the step reports
  are those of the per-task gradients of the trained shared leaves, computed independently;
  the frozen leaves stay bit-identical."""
  config = _config(name="adamw", learning_rate=1e-2, freeze=("embed",))
  model = MultiTaskModel(TINY, TASKS3)
  balancer = get(method, num_tasks=len(TASKS3))
  optimizer = build_optimizer(config, 100)
  batch = make_batch(TASKS3)
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  trainable = trainable_mask(state.params, config)
  assert not _by_path(trainable)["encoder/token_embedding/embedding"]
  before = jax.tree.map(np.asarray, state.params)
  g = _task_gradients(model, before, batch, trainable)
  gram = g @ g.T
  norms = np.sqrt(np.diag(gram))
  expected = gram / np.outer(norms, norms)
  everything = _task_gradients(model, before, batch, jax.tree.map(lambda _: True, trainable))
  full = (everything @ everything.T) / np.outer(*[np.linalg.norm(everything, axis=1)] * 2)
  assert np.max(np.abs(full - expected)) > 1e-3  # the frozen leaves would change what it sees
  step = make_train_step(model, balancer, optimizer, dropout=False, trainable=trainable)
  state, metrics = step(state, batch)
  np.testing.assert_allclose(np.asarray(metrics["cosines"], np.float64), expected, atol=2e-5)
  for seed in (1, 2):
    state, metrics = step(state, make_batch(TASKS3, seed=seed))
  after = _by_path(jax.tree.map(np.asarray, state.params))
  for path, value in _by_path(before).items():
    if not _by_path(trainable)[path]:
      np.testing.assert_array_equal(after[path], value)

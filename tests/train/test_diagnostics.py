"""Diagnostics for every method (``jmtl.train.diagnostics``): per-task gradient norms, cosines,
conflicts and lookahead affinity, against references computed without the engine."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_loop import suite_path, tiny_config  # noqa: F401  (suite_path is a fixture)
from test_optim import _by_path
from tiny_model import TASKS, TINY, make_batch
from jmtl.balancers import get
from jmtl.config import ConfigError, base_config
from jmtl.models import MultiTaskModel
from jmtl.sweep import plots
from jmtl.train import diagnostics, loop, preflight
from jmtl.train.logging import MetricLogger, read_jsonl
from jmtl.train.optim import build_optimizer, param_paths, trainable_mask
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state

TASKS4 = TASKS[:4]  # topic, score, pos, qa


def _reference(model, params, batch, trainable, lr):
  """Float64, task by task with plain ``jax.grad``: per-task gradients of the trained shared
  leaves (frozen ones dropped), and the lookahead affinity ``1 - L_j(enc - lr g_i) / L_j``."""
  with jax.enable_x64(True):
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    keep = {p for p, t in _by_path(trainable["encoder"]).items() if t}

    def loss(encoder, spec):
      features = model.encode(encoder, batch)
      return (model.loss_sum(spec.name, params["heads"][spec.name], features, batch)
              / model.label_count(spec.name, batch))

    def masked(g):  # the frozen leaves' gradients dropped (zero)
      return jax.tree.map(lambda leaf, p: leaf if p in keep else jnp.zeros_like(leaf), g,
                          param_paths(g))

    all_grads = jax.jit(lambda enc: [masked(jax.grad(loss)(enc, s)) for s in model.tasks])
    all_losses = jax.jit(lambda enc: jnp.stack([loss(enc, s) for s in model.tasks]))
    grads = all_grads(params["encoder"])
    rows = [np.concatenate([np.asarray(v, np.float64).ravel()
                            for p, v in _by_path(g).items() if p in keep]) for g in grads]
    losses = np.asarray(all_losses(params["encoder"]), np.float64)
    affinity = np.stack([1 - np.asarray(all_losses(jax.tree.map(
        lambda p, d: p - lr * d, params["encoder"], g)), np.float64) / losses for g in grads])
  return np.stack(rows), affinity


def test_equal_weight_norms_cosines_affinity_match_float64_reference():
  """EW's step forms no per-task gradient; the diagnostics still give each task's gradient
  norm and the cosines over the TRAINED shared params (block 0's MLP frozen, the token table
  trained: the compact Gram path), NaN for a task absent from the batch, and the affinity."""
  model = MultiTaskModel(TINY, TASKS4)
  config = base_config()
  config.optimizer.update(dict(schedule="constant", freeze=("block_0/mlp",)))
  optimizer = build_optimizer(config, 100)
  balancer = get("equal_weight", num_tasks=4)
  batch = make_batch(TASKS4, seed=3)
  batch["score_mask"] = np.zeros_like(batch["score_mask"])  # "score" absent this step
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  trainable = trainable_mask(state.params, config)
  assert not _by_path(trainable)["encoder/block_0/mlp_in/kernel"]
  step = make_train_step(model, balancer, optimizer, dropout=False, trainable=trainable)
  lr = 0.5  # large, so the float32 loss changes are well above rounding
  diag = diagnostics.Diagnostics(step, model, trainable=trainable, dropout=False,
                                 affinity_lr=lr)
  host = diag(state, batch, affinity=True)
  rows, affinity = _reference(model, jax.tree.map(np.asarray, state.params), batch, trainable,
                              lr)
  present = np.array([True, False, True, True])
  norms = np.linalg.norm(rows, axis=1)
  cosines = rows @ rows.T / np.outer(norms, norms)
  both = np.outer(present, present)
  assert np.min(cosines[both]) < 0.5  # tasks that disagree: a test the numbers can fail
  np.testing.assert_allclose(host["task_grad_norms"][present], norms[present], rtol=2e-4)
  np.testing.assert_allclose(host["cosines"][both], cosines[both], atol=2e-5)
  np.testing.assert_allclose(host["affinity"][both], affinity[both], atol=2e-4)
  assert np.abs(affinity[both]).max() > 1e-2
  assert np.all(np.isnan(host["task_grad_norms"][~present]))
  assert np.all(np.isnan(host["cosines"][~both])) and np.all(np.isnan(host["affinity"][~both]))
  # The step itself stays the loss-only step: no per-task output, the state unchanged by
  # the diagnostics (which ran on it first).
  _, metrics = step(state, batch)
  assert set(metrics) == {"losses", "grad_norm", "finite", "weights"}


def test_gram_method_logs_the_cosines_its_balancer_weighs():
  """For a Gram method the diagnostics' cosines are the step's own G's (same meaning)."""
  model = MultiTaskModel(TINY, TASKS[:3])
  optimizer = optax.sgd(0.1)
  balancer = get("mgda", num_tasks=3)
  batch = make_batch(TASKS[:3], seed=5)
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  step = make_train_step(model, balancer, optimizer, donate=False)
  host = diagnostics.Diagnostics(step, model)(state, batch)
  _, metrics = step(state, batch)
  np.testing.assert_allclose(host["cosines"], np.asarray(metrics["cosines"]), atol=1e-6)


class _Linear:
  """``pred = x @ w + b_t``, squared error per task; w starts at 0, so at a batch with targets
  y the task gradient is ``-2 mean(y_t x)``: opposite targets give a cosine of -1."""
  names, layout, shared_key, task_key = ("a", "b", "c"), "same_input", "w", "heads"

  def init(self, rng, batch):
    return {"w": jnp.zeros(batch["x"].shape[1]), "heads": {n: jnp.zeros(()) for n in self.names}}

  def encode(self, w, batch, rng=None):
    return batch["x"] @ w

  def loss_sum(self, name, bias, pred, batch):
    return jnp.sum(batch[name + "_mask"] * (pred + bias - batch[name]) ** 2)

  def label_count(self, name, batch):
    return jnp.sum(batch[name + "_mask"])


def _linear_batch(x, a, b, c, present=(1, 1, 1)):
  rows = len(x)
  batch = {"x": np.asarray(x, np.float32)}
  for name, y, on in zip("abc", (a, b, c), present):
    batch[name] = np.full(rows, y, np.float32)
    batch[name + "_mask"] = np.full(rows, on, np.float32)
  return batch


def test_conflict_fraction_and_affinity_on_a_known_case(tmp_path):
  """Four logged steps: a conflicting pair (a and b pull opposite ways), none, none with b
  absent, one present task (no pair: not counted) -> 1 of 3. Affinity by hand."""
  model = _Linear()
  x = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]])
  batches = [_linear_batch(x, 1, -1, 2), _linear_batch(x, 1, 1, 2),
             _linear_batch(x, 1, -1, 2, present=(1, 0, 1)),
             _linear_batch(x, 1, -1, 2, present=(1, 0, 0))]
  balancer = get("equal_weight", num_tasks=3)
  state = create_train_state(model, balancer, optax.sgd(0.1), batches[0], 0)
  step = make_train_step(model, balancer, optax.sgd(0.1), donate=False)
  lr = 0.05
  diag = diagnostics.Diagnostics(step, model, affinity_lr=lr)
  logger = MetricLogger(str(tmp_path))
  for i, batch in enumerate(batches):
    host = diag(state, batch, affinity=True)
    logger.write({"step": i + 1, "split": "train",
                  **diagnostics.record_fields(host, model.names)})
  logger.close()
  records = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert records[0]["cosines"] == pytest.approx({"a|b": -1.0, "a|c": 1.0, "b|c": -1.0})
  assert records[2]["cosines"]["a|b"] is None and records[2]["task_grad_norms"]["b"] is None
  summary = diagnostics.run_summary(str(tmp_path), say=lambda _: None)
  assert summary["conflict_fraction"] == pytest.approx(1 / 3)
  assert (summary["conflict_steps"], summary["judged_steps"]) == (1, 3)
  # By hand, step 1: g_t = -2 mean(y_t x), L_j(w) = mean((x w - y_j)^2).
  y = np.array([1.0, -1.0, 2.0])
  grads = -2 * y[:, None] * x.mean(0)[None]
  np.testing.assert_allclose([records[0]["task_grad_norms"][n] for n in "abc"],
                             np.linalg.norm(grads, axis=1), rtol=1e-6)
  loss = lambda w, j: np.mean((x @ w - y[j]) ** 2)
  expected = {f"{a}->{b}": 1 - loss(-lr * grads[i], j) / loss(np.zeros(2), j)
              for i, a in enumerate("abc") for j, b in enumerate("abc") if i != j}
  assert records[0]["affinity"] == pytest.approx(expected, rel=1e-5)
  assert expected["a->b"] < 0 < expected["a->c"]  # a's step hurts b and helps c
  # The mean over the steps where both tasks were present (c is absent at step 4).
  mean = np.mean([r["affinity"]["a->c"] for r in records[:3]])
  assert records[3]["affinity"]["a->c"] is None
  assert summary["affinity"]["a->c"] == pytest.approx(mean, rel=1e-6)


def _spy_steps(monkeypatch):
  """Records each step ``make_train_step`` makes in the loop: its kwargs, the jitted function
  of its first call and that call's shapes, its calls and its output metric names."""
  seen = []
  real = loop.make_train_step

  def spy(*args, **kwargs):
    step = real(*args, **kwargs)
    entry = {"kwargs": kwargs, "fn": None, "args": None, "keys": set(), "calls": 0}
    jitted_for = step.jitted_for
    def call(state, batch):
      fn = jitted_for(batch)
      if entry["args"] is None:
        entry["fn"] = fn
        entry["args"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                     (state, batch))
      entry["calls"] += 1
      new_state, metrics = fn(state, batch)
      entry["keys"] |= set(metrics)
      return new_state, metrics
    step.jitted_for = lambda batch: call
    seen.append(entry)
    return step

  monkeypatch.setattr(loop, "make_train_step", spy)
  return seen


def test_train_and_evaluate_logs_diagnostics_for_equal_weight(suite_path, tmp_path,
                                                             monkeypatch):
  """Through ``train_and_evaluate`` (multi-input tiny suite): EW logs per-task norms and
  cosines at every logging step, affinity every 4 steps, the conflict fraction lands in
  results.json, ``jmtl plot`` draws them; the train step is the same program with the
  diagnostics off."""
  path, data_dir = suite_path
  steps = _spy_steps(monkeypatch)
  config = tiny_config(path, data_dir, steps=4, log_every=2, checkpoint_every=4,
                       affinity_every=4, log_cosines=True)
  result = loop.train_and_evaluate(config, str(tmp_path / "on"), out=open(os.devnull, "w"))
  train = [r for r in read_jsonl(str(tmp_path / "on" / "metrics.jsonl"))
           if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4]
  for r in train:
    assert set(r["task_grad_norms"]) == {"ner", "topic", "lm"}
    assert all(v > 0 for v in r["task_grad_norms"].values())
    assert set(r["cosines"]) == {"ner|topic", "ner|lm", "topic|lm"}
    assert all(-1 <= v <= 1 for v in r["cosines"].values())
  assert "affinity" not in train[0] and len(train[1]["affinity"]) == 6
  conflicts = [min(r["cosines"].values()) < 0 for r in train]
  assert result["diagnostics"]["conflict_fraction"] == pytest.approx(np.mean(conflicts))
  assert json.load(open(tmp_path / "on" / "results.json"))["diagnostics"] == result["diagnostics"]
  png = plots.plot_curves(str(tmp_path / "on"))[0]
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

  off = tiny_config(path, data_dir, steps=4, log_every=2, checkpoint_every=4,
                    log_cosines=False)  # the same schedule: the same step program
  loop.train_and_evaluate(off, str(tmp_path / "off"), out=open(os.devnull, "w"))
  assert not any("cosines" in r for r in read_jsonl(str(tmp_path / "off" / "metrics.jsonl")))
  on_step, off_step = steps
  assert on_step["kwargs"] == off_step["kwargs"] and on_step["calls"] == 4
  assert on_step["keys"] == {"losses", "grad_norm", "finite", "weights"}
  text = lambda entry: re.sub(r"module @\S+", "", entry["fn"].lower(*entry["args"]).as_text())
  assert text(on_step) == text(off_step)


@pytest.mark.parametrize("key, value, message", [
    ("affinity_every", 3, "train.affinity_every 3 is not a multiple of train.log_every 2"),
    ("affinity_every", -1, "train.affinity_every -1: expected an integer >= 0"),
    ("affinity_lr", -0.5, "train.affinity_lr -0.5: expected a finite number >= 0"),
])
def test_bad_diagnostics_keys_are_refused_naming_the_key(key, value, message):
  config = base_config()
  config.train.log_every = 2
  config.train[key] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    preflight.validate(config)

"""End-to-end runs of train_and_evaluate on a tiny generated suite."""

import json
import os

import jax
import numpy as np
import pytest

from jmtl.config import ConfigError, base_config, load_config
from jmtl.train import loop
from jmtl.train.checkpoint import CheckpointError
from tiny_suite import write_tiny_suite


def tiny_config(suite_path, data_dir, **train):
  c = base_config()
  c.data.suite = suite_path
  c.data.data_dir = data_dir
  c.data.max_len = 16
  c.data.buckets = (16,)
  c.data.vocab_size = 200
  c.data.batch_size = 4
  c.data.eval_batch_size = 8
  c.model.update(dict(width=16, depth=1, num_heads=2, mlp_width=32, pooled_width=16,
                      head_hidden=8))
  c.optimizer.warmup_steps = 2
  # Diagnostics off (users' default is on): they compile a second per-task-gradient program,
  # which doubled every loop test's compile time; test_diagnostics.py turns them on.
  c.train.update(dict(steps=6, log_every=2, eval_every=0, checkpoint_every=3, progress=False,
                      log_cosines=False))
  c.train.update(train)
  return c


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  return write_tiny_suite(str(root)), str(root / "data_dir")


def _restore(workdir, config, warn=print):
  """(step, state, data_state) of the newest readable checkpoint in ``workdir``."""
  from jmtl.config import to_json
  from jmtl.train.checkpoint import Checkpoints
  abstract = jax.eval_shape(loop.build_experiment(config).create_state)
  ckpts = Checkpoints(workdir, async_save=False)
  try:
    return ckpts.restore(abstract, json.loads(to_json(config)), warn=warn)
  finally:
    ckpts.close()


def test_train_writes_logs_checkpoints_and_results(suite_path, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, eval_every=3, log_cosines=True)  # the user's default
  config.balancer.name = "pcgrad"
  result = loop.train_and_evaluate(config, str(tmp_path), out=open(os.devnull, "w"))
  assert result["step"] == 6
  assert set(result["validation"]) == {"ner", "topic", "lm"}
  assert 0 <= result["validation"]["topic"]["accuracy"] <= 1
  assert np.isfinite(result["validation"]["lm"]["perplexity"])
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4, 6]
  assert set(train[0]["losses"]) == {"ner", "topic", "lm"}
  assert "ner|topic" in train[0]["cosines"] and "weights" in train[0]
  assert any(r["split"] == "validation" for r in records)
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [3, 6]
  assert json.load(open(tmp_path / "results.json"))["step"] == 6


@pytest.mark.parametrize("method", ["equal_weight", "gradnorm"])
def test_resume_is_bit_identical(suite_path, tmp_path, method):
  """2N steps in one go == N steps, stop, resume for N more."""
  path, data_dir = suite_path
  full = tiny_config(path, data_dir, steps=6, checkpoint_every=3)
  full.balancer.name = method
  loop.train_and_evaluate(full, str(tmp_path / "full"), out=open(os.devnull, "w"))
  half = tiny_config(path, data_dir, steps=3, checkpoint_every=3)
  half.balancer.name = method
  loop.train_and_evaluate(half, str(tmp_path / "split"), out=open(os.devnull, "w"))
  loop.train_and_evaluate(full, str(tmp_path / "split"), out=open(os.devnull, "w"))
  step_a, a, data_a = _restore(str(tmp_path / "full"), full)
  step_b, b, data_b = _restore(str(tmp_path / "split"), full)
  assert step_a == step_b == 6
  assert data_a == data_b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # rerunning a finished run trains nothing more and evaluates again
  again = loop.train_and_evaluate(full, str(tmp_path / "full"), out=open(os.devnull, "w"))
  assert again["step"] == 6


def test_config_mismatch_is_refused_and_nothing_overwritten(suite_path, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=3)
  loop.train_and_evaluate(config, str(tmp_path), out=open(os.devnull, "w"))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  other = tiny_config(path, data_dir, steps=6)
  other.model.width = 32
  with pytest.raises(CheckpointError, match="model"):
    loop.train_and_evaluate(other, str(tmp_path), out=open(os.devnull, "w"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_corrupt_checkpoint_falls_back_to_previous_step(suite_path, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=6, checkpoint_every=3)
  loop.train_and_evaluate(config, str(tmp_path), out=open(os.devnull, "w"))
  state_dir = tmp_path / "checkpoints" / "6" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  messages = []
  step, _, _ = _restore(str(tmp_path), config, warn=messages.append)
  assert step == 3
  assert any("step 6 is unreadable" in m for m in messages)


def test_relative_workdir_keeps_latest_and_best_checkpoints(suite_path, tmp_path, monkeypatch):
  # `jmtl train --workdir runs/default` passes a relative path; the best checkpoint is first
  # saved at the first evaluation, well into the run.
  path, data_dir = suite_path
  monkeypatch.chdir(tmp_path)
  config = tiny_config(path, data_dir, steps=4, eval_every=2, checkpoint_every=2)
  loop.train_and_evaluate(config, os.path.join("runs", "relative"), out=open(os.devnull, "w"))
  assert sorted(os.listdir("runs/relative/checkpoints")) == ["2", "4"]
  assert os.listdir("runs/relative/best")
  evaluated = loop.evaluate_checkpoint(config, "runs/relative", best=True,
                                       out=open(os.devnull, "w"))
  assert evaluated["step"] in (2, 4)


def test_workdir_that_is_a_file_is_an_error(suite_path, tmp_path):
  path, data_dir = suite_path
  target = tmp_path / "file"
  target.write_text("x")
  with pytest.raises(ConfigError, match="is a file"):
    loop.train_and_evaluate(tiny_config(path, data_dir), str(target), out=open(os.devnull, "w"))


def test_best_checkpoint_by_chosen_metric(suite_path, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=6, eval_every=2, checkpoint_every=6,
                       best_metric="topic/accuracy")
  loop.train_and_evaluate(config, str(tmp_path), out=open(os.devnull, "w"))
  evals = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if r["split"] == "validation"]
  accuracy = {r["step"]: r["tasks"]["topic"]["accuracy"] for r in evals}
  best_step = max(sorted(accuracy), key=lambda s: accuracy[s])  # the earliest of equal bests
  result = loop.evaluate_checkpoint(config, str(tmp_path), best=True, out=open(os.devnull, "w"))
  assert accuracy[result["step"]] == accuracy[best_step]
  assert result["validation"]["topic"]["accuracy"] == pytest.approx(accuracy[result["step"]])
  bad = tiny_config(path, data_dir, best_metric="topic/nope")
  with pytest.raises(ConfigError, match="train.best_metric 'topic/nope': valid values are score"):
    loop.train_and_evaluate(bad, str(tmp_path / "bad"), out=open(os.devnull, "w"))


def test_eval_restores_a_rep_grad_balancer_state(suite_path, tmp_path):
  # MoCo under rep-grad keeps per-task gradients shaped like the shared representation,
  # not like the parameters: eval must rebuild that state's shapes to restore the checkpoint.
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=3, checkpoint_every=3)
  config.data.sampler = "uniform"  # one mixed batch: a shared input, as rep-grad needs
  config.grad_mode = "rep"
  config.balancer.name = "moco"
  trained = loop.train_and_evaluate(config, str(tmp_path), out=open(os.devnull, "w"))
  evaluated = loop.evaluate_checkpoint(config, str(tmp_path), out=open(os.devnull, "w"))
  assert evaluated["step"] == 3
  for task, metrics in trained["validation"].items():
    assert evaluated["validation"][task] == pytest.approx(metrics, rel=1e-6), task


def test_rep_grad_on_one_batch_per_task_is_a_config_error(suite_path, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=2)
  config.grad_mode = "rep"
  with pytest.raises(ConfigError, match="grad_mode='rep' needs one shared input"):
    loop.train_and_evaluate(config, str(tmp_path), out=open(os.devnull, "w"))
  assert not os.listdir(tmp_path)  # nothing written before the error


def test_single_task_baselines_then_delta_m(suite_path, tmp_path):
  path, data_dir = suite_path
  single = tiny_config(path, data_dir, steps=2, checkpoint_every=2)
  single.single_task = True
  out = loop.train_and_evaluate(single, str(tmp_path / "single"), out=open(os.devnull, "w"))
  baselines = json.load(open(tmp_path / "single" / "baselines.json"))
  assert set(baselines) == {"validation", "test"}
  assert set(baselines["validation"]) == {"ner", "topic", "lm"}
  # each baseline run trained its task only
  assert set(out["runs"]["topic"]["validation"]) == {"topic"}
  # Δm against known baselines (a short baseline run may score 0, where Δm is undefined)
  known = {"validation": {"ner": 0.5, "topic": 0.4, "lm": 0.25}}
  (tmp_path / "known.json").write_text(json.dumps(known))
  multi = tiny_config(path, data_dir, steps=2, checkpoint_every=2)
  multi.baselines = str(tmp_path / "known.json")
  result = loop.train_and_evaluate(multi, str(tmp_path / "multi"), out=open(os.devnull, "w"))
  main = {"ner": "span_f1", "topic": "accuracy", "lm": "accuracy"}
  present = {t: result["validation"][t][m] for t, m in main.items()}
  expected = 100 / 3 * sum((present[t] - known["validation"][t]) / known["validation"][t]
                           for t in main)
  assert result["delta_m"] == pytest.approx(expected)


def test_own_task_lengths_train_to_the_same_numbers(suite_path, tmp_path):
  """Padding each task of a multi-input step to its own bucket changes shapes, not numbers:
  without dropout (whose draws follow the padded shape) the parameters after the same steps
  agree with the shared-length run to float32 round-off, here on the exact per-task Jacobian
  path (PCGrad) with tasks of different lengths."""
  path, data_dir = suite_path
  results = {}
  for lengths in ("shared", "own"):
    config = tiny_config(path, data_dir, steps=4, checkpoint_every=4)
    config.data.update(buckets=(4, 8, 16), task_lengths=lengths)
    config.model.update(dropout=0.0, attention_dropout=0.0)
    config.balancer.name = "pcgrad"
    # SGD: Adam would turn round-off in gradients that are zero in exact arithmetic
    # (attention key biases) into full-size steps.
    config.optimizer.update(name="sgd", learning_rate=0.5, weight_decay=0.0)
    suite, tasks = loop.load_suite(config)
    iterator = loop.train_iterator(config, suite, tasks)
    widths = [{b["input_ids"].shape[1] for b in next(iterator).values()} for _ in range(4)]
    assert any(len(w) > 1 for w in widths) == (lengths == "own"), widths
    workdir = str(tmp_path / lengths)
    loop.train_and_evaluate(config, workdir, out=open(os.devnull, "w"))
    results[lengths] = _restore(workdir, config)[1].params
  for (key, own), shared in zip(jax.tree_util.tree_leaves_with_path(results["own"]),
                                jax.tree.leaves(results["shared"])):
    np.testing.assert_allclose(own, shared, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(key))

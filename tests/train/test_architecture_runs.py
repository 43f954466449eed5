"""Sharing architectures in the runner: predict on a PLE workdir, exact resume of every
architecture through the step and ``Checkpoints``, a bad ``model.architecture``, and one
device == pmap or sharded on 2 fake devices (one subprocess, as ``test_parallel.py``)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jmtl

from jmtl.config import ConfigError
from jmtl.models import architectures
from jmtl.train import loop
from device_env import fake_devices_env
from test_loop import tiny_config
from test_predict import _conll
from tiny_suite import write_tiny_suite


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  return write_tiny_suite(str(root)), str(root / "data_dir")


def _arch_config(path, data_dir, name, **train):
  c = tiny_config(path, data_dir, **train)
  c.model.update(dict(architecture=name, expert_width=8, expert_depth=1, num_experts=2))
  return c


def test_predict_reads_an_expert_architecture_workdir(suite_path, tmp_path):
  """PLE (private experts, dropout on): the predictor reads the architecture's checkpoint and
  tags the validation words as evaluation did. (Exact resume of every architecture, PLE
  included, is checked by the 2-device subprocess test below.)"""
  path, data_dir = suite_path
  full = _arch_config(path, data_dir, "ple", steps=3, checkpoint_every=3)
  devnull = open(os.devnull, "w")
  result = loop.train_and_evaluate(full, str(tmp_path / "full"), out=devnull)
  assert set(result["validation"]) == {"ner", "topic", "lm"}
  # jmtl predict on the architecture's workdir tags the validation words as evaluation did
  sentences = _conll(os.path.join(os.path.dirname(data_dir), "ner.validation.tsv"))
  predicted = jmtl.Predictor.from_workdir(str(tmp_path / "full")).predict(
      [words for words, _ in sentences], tasks=["ner"])
  hits = [p == g for record, (_, gold) in zip(predicted, sentences)
          for p, g in zip(record["tasks"]["ner"]["tags"], gold)]
  assert np.mean(hits) == pytest.approx(result["validation"]["ner"]["accuracy"], abs=1e-9)


def test_unknown_architecture_is_a_config_error_with_a_suggestion(suite_path):
  path, data_dir = suite_path
  config = _arch_config(path, data_dir, "cross_stich")
  with pytest.raises(ConfigError, match="model.architecture='cross_stich'.*'cross_stitch'"):
    loop.build_experiment(config)
  config = _arch_config(path, data_dir, "dselect_k")
  config.model.dselect_k = 5
  with pytest.raises(ConfigError, match="model.architecture='dselect_k'.*k=5"):
    loop.build_experiment(config)


# One subprocess (2 fake devices) for every architecture: the device count is fixed when JAX
# starts, and one process compiles each architecture's steps once. Each architecture has its
# own balancer and grad mode, so the set covers every gradient path: loss-only (dwa),
# Jacobian (pcgrad), compact Gram (upgrad), rep-grad (mgda), GradNorm on the declared last
# shared layer, the multi-input layout and DSelect-k's auxiliary loss. Four are also run on
# 2 devices, under pmap or sharded (both model-independent wrappers of the same step, each
# covered here and by every case of test_parallel.py): those where an architecture adds
# something the devices must agree on beyond the task losses (soft sharing's penalty,
# DSelect-k's psummed auxiliary loss on multi-input batches, MTAN's GradNorm layer, CGC's
# compact Gram under pmap). The gated and stitched ones (None) have per-example gates and run
# the resume check only: one compile each instead of two. Hard sharing has the same checks in
# test_parallel.py and test_loop.py.
CASES = (("soft", "same_input", "mgda", "rep", "sharded"),
         ("cross_stitch", "same_input", "dwa", "exact", None),
         ("mmoe", "same_input", "pcgrad", "exact", None),
         ("cgc", "same_input", "upgrad", "exact", "pmap"),
         ("ple", "same_input", "mgda", "rep", None),
         ("dselect_k", "multi_input", "pcgrad", "exact", "pmap"),
         ("mtan", "same_input", "gradnorm", "exact", "sharded"))

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import jax, numpy as np, optax
    sys.path.insert(0, {tests!r})
    from tiny_model import TINY, make_batch
    from jmtl.balancers import get
    from jmtl.models import architectures
    from jmtl.tasks import TaskSpec
    from jmtl.train.checkpoint import Checkpoints
    from jmtl.train.parallel import make_train_step
    from jmtl.train.state import create_train_state

    tasks = (TaskSpec("topic", "classification", 3), TaskSpec("pos", "tagging", 5),
             TaskSpec("score", "regression"))
    options = architectures.Options(expert_width=8, expert_depth=1, num_experts=3,
                                    soft_strength=0.1, dselect_entropy=0.05)
    # SGD with momentum, as test_parallel.py (Adam would amplify reduction-order noise)
    optimizer = optax.sgd(0.1, momentum=0.9)
    flat = lambda state: np.concatenate(
        [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state.params)]).tolist()
    for name, layout, method, grad_mode, parallel in {cases!r}:
      model = architectures.build(name, TINY, tasks, head_hidden=8, layout=layout,
                                  options=options)
      hparams = dict(layer=model.last_shared_layer) if method == "gradnorm" else {{}}
      balancer = get(method, num_tasks=len(tasks), **hparams)
      def batch_at(step):
        if layout == "multi_input":
          return {{s.name: make_batch((s,), batch_size=8, seed=100 * step + i)
                  for i, s in enumerate(tasks)}}
        return make_batch(tasks, batch_size=8, seed=step)
      create = lambda: create_train_state(model, balancer, optimizer, batch_at(0), 0)
      out = {{}}
      for parallelism in ("none",) + ((parallel,) if parallel else ()):
        step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode,
                               parallelism=parallelism, num_devices=2)
        state = step.place_state(jax.jit(create)())
        if parallelism == "none":  # stop after 2 steps, checkpoint, restore, 2 more
          workdir = tempfile.mkdtemp()
          checkpoints = Checkpoints(workdir, async_save=False)
        for s in range(4):
          state, metrics = step(state, step.place_batch(batch_at(s)))
          if parallelism == "none" and s == 1:
            checkpoints.save(2, state, {{}}, "{{}}")
        out[parallelism] = flat(step.gather_state(state))
        if parallelism == "none":
          restored_step, resumed, _ = checkpoints.restore(jax.eval_shape(create), {{}})
          checkpoints.close()
          for s in range(restored_step, 4):
            resumed, _ = step(resumed, batch_at(s))
          out["resumed_bit_identical"] = all(
              np.array_equal(np.asarray(x), np.asarray(y))
              for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(state)))
          out["aux_loss"] = float(metrics.get("aux_loss", -1.0))
      out["devices"] = len(jax.devices())
      print("RESULT" + json.dumps({{name: out}}), flush=True)  # one line per architecture
""")


def test_every_architecture_resumes_exactly_and_pmap_and_sharded_match_one_device():
  """Per architecture: 4 steps == 2 steps, checkpoint, restore, 2 more (bit for bit, the
  whole state); for four of them, pmap or jit+NamedSharding on 2 devices reaches the
  one-device params."""
  env = fake_devices_env(2)
  code = SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), cases=CASES)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  results = {}
  for line in out.stdout.splitlines():
    if line.startswith("RESULT"):
      results.update(json.loads(line[len("RESULT"):]))
  assert sorted(results) == sorted(case[0] for case in CASES)
  assert {c[4] for c in CASES} - {None} == {"pmap", "sharded"}
  assert {c[0] for c in CASES} | {"hard"} == set(architectures.NAMES)
  parallel_of = {case[0]: case[4] for case in CASES}
  for name, final in results.items():
    assert final["devices"] == 2
    assert final["resumed_bit_identical"], f"{name}: the resumed run drifted"
    parallelism = parallel_of[name]
    assert set(final) & {"pmap", "sharded"} == ({parallelism} if parallelism else set()), name
    if parallelism is None:
      continue
    np.testing.assert_allclose(np.asarray(final[parallelism]), np.asarray(final["none"]),
                               rtol=1e-5, atol=1e-5,
                               err_msg=f"{name}: {parallelism} drifted from one device")
  assert results["dselect_k"]["aux_loss"] > 0  # the entropy term ran (and was psummed)


def test_unknown_architecture_is_refused_before_any_workdir_or_data(tmp_path, suite_path):
  path, _ = suite_path
  data_dir = tmp_path / "fresh_data"
  config = _arch_config(path, str(data_dir), "cross_stich")
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match="model.architecture.*'cross_stitch'"):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists() and not data_dir.exists()

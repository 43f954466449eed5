"""``jmtl train`` as 2 processes x 2 CPU devices on 127.0.0.1 trains like 1 process x 4
devices, and its checkpoint resumes as 1 process; bad multi-host flags are one clear error."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jmtl import cli
from jmtl.config import to_json
from jmtl.train import loop
from jmtl.train.checkpoint import Checkpoints
from device_env import fake_devices_env
from test_cli import TINY_OVERRIDES
from test_loop import tiny_config
from test_multihost import _free_port
from tiny_suite import write_tiny_suite
STEPS = 4
MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _launch(args, devices, extra_env=None):
  env = fake_devices_env(devices, drop=MULTIHOST_ENV)
  env.update(extra_env or {})
  return subprocess.Popen([sys.executable, "-m", "jmtl.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def _finish(procs):
  outs = [p.communicate(timeout=1800) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
  return [stdout for stdout, _ in outs]


def _state(workdir, config, step):
  abstract = jax.eval_shape(loop.build_experiment(config).create_state)
  checkpoints = Checkpoints(str(workdir), async_save=False)
  try:
    _, state, data_state = checkpoints.restore(abstract, json.loads(to_json(config)), step=step)
  finally:
    checkpoints.close()
  return state, data_state


def _records(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f]


def test_two_processes_train_like_one_with_four_devices_and_resume_as_one(tmp_path):
  suite, data_dir = write_tiny_suite(str(tmp_path / "suite")), str(tmp_path / "data")
  config = tiny_config(suite, data_dir, steps=STEPS, checkpoint_every=2, parallelism="sharded")
  config.balancer.name = "pcgrad"
  # SGD with momentum, as test_parallel.py: Adam divides each update by the root of its
  # running square, so a gradient entry near 0 turns 1e-9 reduction-order noise (2x2 vs 1x4
  # devices sum in another order) into an O(lr) difference.
  config.optimizer.update(dict(name="sgd", momentum=0.9, learning_rate=0.1))
  train = lambda workdir, data=data_dir: [
      "train", "--config", "configs/default.py", "--workdir", str(workdir),
      f"--config.data.suite={suite}", f"--config.data.data_dir={data}", *TINY_OVERRIDES,
      "--config.balancer.name=pcgrad", "--config.train.progress=False",
      "--config.optimizer.name=sgd", "--config.optimizer.momentum=0.9",
      "--config.optimizer.learning_rate=0.1",
      f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=2",
      "--config.train.parallelism=sharded"]
  # Two processes on a fresh data_dir (process 0 builds the data, then the other reads it):
  # process 0 named by flags, process 1 by JAX's environment variables. Alongside, the
  # reference: one process with 4 devices (its own data_dir: no race with the build).
  two, one, port = tmp_path / "two", tmp_path / "one", _free_port()
  first, second, _ = _finish([
      _launch([*train(two), "--coordinator_address", f"127.0.0.1:{port}",
               "--num_processes", "2", "--process_id", "0"], devices=2),
      _launch(train(two), devices=2, extra_env=dict(
          JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
          JAX_PROCESS_ID="1")),
      _launch(train(one, str(tmp_path / "data_one")), devices=4)])
  assert f"validation at step {STEPS}" in first and "validation at step" not in second
  # The 2-process run resumes from its step-2 checkpoint as 1 process (4 devices).
  resumed = tmp_path / "resumed"
  shutil.copytree(two, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(STEPS))
  _finish([_launch(train(resumed), devices=4)])

  # Written once (by process 0): one start event, each log step once, one results file.
  assert [e["event"] for e in _records(two, "events.jsonl")] == ["start"]
  assert [r["step"] for r in _records(two, "metrics.jsonl") if r["split"] == "train"] == [2, 4]
  assert json.load(open(two / "results.json"))["step"] == STEPS and (two / "run.json").is_file()
  assert [e["event"] for e in _records(resumed, "events.jsonl")] == ["start", "resume"]
  reference = {step: _state(one, config, step) for step in (2, STEPS)}
  for workdir, steps in ((two, (2, STEPS)), (resumed, (STEPS,))):
    for step in steps:
      state, data_state = _state(workdir, config, step)
      ref_state, ref_data = reference[step]
      assert data_state == ref_data
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{workdir.name} at step {step}")


@pytest.mark.parametrize("flags, env, message", [
    (["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "2"],
     {}, "--process_id 2 is out of range: process ids are 0..1"),
    (["--num_processes", "2", "--process_id", "0"], {},
     "--num_processes 2 needs the coordinator: pass --coordinator_address HOST:PORT"),
    ([], dict(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", JAX_NUM_PROCESSES="4",
              JAX_PROCESS_ID="-1"), "$JAX_PROCESS_ID -1 is out of range: process ids are 0..3"),
    (["--coordinator_address", "10.0.0.1", "--num_processes", "2", "--process_id", "0"], {},
     "--coordinator_address '10.0.0.1': expected HOST:PORT"),
])
def test_bad_multihost_flags_are_one_error_naming_the_flag(flags, env, message, tmp_path,
                                                          monkeypatch, capsys):
  for name in MULTIHOST_ENV:
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  code = cli.main(["train", "--config", "configs/default.py", "--workdir", str(tmp_path / "w"),
                   *flags])
  err = capsys.readouterr().err
  assert code == cli.EXIT_ERROR and err.count("jmtl: error:") == 1, err
  assert message in err and "Traceback" not in err
  assert not (tmp_path / "w").exists()


def test_flags_override_jax_variables_and_distributed_leaves_the_rest_to_jax():
  from jmtl.train.distributed import Request, resolve
  env = dict(JAX_COORDINATOR_ADDRESS="h0:1234", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3")
  request = resolve({"process_id": 1}, environ=env)
  assert (request.coordinator_address, request.num_processes, request.process_id) == (
      "h0:1234", 4, 1)
  assert request.origin["process_id"] == "--process_id"
  assert request.origin["num_processes"] == "$JAX_NUM_PROCESSES"
  assert resolve({}, environ={}) is None  # nothing asked: a single-process run
  assert resolve({"num_processes": 1}, environ={}) is None
  # --distributed: what is not given is for jax.distributed.initialize to detect (SLURM, TPU).
  assert resolve({}, detect=True, environ={}) == Request(None, None, None, True, {
      "coordinator_address": "--coordinator_address", "num_processes": "--num_processes",
      "process_id": "--process_id"})

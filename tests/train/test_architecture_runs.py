"""Sharing architectures in the runner: exact resume, a bad ``model.architecture``, and one
device == pmap == sharded on 2 fake devices (subprocesses, as ``test_parallel.py``)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jmtl.config import ConfigError
from jmtl.train import loop
from test_loop import _restore, tiny_config
from test_parallel import SCRIPT as parallel_script
from tiny_suite import write_tiny_suite


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  return write_tiny_suite(str(root)), str(root / "data_dir")


def _arch_config(path, data_dir, name, **train):
  c = tiny_config(path, data_dir, **train)
  c.model.update(dict(architecture=name, expert_width=8, expert_depth=1, num_experts=2))
  return c


def test_resume_is_bit_identical_for_an_expert_architecture(suite_path, tmp_path):
  """PLE with UPGrad: 6 steps in one go == 3 steps, stop, resume for 3 more."""
  path, data_dir = suite_path
  full = _arch_config(path, data_dir, "ple", steps=6, checkpoint_every=3)
  full.balancer.name = "upgrad"
  half = _arch_config(path, data_dir, "ple", steps=3, checkpoint_every=3)
  half.balancer.name = "upgrad"
  devnull = open(os.devnull, "w")
  result = loop.train_and_evaluate(full, str(tmp_path / "full"), out=devnull)
  assert set(result["validation"]) == {"ner", "topic", "lm"}
  loop.train_and_evaluate(half, str(tmp_path / "split"), out=devnull)
  loop.train_and_evaluate(full, str(tmp_path / "split"), out=devnull)
  step_a, a, data_a = _restore(str(tmp_path / "full"), full)
  step_b, b, data_b = _restore(str(tmp_path / "split"), full)
  assert step_a == step_b == 6 and data_a == data_b
  assert "layer_0_shared" in a.params["shared"]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_unknown_architecture_is_a_config_error_with_a_suggestion(suite_path):
  path, data_dir = suite_path
  config = _arch_config(path, data_dir, "cross_stich")
  with pytest.raises(ConfigError, match="model.architecture='cross_stich'.*'cross_stitch'"):
    loop.build_experiment(config)
  config = _arch_config(path, data_dir, "dselect_k")
  config.model.dselect_k = 5
  with pytest.raises(ConfigError, match="model.architecture='dselect_k'.*k=5"):
    loop.build_experiment(config)


# test_parallel.py's script, with an architecture in place of MultiTaskModel
MODEL_LINE = "model = MultiTaskModel(TINY, tasks, layout=layout)"
SCRIPT = parallel_script.replace(MODEL_LINE, textwrap.dedent("""\
    from jmtl.models import architectures
    options = architectures.Options(expert_width=8, expert_depth=1, num_experts=3,
                                    soft_strength=0.1)
    model = architectures.build({name!r}, TINY, tasks, head_hidden=8, options=options)"""))


@pytest.mark.parametrize("name,method,grad_mode", [
    ("mmoe", "pcgrad", "exact"),
    ("soft", "mgda", "rep"),
    ("cross_stitch", "dwa", "exact"),
])
def test_pmap_and_sharded_match_single_device(name, method, grad_mode):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  assert MODEL_LINE in parallel_script
  code = SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), name=name,
                       layout="same_input", method=method, grad_mode=grad_mode, n=2)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  final = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))[6:])
  assert final["none_devices"] == 2
  for parallelism in ("pmap", "sharded"):
    np.testing.assert_allclose(np.asarray(final[parallelism]), np.asarray(final["none"]),
                               rtol=1e-5, atol=1e-5,
                               err_msg=f"{name}: {parallelism} drifted from one device")


def test_unknown_architecture_is_refused_before_any_workdir_or_data(tmp_path, suite_path):
  path, _ = suite_path
  data_dir = tmp_path / "fresh_data"
  config = _arch_config(path, str(data_dir), "cross_stich")
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match="model.architecture.*'cross_stitch'"):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists() and not data_dir.exists()

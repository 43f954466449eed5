"""``init_from``: a run starts from another run's encoder and matching heads."""

import json
import os
import re

import jax
import numpy as np
import pytest

from jmtl.config import ConfigError
from jmtl.data import DataMismatchError
from jmtl.train import loop, runs, transfer
from jmtl.train.checkpoint import CheckpointError
from jmtl.train.optim import param_paths
from test_loop import suite_path, tiny_config  # noqa: F401  (suite_path is a fixture)

QUIET = dict(out=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def source(suite_path):  # noqa: F811
  """A run trained on ner + topic for 3 steps (checkpoints at 2 and 3)."""
  import tempfile
  path, data_dir = suite_path
  workdir = tempfile.mkdtemp(prefix="jmtl-source-")
  config = tiny_config(path, data_dir, steps=3, checkpoint_every=2)
  config.data.tasks = ("ner", "topic")
  loop.train_and_evaluate(config, workdir, **QUIET)
  return workdir


def _flat(tree):
  return dict(zip(jax.tree.leaves(param_paths(tree)), map(np.asarray, jax.tree.leaves(tree))))


def _fresh_and_transferred(config):
  experiment = loop.build_experiment(config)
  fresh = jax.jit(experiment.create_state)()
  fresh_params = _flat(fresh.params)
  fingerprints = runs.run_fingerprints(experiment.suite, [t.name for t in experiment.tasks])
  state, report = transfer.init_from(config, fresh, experiment.optimizer, fingerprints,
                                     experiment.model)
  return fresh_params, state, report


@pytest.mark.parametrize("tasks,loaded,new", [
    (("lm",), [], ["lm"]),  # train on A, fine-tune on B
    (("topic",), ["topic"], []),  # multi-task, then single-task
    (("ner", "topic", "lm"), ["ner", "topic"], ["lm"]),  # adding a task
])
def test_encoder_and_matching_heads_are_loaded_new_heads_fresh(suite_path, source, tasks,
                                                               loaded, new):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=3)
  config.data.tasks = tasks
  config.init_from = f"{source}:2"
  saved = _flat(transfer.read_checkpoint(source, 2).params)
  newest = _flat(transfer.read_checkpoint(source).params)
  fresh, state, report = _fresh_and_transferred(config)
  params = _flat(state.params)
  for name, value in params.items():
    task = name.split("/")[1] if name.startswith("heads/") else None
    if task in new:
      np.testing.assert_array_equal(value, fresh[name], err_msg=name)
    else:  # the encoder and the loaded heads: exactly the step-2 weights
      np.testing.assert_array_equal(value, saved[name], err_msg=name)
  assert any(not np.array_equal(saved[n], newest[n]) for n in saved)  # step 2 was picked
  assert report["loaded"] == ["encoder"] + [f"heads/{t}" for t in loaded]
  assert report["fresh_heads"] == {t: "new task" for t in new}
  assert report["unused_heads"] == sorted({"ner", "topic"} - set(tasks))
  assert report["step"] == 2 and report["workdir"] == os.path.abspath(source)
  # the optimizer starts fresh
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state))


def test_a_head_of_another_shape_is_initialised_fresh_and_reported(suite_path, source):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir)
  config.data.tasks = ("topic",)
  config.model.head_hidden = 4
  config.init_from = source
  fresh, state, report = _fresh_and_transferred(config)
  assert report["loaded"] == ["encoder"]
  assert "heads/topic" not in report["loaded"]
  assert "hidden/kernel: checkpoint (16, 8), this model (16, 4)" in report["fresh_heads"]["topic"]
  for name, value in _flat(state.params).items():
    if name.startswith("heads/"):
      np.testing.assert_array_equal(value, fresh[name])


def test_fine_tuning_run_records_its_origin_and_resumes_without_reloading(suite_path, source,
                                                                          tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=2, checkpoint_every=2)
  config.data.tasks = ("topic", "lm")
  config.init_from = f"{source}:best"
  result = loop.train_and_evaluate(config, str(tmp_path), **QUIET)
  assert set(result["validation"]) == {"topic", "lm"}
  origin = json.load(open(tmp_path / "init_from.json"))
  assert origin["best"] and origin["fresh_heads"] == {"lm": "new task"}
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["loaded"] for r in records if r["split"] == "init_from"] == [
      ["encoder", "heads/topic"]]
  # A resumed run continues from its own checkpoint: no second init_from record.
  config.train.steps = 4
  loop.train_and_evaluate(config, str(tmp_path), **QUIET)
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert sum(r["split"] == "init_from" for r in records) == 1


def _files(root):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_encoder_of_another_shape_names_the_mismatched_parameters(suite_path, source, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir)
  config.model.width = 32
  config.init_from = source
  before = _files(source)
  with pytest.raises(CheckpointError) as error:
    loop.train_and_evaluate(config, str(tmp_path), **QUIET)
  message = str(error.value)
  assert "the encoder in" in message and "has another shape" in message
  assert re.search(r"encoder/token_embedding/embedding: checkpoint \((\d+), 16\), this model "
                   r"\(\1, 32\)", message)
  assert "encoder/block_0/mlp_in/kernel: checkpoint (16, 32), this model (32, 32)" in message
  assert _files(source) == before
  assert not [d for d in os.listdir(tmp_path / "checkpoints")]  # nothing was saved


def test_another_tokenizer_is_refused_by_its_fingerprint(suite_path, source, tmp_path):
  """Another tokenizer (here a cased one over the same suite) reads text into ids the source
  never learned: its tokenizer fingerprint differs, so one clear error."""
  path, data_dir = suite_path
  config = tiny_config(path, data_dir)
  config.data.lowercase = False
  config.init_from = source
  with pytest.raises(DataMismatchError, match=r"init_from .*: data differs .*the tokenizer "
                                              "changed"):
    loop.train_and_evaluate(config, str(tmp_path), **QUIET)
  assert not os.listdir(tmp_path / "checkpoints")


def test_cli_init_from_another_tokenizer_exits_2_and_same_tokenizer_with_new_task_runs(
    suite_path, source, tmp_path, capsys):
  from jmtl import cli
  from test_cli import TINY_OVERRIDES
  path, data_dir = suite_path
  config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "default.py")
  common = ["--config", config, f"--config.data.suite={path}",
            f"--config.data.data_dir={data_dir}", *TINY_OVERRIDES, f"--config.init_from={source}"]
  code = cli.main(["train", "--workdir", str(tmp_path / "other"), *common,
                   "--config.data.lowercase=False"])
  err = capsys.readouterr().err
  assert code == cli.EXIT_ERROR == 2 and err.count("jmtl: error:") == 1
  assert "the tokenizer changed" in err and "Traceback" not in err
  # The source's own tokenizer, with a task it never saw: allowed.
  code = cli.main(["train", "--workdir", str(tmp_path / "same"), *common,
                   "--config.data.tasks=('ner', 'topic', 'lm')", "--config.train.steps=3"])
  assert code == 0, capsys.readouterr().err
  origin = json.load(open(tmp_path / "same" / "init_from.json"))
  assert origin["fresh_heads"] == {"lm": "new task"}


def test_workdir_without_checkpoint_and_missing_step(suite_path, source, tmp_path):
  path, data_dir = suite_path
  config = tiny_config(path, data_dir)
  (tmp_path / "empty").mkdir()
  for value, message in ((str(tmp_path / "empty"), "no checkpoint in"),
                         (str(tmp_path / "absent"), "does not exist"),
                         (f"{source}:7", r"no checkpoint at step 7 .*available: \[2, 3\]")):
    config.init_from = value
    with pytest.raises(CheckpointError, match=message):
      loop.train_and_evaluate(config, str(tmp_path / "run"), **QUIET)
  config.init_from = f"{source}:last"
  with pytest.raises(ConfigError, match="'last' is not a step number"):
    loop.train_and_evaluate(config, str(tmp_path / "run"), **QUIET)


def test_fine_tune_with_frozen_embeddings_resumes_and_keeps_them(suite_path, source, tmp_path):
  # The MT-DNN recipe with a frozen embedding layer, through the real loop: the masked
  # optimizer state saves and restores, and the embeddings stay the source's, bit for bit.
  path, data_dir = suite_path
  config = tiny_config(path, data_dir, steps=2, checkpoint_every=2)
  config.data.tasks = ("topic",)
  config.init_from = source
  config.optimizer.freeze = ("embedding",)
  config.optimizer.layer_decay = 0.5
  loop.train_and_evaluate(config, str(tmp_path), **QUIET)
  config.train.steps = 4
  loop.train_and_evaluate(config, str(tmp_path), **QUIET)
  start = _flat(transfer.read_checkpoint(source).params)
  end = _flat(transfer.read_checkpoint(str(tmp_path), 4).params)
  for name, value in end.items():
    if "embedding" in name:
      np.testing.assert_array_equal(value, start[name], err_msg=name)
    elif name.endswith("kernel"):
      assert not np.array_equal(value, start.get(name)), name


def test_cli_init_from_a_missing_step_is_one_error(suite_path, source, tmp_path, capsys):
  from jmtl import cli
  from test_cli import TINY_OVERRIDES
  path, data_dir = suite_path
  config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "default.py")
  code = cli.main(["train", "--config", config, "--workdir", str(tmp_path / "run"),
                   f"--config.data.suite={path}", f"--config.data.data_dir={data_dir}",
                   *TINY_OVERRIDES, f"--config.init_from={source}:7"])
  err = capsys.readouterr().err
  assert code == cli.EXIT_ERROR and err.count("jmtl: error:") == 1
  assert "no checkpoint at step 7" in err and "Traceback" not in err
  assert not os.listdir(tmp_path / "run" / "checkpoints")


def _mmoe(config):
  config.model.update(dict(architecture="mmoe", expert_width=8, expert_depth=1, num_experts=2))
  return config


def test_an_expert_architecture_starts_from_a_run_of_the_same_architecture(suite_path, source,
                                                                           tmp_path):
  """MMoE from an MMoE run: ``params["shared"]`` (embedder, experts, gates' inputs) and the
  matching task towers are the source's, a new task's tower is fresh; from a hard-sharing
  run it is one error naming both architectures (their shared trees do not correspond)."""
  path, data_dir = suite_path
  mmoe_source = str(tmp_path / "mmoe")
  config = _mmoe(tiny_config(path, data_dir, steps=2, checkpoint_every=2))
  config.data.tasks = ("ner", "topic")
  loop.train_and_evaluate(config, mmoe_source, **QUIET)
  target = _mmoe(tiny_config(path, data_dir, steps=2))
  target.data.tasks = ("ner", "topic", "lm")
  target.init_from = mmoe_source
  saved = _flat(transfer.read_checkpoint(mmoe_source).params)
  fresh, state, report = _fresh_and_transferred(target)
  params = _flat(state.params)
  assert report["loaded"] == ["shared", "tasks/ner", "tasks/topic"]
  assert report["fresh_heads"] == {"lm": "new task"}
  for key, value in params.items():
    expected = saved[key] if not key.startswith("tasks/lm/") else fresh[key]
    np.testing.assert_array_equal(value, expected, err_msg=key)
  assert any(not np.array_equal(saved[k], fresh[k]) for k in saved)  # the load is visible

  target.init_from = source  # a hard-sharing run
  with pytest.raises(CheckpointError, match="model.architecture='hard', this run builds 'mmoe'"):
    _fresh_and_transferred(target)


def test_bert_with_another_architecture_is_one_config_error(suite_path):
  path, data_dir = suite_path
  config = _mmoe(tiny_config(path, data_dir))
  config.model.encoder = "bert"
  with pytest.raises(ConfigError, match="model.encoder='bert' works with "
                                        "model.architecture='hard' only.*'mmoe'"):
    loop.build_experiment(config)

"""A run's identity: the saved config, identity keys, suite files, validation before work,
logs on resume, and the loop/baselines modules without an import cycle."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jmtl.config import ConfigError, to_json
from jmtl.train import loop, runs
from jmtl.train.checkpoint import CheckpointError
from test_loop import tiny_config
from tiny_suite import write_tiny_suite

QUIET = open(os.devnull, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 4-step run on its own copy of the tiny suite."""
  root = tmp_path_factory.mktemp("runs")
  suite = write_tiny_suite(str(root / "suite"))
  config = tiny_config(suite, str(root / "data_dir"), steps=4, checkpoint_every=2)
  workdir = str(root / "run")
  result = loop.train_and_evaluate(config, workdir, out=QUIET)
  return config, workdir, result


def test_saved_config_is_the_runs_config_with_absolute_paths(trained, tmp_path, monkeypatch):
  config, workdir, result = trained
  saved = runs.load_run_config(workdir)
  assert json.loads(to_json(saved)) == json.loads(to_json(runs.resolve_paths(config)))
  assert os.path.isabs(saved.data.suite)
  record = runs.read_run(workdir)
  assert record["suite"]["tasks"] == ["ner", "topic", "lm"]
  assert len(record["suite"]["sha256"]) == 64
  # The saved config evaluates the run; the same suite named relatively is the same suite.
  monkeypatch.chdir(os.path.dirname(config.data.suite))
  relative = runs.load_run_config(workdir, ["data.suite=tiny_suite.json"])
  evaluated = loop.evaluate_checkpoint(relative, workdir, out=QUIET)
  assert evaluated["step"] == 4
  for task, metrics in result["validation"].items():
    assert evaluated["validation"][task] == pytest.approx(metrics, rel=1e-6), task


def test_identity_override_is_refused_before_any_build(trained, tmp_path):
  _, workdir, _ = trained
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  fresh_data = str(tmp_path / "never_built")
  for override, key in (("model.width=32", "model.width"), ("seed=3", "seed"),
                        ("data.vocab_size=300", "data.vocab_size"),
                        ("balancer.name=pcgrad", "balancer.name")):
    config = runs.load_run_config(workdir, [override, f"data.data_dir={fresh_data}"])
    with pytest.raises(CheckpointError, match=rf"identity keys differ:\n  {key}: the run has"):
      loop.train_and_evaluate(config, workdir, out=QUIET)
  assert not os.path.exists(fresh_data)  # refused before the data was built
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_mutable_keys_may_change(trained, tmp_path):
  config, workdir, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  longer = runs.load_run_config(copy, ["train.steps=6", "train.log_every=3",
                                       "data.eval_batch_size=4"])
  assert loop.train_and_evaluate(longer, copy, out=QUIET)["step"] == 6
  assert runs.load_run_config(copy).train.steps == 6  # the run record follows the run


def test_removing_a_task_from_the_suite_is_an_identity_error(tmp_path):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  config = tiny_config(suite, str(tmp_path / "data_dir"), steps=2, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, out=QUIET)
  spec = json.load(open(suite))
  spec["tasks"] = [t for t in spec["tasks"] if t["name"] != "lm"]
  json.dump(spec, open(suite, "w"))
  with pytest.raises(CheckpointError) as error:
    loop.train_and_evaluate(tiny_config(suite, str(tmp_path / "data_dir"), steps=4), workdir,
                            out=QUIET)
  message = str(error.value)
  assert "data.suite: the suite file" in message and "changed" in message
  assert "tasks ['ner', 'topic', 'lm'] -> ['ner', 'topic']" in message
  assert "unreadable" not in message


@pytest.mark.parametrize("name,hparams,error,message", [
    ("pcgrads", {}, KeyError, "unknown balancer 'pcgrads'"),
    ("gradnorm", {"alpah": 1.0}, TypeError, "does not take.*alpah"),
])
def test_bad_balancer_fails_before_data_or_workdir(tmp_path, name, hparams, error, message):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  config = tiny_config(suite, str(tmp_path / "data_dir"))
  config.balancer.name = name
  config.balancer.update(hparams)
  with pytest.raises(error, match=message):
    loop.train_and_evaluate(config, str(tmp_path / "run"), out=QUIET)
  assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "data_dir")


@pytest.mark.parametrize("section,key,value,message", [
    ("model", "num_heads", 3, "model.width 16 is not divisible by model.num_heads 3"),
    ("optimizer", "name", "adamx", "optimizer.name 'adamx': use adamw, adam or sgd"),
    ("data", "sampler", "unifrom", "data.sampler 'unifrom': use one of"),
    ("data", "task_lengths", "each", "data.task_lengths 'each': use one of shared, own"),
    ("train", "best_metric", "nope/accuracy", "train.best_metric 'nope/accuracy': no task"),
])
def test_bad_config_fails_before_data_or_workdir(tmp_path, section, key, value, message):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  config = tiny_config(suite, str(tmp_path / "data_dir"))
  config[section][key] = value
  with pytest.raises(ConfigError, match=message):
    loop.train_and_evaluate(config, str(tmp_path / "run"), out=QUIET)
  assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "data_dir")


def test_resumed_log_has_each_step_once(trained, tmp_path):
  config, workdir, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  # As if killed after logging step 4 but before checkpoint 4 was written, mid-line.
  shutil.rmtree(os.path.join(copy, "checkpoints", "4"))
  with open(os.path.join(copy, "metrics.jsonl"), "a") as f:
    f.write('{"step": 4, "split": "tra')
  loop.train_and_evaluate(runs.load_run_config(copy), copy, out=QUIET)
  records = [json.loads(line) for line in open(os.path.join(copy, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
  assert [r["step"] for r in records if r["split"] == "validation"] == [4]
  # Rerunning the finished run evaluates step 4 again: still logged once.
  loop.train_and_evaluate(runs.load_run_config(copy), copy, out=QUIET)
  records = [json.loads(line) for line in open(os.path.join(copy, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "validation"] == [4]
  events = [json.loads(line)["event"] for line in open(os.path.join(copy, "events.jsonl"))]
  assert events == ["start", "resume", "resume"]


def test_baselines_does_not_import_the_loop():
  code = ("import sys, jmtl.train.baselines; "
          "assert 'jmtl.train.loop' not in sys.modules, 'baselines imports loop'")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_other_data_is_refused_unless_allowed_and_recorded(tmp_path):
  from jmtl import data
  from jmtl.train.checkpoint import Checkpoints
  suite = write_tiny_suite(str(tmp_path / "suite"))
  data_dir = str(tmp_path / "data_dir")
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(suite, data_dir, steps=2, checkpoint_every=2), workdir,
                          out=QUIET)
  checkpoints = Checkpoints(workdir, async_save=False)
  saved = checkpoints.fingerprints(2)
  checkpoints.close()
  assert set(saved) == {"tokenizer", "ner", "topic", "lm"}
  assert runs.read_run(workdir)["fingerprints"] == saved
  with open(tmp_path / "suite" / "topic.train.csv", "a") as f:  # the data change; the suite
    f.write("red dog ran,animal\n")                              # file stays the same
  longer = tiny_config(suite, data_dir, steps=4, checkpoint_every=2)
  with pytest.raises(data.DataMismatchError, match=r"step 2 .*task\(s\) topic.*--allow-data-change"):
    loop.train_and_evaluate(longer, workdir, out=QUIET)
  with pytest.raises(data.DataMismatchError, match="topic"):
    loop.evaluate_checkpoint(longer, workdir, out=QUIET)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  result = loop.train_and_evaluate(longer, workdir, out=QUIET, allow_data_change=True)
  assert result["step"] == 4
  events = [json.loads(line) for line in open(os.path.join(workdir, "events.jsonl"))]
  allowed = [e for e in events if e["event"] == "data_change_allowed"]
  assert len(allowed) == 1 and "topic" in allowed[0]["change"]
  checkpoints = Checkpoints(workdir, async_save=False)
  assert checkpoints.fingerprints(4)["topic"] != saved["topic"]  # new checkpoints, new data
  checkpoints.close()

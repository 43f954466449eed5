"""Every task family end to end through ``jmtl train`` on generated data (tiny model)."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from generate import write_families  # noqa: E402
from test_cli import TINY_OVERRIDES  # noqa: E402

# test_cli's tiny model, a little wider and longer (later flags override earlier ones).
TINY = [*TINY_OVERRIDES, "--config.data.max_len=32", "--config.data.buckets=(32,)",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=16",
        "--config.model.width=32", "--config.model.pooled_width=32",
        "--config.model.mlp_width=64", "--config.model.head_hidden=16",
        "--config.train.log_every=10"]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
  root = tmp_path_factory.mktemp("families")
  return write_families(str(root)), str(root / "data_dir")


def train(families, family, tmp_path, steps=6, *extra):
  paths, data_dir = families
  out = subprocess.run(
      [sys.executable, "-m", "jmtl.cli", "train", "--config", "configs/default.py",
       "--workdir", str(tmp_path / family), f"--config.data.suite={paths[family]}",
       f"--config.data.data_dir={data_dir}", f"--config.train.steps={steps}", *TINY, *extra],
      capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def metric(stdout, task, name):
  """A task's value of metric ``name`` in the final validation table."""
  table = stdout[stdout.rindex("validation at step"):].splitlines()
  header = table[1].split()
  row = next(line.split() for line in table if line.split()[:1] == [task])
  return float(row[header.index(name)].rstrip("*"))


def test_extractive_qa_trains_and_scores_answer_text(families, tmp_path):
  stdout = train(families, "qa", tmp_path, 30, "--config.optimizer.learning_rate=3e-3")
  em, f1 = metric(stdout, "qa", "exact_match"), metric(stdout, "qa", "f1")
  assert 0.0 <= em <= f1 <= 1.0
  # The tuned no-answer margin does at least as well as the default one (0) it could pick.
  assert metric(stdout, "qa", "best_f1") >= f1 - 1e-4
  # Half the questions are unanswerable; predicting "" for all scores 0.5, so learning shows.
  print(stdout[stdout.rindex("validation at step"):])


def test_multi_label_csv_and_jsonl_train(families, tmp_path):
  stdout = train(families, "multi_label", tmp_path, 40, "--config.optimizer.learning_rate=3e-3")
  for task in ("animals_csv", "animals_jsonl"):
    assert 0.0 <= metric(stdout, task, "macro_f1") <= 1.0
  # The tuned threshold's micro F1 is at least that of 0.5 (a point of its grid).
  assert 0.05 <= metric(stdout, "animals_csv", "best_threshold") <= 0.95
  assert metric(stdout, "animals_csv", "tuned_micro_f1") >= metric(stdout, "animals_csv",
                                                                   "micro_f1")


def test_pair_classification_and_pair_regression_train(families, tmp_path):
  stdout = train(families, "pairs", tmp_path, 10)
  assert 0.0 <= metric(stdout, "nli", "accuracy") <= 1.0
  assert -1.0 <= metric(stdout, "sts", "spearman") <= 1.0


def test_same_input_class_intensity_and_topic_columns_train(families, tmp_path):
  stdout = train(families, "same_input", tmp_path, 10)
  assert 0.0 <= metric(stdout, "polarity", "accuracy") <= 1.0
  assert -1.0 <= metric(stdout, "intensity", "pearson") <= 1.0
  assert 0.0 <= metric(stdout, "topic", "accuracy") <= 1.0


def test_relation_classification_trains(families, tmp_path):
  stdout = train(families, "relations", tmp_path, 10)
  assert 0.0 <= metric(stdout, "relation", "accuracy") <= 1.0


def test_every_family_in_one_multi_task_suite(families, tmp_path):
  stdout = train(families, "all", tmp_path, 10)
  for task, name in (("qa", "f1"), ("animals_csv", "micro_f1"), ("nli", "accuracy"),
                     ("sts", "pearson"), ("relation", "accuracy")):
    value = metric(stdout, task, name)
    assert value == value, f"{task} {name} is NaN"  # every head was evaluated
  print(stdout[stdout.rindex("validation at step"):])

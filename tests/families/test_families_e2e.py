"""Every task family end to end through ``jmtl train`` and ``jmtl predict`` on generated data
(tiny model); predictions are checked against the run's own evaluation and decision rules."""

import json
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


def predict(tmp_path, family, records, *extra):
  """``jmtl predict`` on the trained ``family`` workdir over jsonl ``records``."""
  source, target = tmp_path / f"{family}.in.jsonl", tmp_path / f"{family}.out.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = subprocess.run(
      [sys.executable, "-m", "jmtl.cli", "predict", "--workdir", str(tmp_path / family),
       "--input", str(source), "--output", str(target), "--no_progress", *extra],
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  predictions = [json.loads(line) for line in target.read_text().splitlines()]
  assert [p["index"] for p in predictions] == list(range(len(records)))
  return predictions


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
  # `jmtl predict` on the validation questions scores what evaluation reported.
  from jmtl import squad
  paths, _ = families
  with open(os.path.join(os.path.dirname(paths["qa"]), "squad.validation.json")) as f:
    questions = [(qa, p["context"]) for a in json.load(f)["data"] for p in a["paragraphs"]
                 for qa in p["qas"]]
  answers = predict(tmp_path, "qa", [{"question": qa["question"], "context": context}
                                     for qa, context in questions])
  for answer, (_, context) in zip(answers, questions):
    out = answer["tasks"]["qa"]
    assert out["answer"] in context and out["no_answer"] == (out["answer"] == "")
  scores = squad.squad_scores(
      {qa["id"]: a["tasks"]["qa"]["answer"] for a, (qa, _) in zip(answers, questions)},
      {qa["id"]: [g["text"] for g in qa["answers"]] for qa, _ in questions})
  assert scores["exact_match"] == pytest.approx(em, abs=1e-3)
  assert scores["f1"] == pytest.approx(f1, abs=1e-3)


def test_multi_label_csv_and_jsonl_train(families, tmp_path):
  stdout = train(families, "multi_label", tmp_path, 40, "--config.optimizer.learning_rate=3e-3")
  for task in ("animals_csv", "animals_jsonl"):
    assert 0.0 <= metric(stdout, task, "macro_f1") <= 1.0
  # The tuned threshold's micro F1 is at least that of 0.5 (a point of its grid).
  assert 0.05 <= metric(stdout, "animals_csv", "best_threshold") <= 0.95
  assert metric(stdout, "animals_csv", "tuned_micro_f1") >= metric(stdout, "animals_csv",
                                                                   "micro_f1")
  texts = ["the cat and the dog", "a bird sat", "nothing here at all"]
  for record in predict(tmp_path, "multi_label", [{"text": t} for t in texts]):
    for task, threshold in (("animals_csv", 0.5), ("animals_jsonl", 0.4)):
      out = record["tasks"][task]
      assert out["labels"] == [n for n, p in out["probabilities"].items() if p > threshold]
      assert all(0.0 < p < 1.0 for p in out["probabilities"].values())


def test_pair_classification_and_pair_regression_train(families, tmp_path):
  stdout = train(families, "pairs", tmp_path, 10)
  assert 0.0 <= metric(stdout, "nli", "accuracy") <= 1.0
  assert -1.0 <= metric(stdout, "sts", "spearman") <= 1.0
  pairs = [{"text": "the cat sleeps", "text_pair": "a cat runs"},
           {"text": "the dog eats", "text_pair": "the bird sings"}]
  for record in predict(tmp_path, "pairs", pairs):
    nli, sts = record["tasks"]["nli"], record["tasks"]["sts"]
    probabilities = nli["probabilities"]
    assert nli["label"] == max(probabilities, key=probabilities.get)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert sts["value"] == sts["value"]  # a number, not NaN


def test_same_input_class_intensity_and_topic_columns_train(families, tmp_path):
  stdout = train(families, "same_input", tmp_path, 10)
  assert 0.0 <= metric(stdout, "polarity", "accuracy") <= 1.0
  assert -1.0 <= metric(stdout, "intensity", "pearson") <= 1.0
  assert 0.0 <= metric(stdout, "topic", "accuracy") <= 1.0
  # One text gets all three answers from one forward: two label names and one value.
  texts = ["a great film about the sea", "a dull book about war"]
  for record in predict(tmp_path, "same_input", [{"text": t} for t in texts]):
    tasks = record["tasks"]
    assert set(tasks) == {"polarity", "intensity", "topic"}
    for name in ("polarity", "topic"):
      probabilities = tasks[name]["probabilities"]
      assert tasks[name]["label"] == max(probabilities, key=probabilities.get)
      assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert tasks["intensity"]["value"] == tasks["intensity"]["value"]  # a number, not NaN


def test_relation_classification_trains(families, tmp_path):
  stdout = train(families, "relations", tmp_path, 10)
  assert 0.0 <= metric(stdout, "relation", "accuracy") <= 1.0
  # At prediction the user marks the entities in the text, as training's data builder did.
  texts = ["big old red the <e1>cat</e1> chases the <e2>dog</e2> now here",
           "the <e1>bird</e1> sees the <e2>fox</e2>"]
  for record in predict(tmp_path, "relations", [{"text": t} for t in texts]):
    out = record["tasks"]["relation"]
    assert set(out["probabilities"]) == {"chase", "see", "follow"}
    assert out["label"] == max(out["probabilities"], key=out["probabilities"].get)


def test_every_family_in_one_multi_task_suite(families, tmp_path):
  stdout = train(families, "all", tmp_path, 10)
  for task, name in (("qa", "f1"), ("animals_csv", "micro_f1"), ("nli", "accuracy"),
                     ("sts", "pearson"), ("relation", "accuracy")):
    value = metric(stdout, task, name)
    assert value == value, f"{task} {name} is NaN"  # every head was evaluated
  print(stdout[stdout.rindex("validation at step"):])

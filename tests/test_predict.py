"""``jmtl predict`` and ``jmtl.Predictor`` on a tiny trained run."""

import csv
import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
from test_loop import tiny_config  # noqa: E402
from tiny_suite import write_tiny_suite  # noqa: E402

import jmtl  # noqa: E402
from jmtl import cli  # noqa: E402
from jmtl.config import ConfigError  # noqa: E402
from jmtl.data import DataMismatchError  # noqa: E402
from jmtl.metrics import bio_entities  # noqa: E402
from jmtl.train import loop  # noqa: E402
from jmtl.train.checkpoint import CheckpointError  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  suite = write_tiny_suite(str(root))
  config = tiny_config(suite, str(root / "data_dir"), steps=40, checkpoint_every=20)
  config.optimizer.learning_rate = 1e-2
  workdir = str(root / "run")
  loop.train_and_evaluate(config, workdir, out=open(os.devnull, "w"))
  return str(root), workdir, config


@pytest.fixture(scope="module")
def predictor(run):
  return jmtl.Predictor.from_workdir(run[1])


def _conll(path):
  sentences, words, tags = [], [], []
  for line in open(path).read().splitlines() + [""]:
    if line.strip():
      word, tag = line.split("\t")
      words.append(word)
      tags.append(tag)
    elif words:
      sentences.append((words, tags))
      words, tags = [], []
  return sentences


def test_predictions_reproduce_the_runs_own_evaluation(run, predictor):
  """Per-word tags and class labels, mapped to names, score exactly what eval scored."""
  root, workdir, config = run
  evaluated = loop.evaluate_checkpoint(config, workdir, out=open(os.devnull, "w"))["validation"]
  sentences = _conll(os.path.join(root, "ner.validation.tsv"))
  predicted = predictor.predict([w for w, _ in sentences], tasks=["ner"])
  correct = total = 0
  for record, (words, gold) in zip(predicted, sentences):
    tags = record["tasks"]["ner"]["tags"]
    assert record["words"] == words and len(tags) == len(words)
    assert set(tags) <= {"O", "B-ANI", "B-COL"}
    correct += sum(t == g for t, g in zip(tags, gold))
    total += len(gold)
  assert correct / total == pytest.approx(evaluated["ner"]["accuracy"], abs=1e-9)
  rows = list(csv.DictReader(open(os.path.join(root, "topic.validation.csv"))))
  predicted = predictor.predict([r["text"] for r in rows], tasks=["topic"])
  hits = []
  for record, row in zip(predicted, rows):
    topic = record["tasks"]["topic"]
    assert set(topic["probabilities"]) == {"animal", "other"}
    assert sum(topic["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert topic["label"] == max(topic["probabilities"], key=topic["probabilities"].get)
    hits.append(topic["label"] == row["label"])
  assert np.mean(hits) == pytest.approx(evaluated["topic"]["accuracy"], abs=1e-9)


def test_tags_align_to_words_split_into_sub_words(predictor):
  # Unseen words split into several sub-words; each word still gets exactly one tag, the
  # one the model gives its first sub-word.
  words = ["cats", "sat", "dogmat", "on", "reds", "!"]
  record = predictor.predict([words], tasks=["ner"])[0]
  encoding = predictor.wordpiece.tokenizer.encode(words, is_pretokenized=True)
  assert len(encoding.ids) > len(words) + 2  # some words really were split
  batch = {"input_ids": np.array([encoding.ids], np.int32),
           "attention_mask": np.ones((1, len(encoding.ids)), np.int32)}
  logits = np.asarray(predictor.model.apply(predictor.params, batch)["ner"])[0]
  names = predictor.tasks["ner"].label_names
  first = {}
  for position, word in enumerate(encoding.word_ids):
    if word is not None:
      first.setdefault(word, position)
  expected = [names[int(np.argmax(logits[first[w]]))] for w in range(len(words))]
  assert record["tasks"]["ner"]["tags"] == expected
  spans = record["tasks"]["ner"]["spans"]
  assert [(s["type"], s["start"], s["end"] - 1) for s in spans] == bio_entities(expected)


def test_text_input_keeps_character_offsets_of_entities(predictor):
  text = "the  cat, the dog and a red mat"
  record = predictor.predict([text])[0]
  assert record["words"] == ["the", "cat", ",", "the", "dog", "and", "a", "red", "mat"]
  assert set(record["tasks"]) == {"ner", "topic"}  # the MLM task is not predicted
  for span in record["tasks"]["ner"]["spans"]:
    assert text[span["char_start"]:span["char_end"]] == span["text"]
  # Splitting into words first gives the ids training gave the whole text.
  texts = [text, "Red, BLUE; cats!", "dogmat  big\tsmall"]
  words = [[w for w, _ in predictor.pre_tokenizer.pre_tokenize_str(t)] for t in texts]
  for as_text, as_words in zip(predictor.wordpiece.encode_texts(texts),
                               predictor.wordpiece.encode_words(words)):
    np.testing.assert_array_equal(as_text.ids, as_words.ids)


def test_long_input_is_truncated_counted_and_reported(predictor):
  long = " ".join(["cat"] * 30)  # 30 words + [CLS] [SEP] > max_len 16
  with pytest.warns(UserWarning, match=r"1 were longer than the model's maximum of 16 tokens"):
    predictions = predictor.predict(["a dog", long])
  assert predictions.truncated == [1]
  record = predictions[1]
  assert record["truncated"] and not predictions[0]["truncated"]
  tags = record["tasks"]["ner"]["tags"]
  assert len(tags) == 30 and all(t is not None for t in tags[:14])
  assert all(t is None for t in tags[14:])
  assert "inputs 2" in predictions.summary()


def test_pairs_predict_sentence_tasks_only(predictor):
  records = predictor.predict([("the cat", "a dog")])
  assert set(records[0]["tasks"]) == {"topic"}
  with pytest.raises(ConfigError, match="tags words, but the input holds text pairs"):
    predictor.predict([("the cat", "a dog")], tasks=["ner"])
  with pytest.raises(ConfigError, match=r"tasks \['nope'\]: not tasks of this model"):
    predictor.predict(["the cat"], tasks=["nope"])


def test_cli_writes_json_lines_for_each_format(run, tmp_path, capsys):
  _, workdir, _ = run
  (tmp_path / "in.txt").write_text("the cat sat\n" + " ".join(["dog"] * 20) + "\n")
  (tmp_path / "in.jsonl").write_text(json.dumps({"text": "a red mat"}) + "\n"
                                     + json.dumps({"tokens": ["big", "dog"]}) + "\n")
  (tmp_path / "in.conll").write_text("the\tO\ncat\tB-ANI\n\nblue\nmat\n")
  expected_words = {"txt": [["the", "cat", "sat"], ["dog"] * 20],
                    "jsonl": [["a", "red", "mat"], ["big", "dog"]],
                    "conll": [["the", "cat"], ["blue", "mat"]]}
  for ext, words in expected_words.items():
    out = tmp_path / f"out-{ext}.jsonl"
    code = cli.main(["predict", "--workdir", workdir, "--best", "--input",
                     str(tmp_path / f"in.{ext}"), "--output", str(out), "--tasks", "ner",
                     "topic", "--no_progress"])
    assert code == 0
    records = [json.loads(line) for line in open(out)]
    assert [r["words"] for r in records] == words
    assert all(set(r["tasks"]) == {"ner", "topic"} for r in records)
  assert "1 were longer than the model's maximum of 16 tokens" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["unknown_format", "no_checkpoint", "bad_jsonl", "missing_step"])
def test_cli_bad_input_is_one_error_and_writes_nothing(run, tmp_path, capsys, case):
  _, workdir, _ = run
  (tmp_path / "in.txt").write_text("the cat\n")
  (tmp_path / "in.csv").write_text("text\nthe cat\n")
  (tmp_path / "in.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
  (tmp_path / "empty").mkdir()
  args = {"unknown_format": ["--workdir", workdir, "--input", str(tmp_path / "in.csv")],
          "no_checkpoint": ["--workdir", str(tmp_path / "empty"), "--input",
                            str(tmp_path / "in.txt")],
          "bad_jsonl": ["--workdir", workdir, "--input", str(tmp_path / "in.jsonl")],
          "missing_step": ["--workdir", workdir, "--checkpoint", "7", "--input",
                           str(tmp_path / "in.txt")]}[case]
  message = {"unknown_format": "unknown format '.csv'; use .txt",
             "no_checkpoint": "no checkpoint in",
             "bad_jsonl": "in.jsonl line 2: no string 'text' field",
             "missing_step": r"no checkpoint at step 7"}[case]
  out = tmp_path / "out.jsonl"
  assert cli.main(["predict", *args, "--output", str(out), "--no_progress"]) == cli.EXIT_ERROR
  err = capsys.readouterr().err
  assert err.count("jmtl: error:") == 1 and message in err
  assert not out.exists()


def test_predictor_on_a_workdir_without_checkpoint(tmp_path):
  with pytest.raises(CheckpointError, match="no checkpoint in"):
    jmtl.Predictor.from_workdir(str(tmp_path))


def test_predict_refuses_data_tokenized_otherwise_than_the_checkpoint(tmp_path, capsys):
  """The run's saved config (run.json) names the suite; when its data now gives another
  vocabulary (a train file gained new words), the tokenizer fingerprint the checkpoint
  recorded differs: one clear error, exit 2 through the CLI, nothing written."""
  suite = write_tiny_suite(str(tmp_path), seed=3)
  config = tiny_config(suite, str(tmp_path / "data_dir"), steps=3, checkpoint_every=3)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, out=open(os.devnull, "w"))
  (tmp_path / "in.txt").write_text("the cat\n")
  out = tmp_path / "out.jsonl"
  args = ["predict", "--workdir", workdir, "--input", str(tmp_path / "in.txt"), "--output",
          str(out), "--no_progress"]
  assert cli.main(args) == 0 and out.exists()  # the matching data: predicts
  out.unlink()
  with open(tmp_path / "lm.train.txt", "a") as f:
    f.write("zebra quokka wombat platypus\n" * 30)
  with pytest.raises(DataMismatchError, match="the tokenizer changed"):
    jmtl.Predictor.from_workdir(workdir)
  capsys.readouterr()
  assert cli.main(args) == cli.EXIT_ERROR == 2
  err = capsys.readouterr().err
  assert err.count("jmtl: error:") == 1 and "the tokenizer changed" in err
  assert "Traceback" not in err and not out.exists()


def test_multi_label_predicts_the_label_names_past_each_tasks_threshold(tmp_path):
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "families"))
  from generate import write_families
  suite = write_families(str(tmp_path))["multi_label"]
  config = tiny_config(suite, str(tmp_path / "data_dir"), steps=3, checkpoint_every=3)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, out=open(os.devnull, "w"))
  predictor = jmtl.Predictor.from_workdir(workdir)
  records = predictor.predict(["the cat and the dog", "a bird", "nothing here"])
  params = predictor.params
  for record in records:
    for name, threshold in (("animals_csv", 0.5), ("animals_jsonl", 0.4)):
      spec = predictor.tasks[name]
      assert spec.threshold == threshold
      out = record["tasks"][name]
      assert list(out["probabilities"]) == list(spec.label_names)
      assert out["labels"] == [n for n, p in out["probabilities"].items() if p > threshold]
      assert all(0.0 < p < 1.0 for p in out["probabilities"].values())
  # The probabilities are the sigmoids of the model's own logits (float64 NumPy reference).
  from jmtl.data import Row, collate
  encoded = predictor.wordpiece.encode_words([records[0]["words"]])
  batch = collate([Row(encoded[0].ids, encoded[0].type_ids, {})], batch_size=1,
                  length=16, tasks=(), pad_id=predictor.wordpiece.pad_id)
  logits = np.asarray(predictor._outputs(params, batch, ("animals_csv",))["animals_csv"][0],
                      np.float64)
  np.testing.assert_allclose(list(records[0]["tasks"]["animals_csv"]["probabilities"].values()),
                             1 / (1 + np.exp(-logits)), rtol=1e-6)


def _squad_questions(path):
  """(question, context) pairs and gold answer texts of a SQuAD file, in file order."""
  with open(path) as f:
    data = json.load(f)["data"]
  pairs, golds, ids = [], [], []
  for article in data:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        pairs.append((qa["question"], paragraph["context"]))
        golds.append([a["text"] for a in qa["answers"]])
        ids.append(qa["id"])
  return pairs, golds, ids


def test_span_qa_answers_score_as_the_runs_own_evaluation(tmp_path):
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "families"))
  from generate import write_families
  from jmtl import squad
  from jmtl.train import qa_eval
  root = str(tmp_path)
  suite = write_families(root)["qa"]
  config = tiny_config(suite, str(tmp_path / "data_dir"), steps=20, checkpoint_every=20)
  config.optimizer.learning_rate = 3e-3
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, out=open(os.devnull, "w"))
  predictor = jmtl.Predictor.from_workdir(workdir)
  assert predictor.qa_options["qa"]["doc_stride"] == 4
  assert predictor.qa_options["qa"]["null_threshold"] == 0.0  # v2.0 data, as evaluation uses
  pairs, golds, ids = _squad_questions(os.path.join(root, "squad.validation.json"))
  records = predictor.predict(pairs)
  answers = [r["tasks"]["qa"] for r in records]
  for answer, (_, context) in zip(answers, pairs):
    assert set(answer) == {"answer", "score", "no_answer"}
    assert answer["no_answer"] == (answer["answer"] == "")
    assert answer["answer"] in context
  # The same EM/F1 as evaluation's own decoding of the suite's encoded validation windows.
  scores = squad.squad_scores({i: a["answer"] for i, a in zip(ids, answers)},
                              dict(zip(ids, golds)))
  model_suite, tasks = loop.load_suite(config)
  model = loop.build_model(config, model_suite, tasks)
  reference = qa_eval.answer_scores(model, predictor.params, model_suite, "validation", 16)["qa"]
  assert scores["exact_match"] == pytest.approx(reference["exact_match"], abs=1e-9)
  assert scores["f1"] == pytest.approx(reference["f1"], abs=1e-9)
  # Only pairs reach a QA task.
  with pytest.raises(ConfigError, match="question"):
    predictor.predict(["what colour"], tasks=["qa"])

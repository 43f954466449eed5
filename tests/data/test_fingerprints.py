"""Fingerprints name the data a run saw: files, build settings, labels, tokenizer."""

import json
import shutil

import pytest

from data_helpers import CONLL_DEV, CONLL_TRAIN, vocab_file
from jmtl import data
from jmtl.data import store

WORDS = ["eu", "rejects", "german", "call", "peter", "black", "##burn", "brussels"]


def two_task_suite(folder, name="fp"):
  (folder / "ner").mkdir(parents=True, exist_ok=True)
  (folder / "ner" / "train.txt").write_text(CONLL_TRAIN, encoding="utf-8")
  (folder / "ner" / "dev.txt").write_text(CONLL_DEV, encoding="utf-8")
  (folder / "cls.jsonl").write_text("".join(
      json.dumps({"text": t, "label": l}) + "\n"
      for t, l in [("peter calls", "a"), ("eu rejects", "b"), ("german call", "a"),
                   ("black burn", "b")]), encoding="utf-8")
  return {"name": name, "root": str(folder), "tasks": [
      {"name": "ner", "kind": "tagging", "format": "conll", "separator": " ",
       "files": {"train": "ner/train.txt", "validation": "ner/dev.txt"},
       "columns": {"token": 0, "ner": 1}},
      {"name": "cls", "kind": "classification", "format": "jsonl", "files": "cls.jsonl",
       "split_ratio": {"train": 0.75, "validation": 0.25}}]}


def load(config, data_dir, log, **kwargs):
  kwargs.setdefault("vocab_size", 60)
  return data.load_suite(config, data_dir, log=log, **kwargs)


def test_fingerprints_are_hex_digests_per_task_and_tokenizer(tmp_path, data_dir, log):
  suite = load(two_task_suite(tmp_path / "a"), data_dir, log)
  assert set(suite.fingerprints) == {"tokenizer", "ner", "cls"}
  assert all(len(v) == 64 and int(v, 16) >= 0 for v in suite.fingerprints.values())
  assert len(set(suite.fingerprints.values())) == 3


def test_same_files_elsewhere_and_a_rebuild_give_the_same_fingerprints(tmp_path, log):
  first = load(two_task_suite(tmp_path / "a"), tmp_path / "d1", log).fingerprints
  # A copy of the files in another folder, built into another data_dir (a fresh
  # tokenizer training), is the same data.
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  config = two_task_suite(tmp_path / "b")
  assert load(config, tmp_path / "d2", log).fingerprints == first
  # Touching a file rebuilds the suite (mtime changed); the data did not change.
  path = tmp_path / "b" / "cls.jsonl"
  path.write_text(path.read_text())
  rebuilt = load(config, tmp_path / "d2", log)
  assert any("rebuilding" in line for line in log)
  assert rebuilt.fingerprints == first
  forced = data.prepare(config, tmp_path / "d2", force=True, log=log)
  assert forced and load(config, tmp_path / "d2", log).fingerprints == first


def test_a_changed_file_changes_its_task_and_the_trained_tokenizer(tmp_path, data_dir, log):
  config = two_task_suite(tmp_path / "a")
  before = load(config, data_dir, log).fingerprints
  with open(tmp_path / "a" / "cls.jsonl", "a", encoding="utf-8") as handle:
    handle.write(json.dumps({"text": "brussels", "label": "a"}) + "\n")
  after = load(config, data_dir, log).fingerprints
  assert after["ner"] == before["ner"]
  assert after["cls"] != before["cls"]
  assert after["tokenizer"] != before["tokenizer"]  # trained on the new text too
  with pytest.raises(data.DataMismatchError) as caught:
    data.compare_fingerprints(before, after)
  message = str(caught.value)
  assert "the tokenizer changed" in message and "task(s) cls changed" in message
  assert "ner" not in message.split("To proceed")[0]
  assert "another data_dir" in message


def test_build_settings_and_label_sets_are_part_of_a_task(tmp_path, data_dir, log):
  config = two_task_suite(tmp_path / "a")
  words = vocab_file(tmp_path, WORDS)
  before = load(config, data_dir, log, vocab_file=words).fingerprints
  config["tasks"][1]["labels"] = ["b", "a"]  # same data, class ids swapped
  swapped = load(config, data_dir, log, vocab_file=words).fingerprints
  assert swapped["cls"] != before["cls"]
  assert swapped["ner"] == before["ner"] and swapped["tokenizer"] == before["tokenizer"]
  config["tasks"][1]["split_seed"] = 1  # other examples in train
  assert load(config, data_dir, log, vocab_file=words).fingerprints["cls"] != swapped["cls"]


def test_tokenizer_fingerprint_covers_vocab_file_and_lowercase(tmp_path, data_dir, log):
  config = two_task_suite(tmp_path / "a")
  words = vocab_file(tmp_path, WORDS)
  base = load(config, data_dir, log, vocab_file=words).fingerprints
  assert load(config, data_dir, log, vocab_file=words, lowercase=False
              ).fingerprints["tokenizer"] != base["tokenizer"]
  other = tmp_path / "other"
  other.mkdir()
  changed = load(config, data_dir, log, vocab_file=vocab_file(other, WORDS[::-1])).fingerprints
  assert changed["tokenizer"] != base["tokenizer"]
  assert {k: v for k, v in changed.items() if k != "tokenizer"} == {
      k: v for k, v in base.items() if k != "tokenizer"}
  with pytest.raises(data.DataMismatchError, match=r"^data differs .*: the tokenizer changed"):
    data.compare_fingerprints(base, changed, accept_with="--config.X=True")


def test_data_prepared_with_one_vocabulary_is_never_read_with_another(tmp_path, data_dir, log):
  config = two_task_suite(tmp_path / "a")
  first_dir, second_dir = tmp_path / "v1", tmp_path / "v2"
  first_dir.mkdir()
  second_dir.mkdir()
  first = load(config, data_dir, log, vocab_file=vocab_file(first_dir, WORDS))
  second = load(config, data_dir, log, vocab_file=vocab_file(second_dir, WORDS[::-1]))
  for suite in (first, second):
    ((_, batch), *_) = suite.eval_batches("validation", 4)
    ids = batch["input_ids"][0][batch["attention_mask"][0] > 0]
    tokens = [suite.tokenizer.id_to_token(int(i)) for i in ids]
    assert tokens == ["[CLS]", "german", "##y", "call", "##s", "[SEP]"]
  assert (first.tokenizer.token_to_id("brussels") != second.tokenizer.token_to_id("brussels"))
  assert len(list((data_dir / "fp" / "encoded").iterdir())) == 2  # one cache per vocabulary


def test_compare_names_removed_and_added_tasks():
  saved = {"tokenizer": "1", "a": "2", "b": "3"}
  data.compare_fingerprints(saved, dict(saved))
  with pytest.raises(data.DataError, match=r"task\(s\) b of the saved run are not in this suite"):
    data.compare_fingerprints(saved, {"tokenizer": "1", "a": "2"})
  with pytest.raises(data.DataMismatchError, match=r"task\(s\) c are new"):
    data.compare_fingerprints(saved, dict(saved, c="4"))


def test_a_suite_built_without_fingerprints_asks_for_a_rebuild(tmp_path, data_dir, log):
  config = two_task_suite(tmp_path / "a")
  load(config, data_dir, log)
  manifest_path = data_dir / "fp" / store.MANIFEST
  manifest = json.loads(manifest_path.read_text())
  for entry in manifest["sources"]:
    del entry["files_sha256"]
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(data.DataMismatchError, match="without data fingerprints; rebuild it"):
    load("fp", data_dir, log)

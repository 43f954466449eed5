"""`jmtl data prepare SUITE.json` reports labels and warnings; `jmtl data inspect` aligns them."""

import json
import re

import pytest

from data_helpers import vocab_file
from jmtl import cli, data
from jmtl.data import report


@pytest.fixture
def suite_file(tmp_path, monkeypatch):
  monkeypatch.setenv("JMTL_DATA_DIR", str(tmp_path / "data_dir"))
  folder = tmp_path / "corpus"
  folder.mkdir()
  (folder / "pos.txt").write_text(
      "Peter NOUN\nBlackburn NOUN\nsat VERB\n\nthe DET\ncat NOUN\nran Verb\n\n"
      "a DET\ndog NOUN\nran VERB\n\ncats NOUN\nsat VERB\n")
  (folder / "dev.txt").write_text("the DET\ncat NOUN\nsat INTJ\n")
  (folder / "spam.jsonl").write_text("".join(
      json.dumps({"text": t, "label": l}) + "\n" for t, l in
      [("win money", "spam"), ("see you", "ham"), ("free prize", "spam"), ("call me", "Ham"),
       ("lunch at one", "ham"), ("cheap pills", "spam")]))
  spec = {"name": "demo", "tasks": [
      {"name": "pos", "kind": "tagging", "format": "conll", "columns": {"token": 0, "pos": 1},
       "files": {"train": "pos.txt", "validation": "dev.txt"}, "on_unseen_label": "unk"},
      {"name": "spam", "kind": "classification", "format": "jsonl", "files": "spam.jsonl",
       "split_ratio": {"train": 0.5, "test": 0.5}, "split_seed": 3}]}
  path = folder / "suite.json"
  path.write_text(json.dumps(spec))
  return path


def run(capsys, *argv):
  code = cli.main(list(argv))
  out = capsys.readouterr()
  return code, out.out.splitlines(), out.err


def test_prepare_a_suite_file_reports_counts_labels_and_warnings(suite_file, capsys, tmp_path):
  code, lines, err = run(capsys, "data", "prepare", str(suite_file), "--vocab_file",
                         str(vocab_file(tmp_path, ["peter", "black", "##burn", "sat", "the",
                                                   "cat", "ran", "dog", "cats"])),
                         "--max_len", "5", "--min_label_count", "2")
  assert code == 0, err
  assert "demo/pos (tagging): train 4, validation 1 examples; 5 labels" in lines
  assert "  train labels: NOUN 5, VERB 3, DET 2, Verb 1" in lines
  assert "  validation labels: DET 1, INTJ 1, NOUN 1" in lines
  assert "  truncated to max_len=5: train 1/4, validation 0/1" in lines
  assert "warning: pos: validation labels never seen in train: 'INTJ' (1x)" in lines
  assert ("warning: pos: labels 'VERB', 'Verb' differ only by case or whitespace: each is a "
          "class of its own") in lines
  assert "warning: pos: labels seen fewer than 2 times in train: 'Verb' (1x)" in lines
  spam = [line for line in lines if "spam" in line]
  assert spam[0] == "demo/spam (classification): train 3, test 3 examples; 3 labels"
  assert any(line.startswith("warning: spam: labels 'Ham', 'ham' differ only by case") for line in lines)


def test_prepare_by_name_after_the_file_and_an_unknown_name(suite_file, capsys, tmp_path):
  assert run(capsys, "data", "prepare", str(suite_file), "--vocab_size", "60")[0] == 0
  code, lines, _ = run(capsys, "data", "prepare", "demo", "--vocab_size", "60")
  assert code == 0 and "demo/spam (classification): train 3, test 3 examples; 3 labels" in lines
  code, _, err = run(capsys, "data", "prepare", "nope")
  assert code == cli.EXIT_ERROR and err.startswith("jmtl: error: suite 'nope': not a built-in")
  code, _, err = run(capsys, "data", "prepare", str(tmp_path / "missing.json"))
  assert code == cli.EXIT_ERROR
  assert err == f"jmtl: error: suite file {tmp_path / 'missing.json'}: does not exist\n"


def test_inspect_aligns_labels_to_sub_words(suite_file, capsys, tmp_path):
  words = str(vocab_file(tmp_path, ["peter", "black", "##burn", "sat", "cat", "the"]))
  code, lines, err = run(capsys, "data", "inspect", str(suite_file), "--vocab_file", words,
                         "--task", "pos", "--examples", "4")
  assert code == 0, err
  start = lines.index(next(l for l in lines if "peter" in l)) - 1
  assert lines[start].startswith("pos (tagging), train example ")
  assert lines[start + 1].split() == ["sub-word", "[CLS]", "peter", "black", "##burn", "sat",
                                      "[SEP]"]
  assert lines[start + 2].split() == ["pos", ".", "NOUN", "NOUN", ".", "VERB", "."]
  # Columns line up: each label starts where its sub-word starts.
  starts = lambda line: [m.start() for m in re.finditer(r"\S+", line)]
  assert starts(lines[start + 1]) == starts(lines[start + 2])
  assert not any(line.startswith("spam") for line in lines)


def test_inspect_shows_sentence_labels_and_mlm_targets(tmp_path, data_dir, log):
  (tmp_path / "lm.txt").write_text("the cat sat on the mat\n" * 3)
  config = {"name": "lm", "tasks": [{"name": "lm", "kind": "mlm", "format": "text",
                                     "files": {"train": str(tmp_path / "lm.txt")}}]}
  suite = data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path, ["cat", "the"]),
                          log=log)
  lines = report.inspect_lines(suite, "train", 3, seed=0)
  grids = [(lines[i + 1].split()[1:], lines[i + 2].split()[1:]) for i in range(0, 9, 3)]
  for tokens, targets in grids:
    assert len(tokens) == len(targets)
    masked = [i for i, t in enumerate(targets) if t != "."]
    original = ["[CLS]", "the", "cat", "s", "##a", "##t", "o", "##n", "the", "m", "##a", "##t",
                "[SEP]"]
    assert [targets[i] for i in masked] == [original[i] for i in masked]
  assert any(t != "." for _, targets in grids for t in targets)


def test_warnings_for_counts_unseen_case_and_rare_labels():
  counts = {"train": {"pos": 5, "Pos ": 1, "neg": 9}, "test": {"neutral": 2, "neg": 1}}
  found = report.warnings_for("t", counts, ["neg", "pos", "Pos ", "rare"], min_count=3)
  assert found == [
      "t: test labels never seen in train: 'neutral' (2x)",
      "t: labels 'Pos ', 'pos' differ only by case or whitespace: each is a class of its own",
      "t: labels seen fewer than 3 times in train: 'rare' (0x), 'Pos ' (1x)"]

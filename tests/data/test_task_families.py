"""The data side of extractive QA, multi-label and pair tasks: builders, and bad input."""

import json

import numpy as np
import pytest

from jmtl import data


def squad_json(qas, context="The Denver Broncos beat the Carolina Panthers.", version="v2.0"):
  return json.dumps({"version": version, "data": [{"title": "t", "paragraphs": [
      {"context": context, "qas": qas}]}]}, indent=1)


def qa_suite(train, **options):
  return {"name": "qa", "tasks": [{"name": "qa", "kind": "span_qa", "format": "squad",
                                   "files": {"train": str(train)}, **options}]}


def test_squad_answer_not_at_its_offset_names_file_question_and_line(write, data_dir, log):
  path = write("train.json", squad_json([
      {"id": "ok", "question": "who won", "answers": [{"text": "Denver Broncos",
                                                        "answer_start": 4}]},
      {"id": "shifted", "question": "who lost", "answers": [{"text": "Carolina",
                                                            "answer_start": 27}]}]))
  with pytest.raises(data.DataError) as caught:
    data.prepare(qa_suite(path), data_dir, log=log)
  message = str(caught.value)
  assert str(path) in message and "'shifted'" in message and "character 27" in message
  line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
              if '"shifted"' in text)
  assert f":{line}:" in message


def test_squad_v1_question_without_answer_is_an_error(write, data_dir, log):
  path = write("train.json", squad_json([{"id": "q", "question": "who", "answers": []}],
                                        version="1.1"))
  with pytest.raises(data.DataError, match="'q' has no answer.*v2.0"):
    data.prepare(qa_suite(path), data_dir, log=log)


def test_squad_v2_windows_labels_and_cut_off_report(write, data_dir, log):
  context = " ".join(["filler"] * 30) + " the Denver Broncos won the game " + " ".join(
      ["filler"] * 30)
  start = context.index("Denver Broncos")
  path = write("train.json", squad_json([
      {"id": "a", "question": "who won", "answers": [{"text": "Denver Broncos",
                                                       "answer_start": start}]},
      {"id": "u", "question": "who lost", "answers": [], "is_impossible": True}], context))
  suite = data.load_suite(qa_suite(path, doc_stride=8), data_dir, max_len=16, buckets=(16,),
                          vocab_size=60, log=log)
  split = suite.sources[0].splits["train"]
  questions = split.qa["question"]
  assert len(split) > 2 and set(questions) == {0, 1}
  spans = split.labels["qa"]
  assert (spans[questions == 1] == 0).all()  # unanswerable: every window says no-answer
  answered = [i for i in np.flatnonzero(questions == 0) if spans[i, 0] > 0]
  assert answered
  for i in answered:
    a, b = split.offsets[i], split.offsets[i + 1]
    s, e = spans[i]
    starts, ends = split.qa["char_starts"][a:b], split.qa["char_ends"][a:b]
    assert context[starts[s]:ends[e]] == "Denver Broncos"
  # "the Denver Broncos" spans several sub-words: with stride 8 some window cuts it in two.
  assert int(split.qa["cut_off"]) > 0
  assert any("answers cut in two by a window" in line for line in log)
  log.clear()
  data.prepare(qa_suite(path, doc_stride=8), data_dir, log=log, max_len=16, vocab_size=60)
  assert "  windows of train 2 questions" in log


def ml_suite(path, fmt="csv", **task):
  return {"name": "ml", "tasks": [{"name": "tags", "kind": "multi_label", "format": fmt,
                                   "label": "tags", "files": {"train": str(path)}, **task}]}


def test_multi_label_csv_multi_hot_and_empty_lists_are_counted(write, data_dir, log):
  path = write("train.csv", "text,tags\na cat,cat\na dog and a cat,cat|dog\nnothing,\n"
               "an owl,owl\n")
  data.prepare(ml_suite(path), data_dir, log=log)
  # Named by file and line: "nothing," is line 4 of the file (the header is line 1).
  assert any("empty label list" in line and f"train 1 (first at {path}:4)" in line
             for line in log), log
  suite = data.load_suite(ml_suite(path), data_dir, vocab_size=60, log=log)
  (spec,) = suite.tasks
  assert spec.label_names == ("cat", "dog", "owl")
  rows = suite.sources[0].splits["train"].labels["tags"]  # TFDS stores records reordered
  assert sorted(map(tuple, rows.tolist())) == sorted([(1, 0, 0), (1, 1, 0), (0, 0, 0), (0, 0, 1)])
  batch = next(suite.train_iterator(2))["tags"]
  assert batch["tags"].shape == (2, 3) and batch["tags_mask"].shape == (2,)


def test_multi_label_separator_that_never_appears_names_the_file(write, data_dir, log):
  path = write("train.csv", "text,tags\na cat,cat;dog\na dog,dog\n")
  with pytest.raises(data.DataError) as caught:
    data.prepare(ml_suite(path), data_dir, log=log)
  assert str(path) in str(caught.value) and "label_separator '|'" in str(caught.value)
  data.prepare(ml_suite(path, label_separator=";"), data_dir, log=log)  # the fix works


def test_multi_label_jsonl_needs_a_list(write, data_dir, log):
  path = write("train.jsonl", '{"text": "a cat", "tags": ["cat"]}\n'
               '{"text": "a dog", "tags": {"dog": 1}}\n')
  with pytest.raises(data.DataError, match=r"train.jsonl:2: .*expected a list of labels"):
    data.prepare(ml_suite(path, "jsonl"), data_dir, log=log)


@pytest.mark.parametrize("name, text, line", [
    ("pairs.jsonl", '{"a": "x y", "b": "y z", "label": "p"}\n{"a": "x", "b": null, "label": "q"}\n',
     2),
    ("pairs.jsonl", '{"a": "x y", "b": "  ", "label": "p"}\n', 1),
    ("pairs.csv", "a,b,label\nx y,y z,p\nx,,q\n", 3),
])
def test_pair_with_a_missing_second_text_names_file_and_line(write, data_dir, log, name, text,
                                                            line):
  path = write(name, text)
  suite = {"name": "p", "tasks": [{"name": "nli", "kind": "classification",
                                   "format": name.split(".")[1], "text": "a", "text_pair": "b",
                                   "files": {"train": str(path)}}]}
  with pytest.raises(data.DataError, match=rf"{name}:{line}: missing second text"):
    data.prepare(suite, data_dir, log=log)


def test_pairs_are_one_sequence_with_segment_ids(write, data_dir, log):
  path = write("pairs.jsonl", "".join(
      json.dumps({"a": f"the cat {i}", "b": "a dog", "label": "yes" if i % 2 else "no"}) + "\n"
      for i in range(6)))
  suite = data.load_suite({"name": "p", "tasks": [
      {"name": "nli", "kind": "classification", "format": "jsonl", "text": "a",
       "text_pair": "b", "files": {"train": str(path)}}]}, data_dir, vocab_size=60, log=log)
  batch = next(suite.train_iterator(2))["nli"]
  for row, types, mask in zip(batch["input_ids"], batch["token_type_ids"],
                              batch["attention_mask"]):
    tokens = [suite.tokenizer.id_to_token(int(i)) for i in row[mask > 0]]
    first_sep = tokens.index("[SEP]")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and first_sep < len(tokens) - 1
    assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:mask.sum()] == 1).all()
    assert tokens[first_sep + 1:-1] == ["a", "dog"]


def relation_suite(path, **options):
  return {"name": "rel", "tasks": [{"name": "rel", "kind": "classification", "format": "csv",
                                    "text": "s", "label": "r", "files": {"train": str(path)},
                                    **options}]}


def test_relation_markers_inserted_at_offsets_as_special_tokens(write, data_dir, log):
  path = write("rel.csv", "s,h0,h1,t0,t1,r\nParis is in France,0,5,12,18,in\n"
               "Rome is in Italy,0,4,11,16,in\nBerlin beats Paris,0,6,13,18,beats\n")
  suite = data.load_suite(relation_suite(path, entity_spans=["h0", "h1", "t0", "t1"]),
                          data_dir, vocab_size=60, log=log)
  texts = []
  for i in range(3):
    row = suite.row(0, "train", i)
    tokens = [suite.tokenizer.id_to_token(int(t)) for t in row.ids]
    texts.append(" ".join(tokens).replace(" ##", ""))  # sub-words joined into words
  # Each marker is one token (a special token), never split into "[", "e1", "]".
  assert "[CLS] [E1] paris [/E1] is in [E2] france [/E2] [SEP]" in texts
  assert "[CLS] [E1] berlin [/E1] beats [E2] paris [/E2] [SEP]" in texts
  for marker in ("[E1]", "[/E1]", "[E2]", "[/E2]"):
    assert suite.tokenizer.token_to_id(marker) is not None


@pytest.mark.parametrize("text, options, problem", [
    ("s,h0,h1,t0,t1,r\nParis is in France,0,5,12,40,in\n",
     {"entity_spans": ["h0", "h1", "t0", "t1"]}, "rel.csv:2: entity e2 span"),
    ("s,h0,h1,t0,t1,r\nParis is in France,0,5,3,9,in\n",
     {"entity_spans": ["h0", "h1", "t0", "t1"]}, "rel.csv:2: entities e1.*overlap"),
    ("s,r\n[E1] Paris [/E1] is in France,in\n", {"entity_markers": ["[E1]", "[/E1]", "[E2]",
                                                                    "[/E2]"]},
     "rel.csv:2: entity marker '\\[E2\\]' appears 0 times"),
])
def test_relation_bad_spans_and_markers(write, data_dir, log, text, options, problem):
  path = write("rel.csv", text)
  with pytest.raises(data.DataError, match=problem):
    data.prepare(relation_suite(path, **options), data_dir, log=log)


@pytest.mark.parametrize("suite, problem", [
    ({"name": "s", "layout": "same_input", "source": {"format": "squad", "files": {"train": "x"}},
      "tasks": [{"name": "a", "kind": "span_qa"}, {"name": "b", "kind": "span_qa"}]},
     "source: a squad source holds one span_qa task, got 2"),
    ({"name": "s", "tasks": [{"name": "a", "kind": "span_qa", "format": "csv",
                              "files": {"train": "x"}}]}, r"tasks\[0\].kind: span_qa tasks read"),
    ({"name": "s", "tasks": [{"name": "a", "kind": "multi_label", "format": "conll",
                              "columns": {"token": 0, "a": 1}, "files": {"train": "x"}}]},
     r"tasks\[0\].kind: multi_label reads csv/tsv"),
    ({"name": "s", "tasks": [{"name": "a", "kind": "classification", "format": "csv",
                              "threshold": 0.3, "files": {"train": "x"}}]},
     r"tasks\[0\].threshold: only a multi_label task"),
    ({"name": "s", "tasks": [{"name": "a", "kind": "classification", "format": "csv",
                              "entity_spans": ["a", "b", "c"], "files": {"train": "x"}}]},
     r"tasks\[0\].entity_spans: expected four distinct names"),
])
def test_family_config_errors_name_the_key(suite, problem):
  from jmtl.data.config import parse_suite
  with pytest.raises(data.DataError, match=problem):
    parse_suite(suite)


def test_squad_doc_stride_wider_than_a_window_names_the_key(write, data_dir, log):
  path = write("train.json", squad_json([{"id": "a", "question": "who won", "answers": [
      {"text": "Denver Broncos", "answer_start": 4}]}]))
  with pytest.raises(data.DataError, match=r"tasks\[0\]\.doc_stride: 50 must be in \[1, "):
    data.load_suite(qa_suite(path, doc_stride=50), data_dir, max_len=16, buckets=(16,),
                    vocab_size=60, log=log)

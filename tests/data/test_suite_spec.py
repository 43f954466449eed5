"""Suite files and specs: errors that name the exact key path, file and line, before any work."""

import json

import pytest

from data_helpers import CONLL_TRAIN, vocab_file
from jmtl import data


def two_tasks():
  return {"name": "mine", "tasks": [
      {"name": "pos", "kind": "tagging", "format": "conll", "files": {"train": "pos.txt"},
       "columns": {"token": 0, "pos": 1}},
      {"name": "spam", "kind": "classification", "format": "jsonl",
       "files": {"train": "spam.jsonl"}}]}


def error(spec) -> str:
  with pytest.raises(data.DataError) as caught:
    data.validate_suite_spec(spec)
  return str(caught.value)


def test_a_typo_names_its_key_path_and_the_nearest_key():
  spec = two_tasks()
  spec["tasks"][1]["fromat"] = spec["tasks"][1].pop("format")
  assert error(spec) == "tasks[1].fromat: unknown key; did you mean 'format'?"
  spec = two_tasks()
  spec["tasks"][0]["fromat"] = spec["tasks"][0].pop("format")  # not reported as 'columns'
  assert error(spec) == "tasks[0].fromat: unknown key; did you mean 'format'?"
  spec = two_tasks()
  spec["tasks"][0]["colums"] = spec["tasks"][0].pop("columns")
  assert error(spec) == "tasks[0].colums: unknown key; did you mean 'columns'?"
  spec = two_tasks()
  spec["taks"] = spec.pop("tasks")
  assert error(spec) == "suite.taks: unknown key; did you mean 'tasks'?"
  spec = two_tasks()
  spec["tasks"][1]["zzz"] = 1
  assert error(spec).startswith("tasks[1].zzz: unknown key; allowed: ")


def test_keys_in_the_wrong_place_say_where_they_belong():
  spec = two_tasks()
  spec["tasks"][1]["columns"] = {"token": 0}
  assert error(spec) == ("tasks[1].columns: not an option of format 'jsonl' (it reads "
                         "entity_markers, entity_spans, text, text_pair, tokens)")
  spec = two_tasks()
  spec["format"] = "conll"
  assert error(spec) == "suite.format: belongs to a task (or to 'source')"
  same = {"name": "s", "layout": "same_input",
          "source": {"format": "conllu", "files": {"train": "a.conllu"}},
          "tasks": [{"name": "upos", "kind": "tagging", "label": "upos", "files": "x"}]}
  assert error(same) == ("tasks[0].files: a same_input suite reads its input from 'source'; "
                         "move the key there")
  same["tasks"][0].pop("files")
  same["source"]["encodng"] = "latin-1"
  assert error(same) == "source.encodng: unknown key; did you mean 'encoding'?"
  same["source"]["encoding"] = same["source"].pop("encodng") + "-x"
  assert error(same).startswith("source.encoding: unknown encoding 'latin-1-x'")


def test_validation_reads_no_data_and_returns_the_task_names(tmp_path):
  # The files do not exist: a schema check must not look for them.
  assert data.validate_suite_spec(two_tasks()) == ("pos", "spam")
  assert data.validate_suite_spec("en_mix") == ("wnut16_ner", "bbc_topic", "ptb_mlm")
  assert data.validate_suite_spec("ud_tr") == ("upos", "deprel", "head_distance", "source")
  assert data.validate_suite_spec("built_elsewhere") is None
  path = tmp_path / "suite.json"
  path.write_text(json.dumps(two_tasks()))
  assert data.validate_suite_spec(str(path)) == ("pos", "spam")
  assert not (tmp_path / "data_dir").exists()


def test_suite_file_errors_name_the_file_and_line(tmp_path):
  path = tmp_path / "suite.json"
  text = json.dumps(two_tasks(), indent=1).replace('"format": "jsonl"', '"fromat": "jsonl"')
  path.write_text(text)
  assert error(str(path)) == f"{path}: tasks[1].fromat: unknown key; did you mean 'format'?"
  path.write_text('{"name": "x",\n "tasks": [\n}\n')
  assert error(str(path)).startswith(f"{path}:3: invalid JSON")
  assert error(str(tmp_path / "missing.json")) == (
      f"suite file {tmp_path / 'missing.json'}: does not exist")
  path.write_text("[1, 2]")
  assert error(str(path)) == f"{path}: expected a JSON object describing a suite, got list"


def test_a_suite_file_is_read_relative_to_itself(tmp_path, data_dir, log, monkeypatch):
  folder = tmp_path / "corpus"
  folder.mkdir()
  (folder / "pos.txt").write_text(CONLL_TRAIN)
  (folder / "spam.jsonl").write_text('{"text": "win money", "label": "spam"}\n'
                                     '{"text": "see you", "label": "ham"}\n')
  spec = two_tasks()
  spec["tasks"][0]["separator"] = " "
  spec["tasks"][0]["columns"] = {"token": 0, "pos": 1}
  (folder / "suite.json").write_text(json.dumps(spec))
  monkeypatch.chdir(tmp_path)
  words = vocab_file(tmp_path)
  by_relative = data.load_suite("corpus/suite.json", data_dir, vocab_file=words, log=log)
  monkeypatch.chdir(folder)
  by_absolute = data.load_suite(str(folder / "suite.json"), data_dir, vocab_file=words, log=log)
  assert by_relative.sizes == by_absolute.sizes == {"pos": {"train": 3}, "spam": {"train": 2}}
  assert by_relative.fingerprints == by_absolute.fingerprints


@pytest.mark.parametrize("fmt, name, content, task", [
    ("conll", "pos.txt", "EU B-ORG\n\ncaf\xe9 O\n", {"columns": {"token": 0, "pos": 1},
                                                     "separator": " "}),
    ("csv", "s.csv", "text,label\nok,a\ncaf\xe9,b\n", {}),
    ("jsonl", "s.jsonl", '{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n',
     {}),
    ("text", "lm.txt", "ok\ncaf\xe9\n", {}),
])
def test_a_latin1_file_read_as_utf8_names_file_line_and_the_encoding_key(
    tmp_path, data_dir, log, fmt, name, content, task):
  path = tmp_path / name
  path.write_bytes(content.encode("latin-1"))
  kind = {"conll": "tagging", "text": "mlm"}.get(fmt, "classification")
  config = {"name": "enc", "tasks": [
      {"name": "pos", "kind": kind, "format": fmt, "files": {"train": str(path)}, **task}]}
  with pytest.raises(data.DataError) as caught:
    data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), log=log)
  line = 3 if fmt in ("conll", "csv") else 2
  assert str(caught.value) == (
      f"{path}:{line}: byte 0xe9 cannot be decoded as utf-8 (invalid continuation byte); set "
      'tasks[0].encoding to the file\'s encoding (e.g. "latin-1" or "cp1252")')
  config["tasks"][0]["encoding"] = "latin-1"
  suite = data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), log=log)
  assert suite.sizes["pos"]["train"] == 2


def test_a_latin1_file_in_a_folders_source(tmp_path, data_dir, log):
  (tmp_path / "news" / "sport").mkdir(parents=True)
  (tmp_path / "news" / "tech").mkdir()
  (tmp_path / "news" / "sport" / "1.txt").write_bytes("first\nsecond \xa3 pound\n".encode("latin-1"))
  (tmp_path / "news" / "tech" / "1.txt").write_text("chips\n")
  config = {"name": "f", "tasks": [{"name": "topic", "kind": "classification",
                                    "format": "folders", "files": {"train": "news"}}],
            "root": str(tmp_path)}
  with pytest.raises(data.DataError, match=r"sport/1.txt:2: byte 0xa3 cannot be decoded as "
                     r"utf-8 .*set tasks\[0\].encoding"):
    data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), log=log)


def test_task_kind_and_metrics_checked_against_task_kind_table():
  from jmtl.data.config import parse_suite
  from jmtl.data.errors import DataError
  from jmtl.tasks import TaskKind
  base = {"name": "s", "tasks": [{"name": "a", "kind": "classification", "format": "csv",
                                  "files": {"train": "x.csv"}}]}
  assert parse_suite(base).tasks[0].kind is TaskKind.CLASSIFICATION
  bad = {**base, "tasks": [{**base["tasks"][0], "kind": "clasification"}]}
  with pytest.raises(DataError, match=r"tasks\[0\]\.kind.*span_qa"):
    parse_suite(bad)
  bad = {**base, "tasks": [{**base["tasks"][0], "metrics": ["accuracy", "pearson"]}]}
  with pytest.raises(DataError, match=r"tasks\[0\]\.metrics.*'pearson'.*macro_f1"):
    parse_suite(bad)

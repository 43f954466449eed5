"""data.batch_size: an int or a {task: int} mapping, from config files, overrides and the CLI."""

import pytest

from data_helpers import vocab_file
from jmtl import cli, data
from jmtl.config import ConfigError, batch_size_of, load_config

TASKS = ("wnut16_ner", "bbc_topic", "ptb_mlm")


def test_an_override_may_give_a_mapping_or_an_int():
  config = load_config("configs/default.py",
                       ["data.batch_size={'wnut16_ner': 8, 'bbc_topic': 16, 'ptb_mlm': 4}"])
  assert config.data.batch_size == {"wnut16_ner": 8, "bbc_topic": 16, "ptb_mlm": 4}
  assert batch_size_of(config, TASKS) == {"wnut16_ner": 8, "bbc_topic": 16, "ptb_mlm": 4}
  assert batch_size_of(load_config("configs/default.py", ["data.batch_size=8"]), TASKS) == 8


def test_a_config_file_may_set_a_mapping(tmp_path):
  path = tmp_path / "per_task.py"
  path.write_text("from jmtl.config import base_config\n"
                  "def get_config():\n"
                  "  c = base_config()\n"
                  "  c.data.batch_size = {'bbc_topic': 4}\n"
                  "  return c\n")
  assert batch_size_of(load_config(str(path)), TASKS) == {"bbc_topic": 4}


@pytest.mark.parametrize("value, message", [
    ("0", "expects a positive int or a {task: int} mapping, got 0"),
    ("[8]", "expects a positive int or a {task: int} mapping, got [8]"),
    ("{'ner': 0}", "expected task name -> positive int, got {'ner': 0}"),
    ("{'ner': True}", "expected task name -> positive int, got {'ner': True}"),
])
def test_bad_values_are_config_errors(value, message):
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
    load_config("configs/default.py", [f"data.batch_size={value}"])


def test_unknown_task_names_are_named_before_any_build():
  config = load_config("configs/default.py", ["data.batch_size={'ner': 8, 'bbc_topic': 16}"])
  with pytest.raises(ConfigError) as caught:
    batch_size_of(config, data.validate_suite_spec(config.data.suite))
  assert str(caught.value) == ("config key 'data.batch_size' names ['ner'], not tasks of the "
                               "suite (wnut16_ner, bbc_topic, ptb_mlm)")
  config = load_config("configs/default.py", ["data.batch_size={'bbc_topic': 16}",
                                              "data.sampler=temperature"])
  with pytest.raises(ConfigError, match="a per-task mapping needs data.sampler='all'"):
    batch_size_of(config, TASKS)


def test_the_cli_reports_a_bad_batch_size_as_one_line(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/default.py", "--workdir", str(tmp_path / "w"),
                   "--config.data.batch_size={'ner': -1}"])
  assert code == cli.EXIT_ERROR
  err = capsys.readouterr().err
  assert err.strip().splitlines() == [
      "jmtl: error: config key 'data.batch_size': expected task name -> positive int, got "
      "{'ner': -1}"]


@pytest.fixture
def three(write, data_dir, tmp_path, log):
  files = {}
  for name in ("a", "b", "c"):
    files[name] = write(f"{name}.jsonl", "".join(
        f'{{"text": "t{i}", "label": "{i % 2}"}}\n' for i in range(6)))
  config = {"name": "three", "tasks": [
      {"name": n, "kind": "classification", "format": "jsonl", "files": {"train": str(p)}}
      for n, p in files.items()]}
  return data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), log=log)


def test_per_task_sizes_and_a_subset_of_tasks_in_the_iterator(three):
  batch = next(three.train_iterator({"a": 2, "b": 3, "c": 4}))
  assert {k: v["input_ids"].shape[0] for k, v in batch.items()} == {"a": 2, "b": 3, "c": 4}
  subset = three.train_iterator({"a": 2, "c": 5}, tasks=("a", "c"))
  batch = next(subset)
  assert {k: v["input_ids"].shape[0] for k, v in batch.items()} == {"a": 2, "c": 5}
  assert subset.get_state()["positions"] == {"a": 2, "b": 0, "c": 5}
  with pytest.raises(data.DataError, match=r"batch_size: \['x'\] are not tasks drawn here"):
    three.train_iterator({"a": 2, "b": 3, "c": 4, "x": 1})
  with pytest.raises(data.DataError, match=r"no batch size for task\(s\) \['c'\]"):
    three.train_iterator({"a": 2, "b": 3})
  with pytest.raises(data.DataError, match=r"tasks: \['z'\] are not tasks of suite 'three'"):
    three.train_iterator(2, tasks=("z",))

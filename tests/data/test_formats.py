"""Every local format builds a TFDS dataset that reads back into the right batches."""

import json

import numpy as np
import pytest

from jmtl import data
from data_helpers import CONLL_DEV, CONLL_TRAIN, CONLLU, all_eval, sentence_labels, vocab_file, words_and_tags

WORDS = ["eu", "rejects", "german", "call", "calls", "peter", "black", "##burn", "brussels",
         "germany", "good", "bad", "film", "fine", "very", "a", "b"]


def load(config, data_dir, tmp_path, log, **kwargs):
  return data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path, WORDS),
                         buckets=(8, 16), max_len=32, log=log, **kwargs)


def test_conll_columns_labels_and_subword_alignment(write, data_dir, tmp_path, log):
  train = write("ner/train.txt", CONLL_TRAIN)
  dev = write("ner/dev.txt", CONLL_DEV)
  config = {"name": "conll_suite", "tasks": [
      {"name": "ner", "kind": "tagging", "format": "conll", "separator": " ",
       "files": {"train": str(train), "validation": str(dev)},
       "columns": {"token": 0, "ner": 1}}]}
  suite = load(config, data_dir, tmp_path, log)
  (spec,) = suite.tasks
  assert spec.label_names == ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O")
  assert suite.sizes == {"ner": {"train": 3, "validation": 2}}
  batches = all_eval(suite, "train")
  assert [name for name, _ in batches] == ["ner"]
  rows = sorted(words_and_tags(suite, batches[0][1], "ner"))
  # "Blackburn" is two sub-words: only "black" carries I-PER; "##burn" is masked.
  assert rows == sorted([(["eu", "rejects", "german", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                         (["peter", "black"], ["B-PER", "I-PER"]),
                         (["brussels", "peter"], ["B-LOC", "B-PER"])])
  batch = batches[0][1]
  assert batch["input_ids"].shape == (4, 8)
  assert batch["attention_mask"][3].sum() == 0 and batch["ner_mask"][3].sum() == 0
  assert (data_dir / "conll_suite" / "ner" / "1.0.0").is_dir()
  assert list((data_dir / "conll_suite" / "ner" / "1.0.0").glob("*.array_record*"))


def test_conll_any_whitespace_and_extra_columns(write, data_dir, tmp_path, log):
  train = write("t.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
  config = {"name": "c4", "tasks": [
      {"name": "chunk", "kind": "tagging", "format": "conll", "files": {"train": str(train)},
       "columns": {"token": 0, "pos": 1, "chunk": 2}}]}
  suite = load(config, data_dir, tmp_path, log)
  assert suite.tasks[0].label_names == ("B-NP", "B-VP")


def test_conllu_fields_head_distance_and_comment_label(write, data_dir, tmp_path, log):
  path = write("tr.conllu", CONLLU)
  config = {"name": "tr", "layout": "same_input",
            "source": {"format": "conllu", "files": {"train": str(path)}},
            "tasks": [{"name": "upos", "kind": "tagging"},
                      {"name": "xpos", "kind": "tagging"},
                      {"name": "deprel", "kind": "tagging"},
                      {"name": "head", "kind": "tagging", "label": "head_distance",
                       "max_head_distance": 1},
                      {"name": "feats", "kind": "tagging"},
                      {"name": "source", "kind": "classification", "label": "comment:source"}]}
  suite = load(config, data_dir, tmp_path, log)
  assert suite.layout == "same_input"
  specs = {t.name: t for t in suite.tasks}
  assert specs["upos"].label_names == ("ADJ", "NOUN", "PRON", "PRT", "PUNCT", "VERB")
  assert specs["source"].label_names == ("web", "wiki")
  ((name, batch),) = all_eval(suite, "train")
  assert name is None
  rows = {tuple(t): tags for t, tags in words_and_tags(suite, batch, "head")}
  # heads: Burda->3 (+2 clipped to +1), öyle root, mi->2 (-1), ?->2 (-2 clipped to -1);
  # the multi-word line 2-3 is skipped.
  # (a BERT vocab file with lowercasing strips accents, as BERT does: ö -> o)
  assert rows[("b", "o", "m", "?")] == ["+1", "root", "-1", "-1"]
  assert rows[("a", "b")] == ["+1", "root"]
  assert {tuple(t): g for t, g in words_and_tags(suite, batch, "feats")}[("a", "b")] == ["_", "_"]
  assert sorted(sentence_labels(suite, [(None, batch)], "source")) == [0, 1]


def test_csv_pair_classification_and_tsv_regression(write, data_dir, tmp_path, log):
  csv_train = write("pair/train.csv", 'premise,hypothesis,label\n"good, fine",film,yes\n'
                    "bad,film,no\nvery good,a,yes\n")
  tsv_train = write("sts/train.tsv", "s\tscore\ngood film\t4.5\nbad film\t1.0\n")
  tsv_test = write("sts/test.tsv", 's\tscore\n"very" bad\t0.25\n')
  config = {"name": "tab", "tasks": [
      {"name": "nli", "kind": "classification", "format": "csv", "files": str(csv_train),
       "split_ratio": {"train": 0.5, "validation": 0.5}, "text": "premise",
       "text_pair": "hypothesis", "labels": ["no", "yes"]},
      {"name": "sts", "kind": "regression", "format": "tsv", "text": "s", "label": "score",
       "files": {"train": str(tsv_train), "test": str(tsv_test)}}]}
  suite = load(config, data_dir, tmp_path, log)
  assert suite.sizes["nli"] == {"train": 2, "validation": 1}
  assert {t.name: t for t in suite.tasks}["nli"].label_names == ("no", "yes")
  _, batch = next(iter(suite.eval_batches("validation", 2)))
  row = batch["token_type_ids"][0][batch["attention_mask"][0] > 0]
  assert row[0] == 0 and row[-1] == 1 and set(row.tolist()) == {0, 1}
  test = [b for name, b in suite.eval_batches("test", 2) if name == "sts"]
  assert test[0]["sts"].dtype == np.float32
  np.testing.assert_allclose(test[0]["sts"][test[0]["sts_mask"] > 0], [0.25])
  # TSV keeps quotes as text (no CSV quoting): '"very" bad' -> ", very, ", bad
  tokens = [suite.tokenizer.id_to_token(int(i)) for i in test[0]["input_ids"][0] if i > 0]
  assert tokens == ["[CLS]", "[UNK]", "very", "[UNK]", "bad", "[SEP]"]


def test_jsonl_text_and_tokens(write, data_dir, tmp_path, log):
  text = write("cls.jsonl", "\n".join(json.dumps(r) for r in [
      {"text": "good film", "label": 1}, {"text": "bad film", "label": 0},
      {"text": "fine", "label": 1}]) + "\n")
  tagged = write("tag.jsonl", "\n".join(json.dumps(r) for r in [
      {"words": ["good", "film"], "pos": ["ADJ", "NOUN"]},
      {"words": ["bad"], "pos": ["ADJ"]}]) + "\n")
  config = {"name": "js", "tasks": [
      {"name": "sent", "kind": "classification", "format": "jsonl", "files": {"train": str(text)}},
      {"name": "pos", "kind": "tagging", "format": "jsonl", "tokens": "words", "label": "pos",
       "files": {"train": str(tagged)}}]}
  suite = load(config, data_dir, tmp_path, log)
  specs = {t.name: t for t in suite.tasks}
  assert specs["sent"].label_names == ("0", "1")
  batches = all_eval(suite, "train")
  pos = [b for n, b in batches if n == "pos"][0]
  assert sorted(words_and_tags(suite, pos, "pos")) == [(["bad"], ["ADJ"]),
                                                      (["good", "film"], ["ADJ", "NOUN"])]
  sent = [b for n, b in batches if n == "sent"]
  assert sorted(sentence_labels(suite, [(None, b) for b in sent], "sent")) == [0, 1, 1]


def test_folders_and_text_mlm(write, data_dir, tmp_path, log):
  for i, (label, text) in enumerate([("pos", "good film"), ("pos", "fine film"),
                                     ("neg", "bad film"), ("neg", "very bad")]):
    write(f"reviews/{label}/{i:03d}.txt", text + "\n")
  write("reviews/neg/notes.md", "ignored: not *.txt")
  lm = write("lm.txt", "good film\n\nvery bad film\nfine\n")
  config = {"name": "fo", "tasks": [
      {"name": "review", "kind": "classification", "format": "folders",
       "files": {"train": str(tmp_path / "reviews")}},
      {"name": "lm", "kind": "mlm", "format": "text", "files": {"train": str(lm)}}]}
  suite = load(config, data_dir, tmp_path, log)
  specs = {t.name: t for t in suite.tasks}
  assert specs["review"].label_names == ("neg", "pos")
  assert specs["lm"].num_labels == suite.vocab_size
  assert suite.sizes == {"review": {"train": 4}, "lm": {"train": 3}}
  lm_batch = [b for n, b in all_eval(suite, "train") if n == "lm"][0]
  # every real LM row has at least one masked position, labelled with the original id
  assert (lm_batch["lm_mask"][:3].sum(axis=1) >= 1).all()
  assert lm_batch["lm_mask"][3].sum() == 0


def test_named_tfds_dataset_loads_through_data_source(write, data_dir, tmp_path, log):
  import tensorflow_datasets as tfds  # the user's own prepared dataset, built here

  class ToyGlue(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="sst2")]

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "sentence": tfds.features.Text(),
          "label": tfds.features.ClassLabel(names=["negative", "positive"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples([("good film", 1), ("bad film", 0), ("fine", 1)]),
              "validation": self._generate_examples([("very bad", 0)])}

    def _generate_examples(self, rows):
      for i, (sentence, label) in enumerate(rows):
        yield i, {"sentence": sentence, "label": label}

  tfds_dir = tmp_path / "tfds"
  ToyGlue(data_dir=str(tfds_dir), file_format="array_record").download_and_prepare()
  config = {"name": "named", "tasks": [
      {"name": "sst2", "kind": "classification", "format": "tfds", "dataset": "toy_glue/sst2",
       "tfds_data_dir": str(tfds_dir), "text": "sentence"}]}
  suite = load(config, data_dir, tmp_path, log)
  assert suite.tasks[0].label_names == ("negative", "positive")
  assert suite.sizes == {"sst2": {"train": 3, "validation": 1}}
  ((_, batch),) = all_eval(suite, "validation")
  assert batch["sst2"][0] == 0 and batch["sst2_mask"].tolist() == [1, 0, 0, 0]
  assert [suite.tokenizer.id_to_token(int(i)) for i in batch["input_ids"][0][:4]] == [
      "[CLS]", "very", "bad", "[SEP]"]

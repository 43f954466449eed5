"""Loading Hugging Face BERT directories: numerics against a float64 NumPy forward pass of the
same tensors, both naming variants, and one clear error per kind of bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_reference import TINY_HF, forward, tiny_tensors, write_checkpoint
from jmtl import pretrained
from jmtl.models.bert import bert_encode
from jmtl.pretrained import PretrainedError

IDS = np.array([[2, 5, 9, 11, 7, 3, 0, 0], [2, 6, 8, 10, 12, 14, 20, 3]], np.int32)
MASK = (IDS > 0).astype(np.int32)


@pytest.mark.parametrize("prefix", ["", "bert."])
@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_forward_matches_numpy_reference(tmp_path, prefix, pooling):
  tensors = tiny_tensors()
  model = pretrained.load(str(write_checkpoint(tmp_path / "m", tensors, prefix=prefix)),
                          pooling=pooling, data_dir=tmp_path / "data", log=lambda m: None)
  tokens, pooled = bert_encode(model.config, model.params,
                               {"input_ids": IDS, "attention_mask": MASK})
  ref_tokens, mean, cls, pooler = forward(tensors, IDS, MASK)
  np.testing.assert_allclose(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pooled, {"mean": mean, "cls": cls, "pooler": pooler}[pooling],
                             rtol=1e-5, atol=1e-5)
  assert model.config.num_layers == 2 and model.config.max_length == 32
  assert model.lowercase and model.vocab_file.name == "vocab.txt"
  assert any("position_ids" in note for note in model.notes)


def test_missing_pooler_is_fresh_and_reported(tmp_path):
  directory = write_checkpoint(tmp_path / "m", tiny_tensors(pooler=False))
  model = pretrained.load(str(directory), pooling="pooler", data_dir=tmp_path, log=print)
  assert "pooler" not in model.params
  assert any("no pooler" in note for note in model.notes)
  fresh = model.config.module().init(jax.random.PRNGKey(0), IDS, MASK)["params"]
  merged = pretrained.with_pretrained(fresh, model.params)
  np.testing.assert_array_equal(merged["pooler"]["kernel"], fresh["pooler"]["kernel"])
  np.testing.assert_array_equal(merged["layer_0"]["output"]["kernel"],
                                model.params["layer_0"]["output"]["kernel"])


def test_pretraining_heads_are_ignored_and_reported(tmp_path):
  tensors = {**tiny_tensors(), "cls.predictions.bias": np.zeros(40, np.float32)}
  model = pretrained.load(str(write_checkpoint(tmp_path / "m", tensors, prefix="bert.")),
                          data_dir=tmp_path)
  assert any("cls.predictions.bias" in note for note in model.notes)


def test_one_error_lists_unknown_missing_and_mismatched(tmp_path):
  tensors = tiny_tensors()
  tensors["encoder.layer.0.attention.self.rotary.weight"] = np.zeros((16, 16), np.float32)
  del tensors["encoder.layer.1.output.dense.bias"]
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 16), np.float32)
  with pytest.raises(PretrainedError) as error:
    pretrained.load(str(write_checkpoint(tmp_path / "m", tensors)), data_dir=tmp_path)
  message = str(error.value)
  assert "unknown tensors: encoder.layer.0.attention.self.rotary.weight" in message
  assert "missing tensors (jmtl paths): layer_1/output/bias" in message
  assert "encoder.layer.0.intermediate.dense.weight (16, 16)" in message
  assert "model.safetensors" in message


def test_bad_directories(tmp_path):
  with pytest.raises(PretrainedError, match="neither a named model"):
    pretrained.load(str(tmp_path / "nowhere"), data_dir=tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(PretrainedError, match="missing config.json and model.safetensors"):
    pretrained.load(str(empty), data_dir=tmp_path)
  directory = write_checkpoint(tmp_path / "m", tiny_tensors())
  os.remove(directory / "model.safetensors")
  with pytest.raises(PretrainedError, match="missing model.safetensors"):
    pretrained.load(str(directory), data_dir=tmp_path)


def test_not_bert_architecture(tmp_path):
  gpt = {**TINY_HF, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
  directory = write_checkpoint(tmp_path / "m", tiny_tensors(), hf=gpt)
  with pytest.raises(PretrainedError, match="model_type 'gpt2'.*is not BERT"):
    pretrained.load(str(directory), data_dir=tmp_path)
  relu = {**TINY_HF, "hidden_act": "relu"}
  directory = write_checkpoint(tmp_path / "r", tiny_tensors(), hf=relu)
  with pytest.raises(PretrainedError, match="hidden_act"):
    pretrained.load(str(directory), data_dir=tmp_path)


def test_vocabulary_size_must_match_embedding_rows(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
  directory = write_checkpoint(tmp_path / "m", tiny_tensors(), vocab=vocab)
  with pytest.raises(PretrainedError, match="7 tokens, but the word embedding table has 40 rows"):
    pretrained.load(str(directory), data_dir=tmp_path)


def test_tokenizer_json_alone_gives_vocab_and_casing(tmp_path):
  directory = write_checkpoint(tmp_path / "m", tiny_tensors(), lowercase=True)
  tokens = (directory / "vocab.txt").read_text().split()
  os.remove(directory / "vocab.txt")
  (directory / "tokenizer.json").write_text(json.dumps({
      "normalizer": {"type": "BertNormalizer", "lowercase": False},
      "model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(tokens)}}}))
  model = pretrained.load(str(directory), data_dir=tmp_path / "data")
  assert not model.lowercase  # tokenizer.json's normalizer wins over tokenizer_config.json
  assert model.vocab_file.read_text().split() == tokens


def test_cli_embed_bad_directory_exits_nonzero(tmp_path):
  result = subprocess.run([sys.executable, "-m", "jmtl.cli", "embed", "--pretrained",
                           str(tmp_path), "--input", "-"], input="hello\n", capture_output=True,
                          text=True, env={**os.environ, "JMTL_DATA_DIR": str(tmp_path / "d")})
  assert result.returncode == 2
  assert "missing config.json and model.safetensors" in result.stderr


def _run_config(tmp_path, directory, **model):
  from jmtl.config import base_config
  config = base_config()
  config.data.data_dir = str(tmp_path / "data")
  for key, value in model.items():
    section, _, leaf = key.partition("__")
    config[section][leaf] = value
  return config


def test_run_config_takes_tokenizer_and_shapes_from_the_checkpoint(tmp_path):
  from jmtl.config import ConfigError
  from jmtl.pretrained import training
  directory = write_checkpoint(tmp_path / "m", tiny_tensors(), lowercase=False)
  config = _run_config(tmp_path, directory, model__encoder="bert",
                       model__pretrained=str(directory), data__max_len=32, data__lowercase=True)
  vocab_file, lowercase = training.tokenizer_settings(config)
  assert vocab_file == str(directory / "vocab.txt") and lowercase is False

  class Suite:
    vocab_size, buckets = 40, (16, 32)
  encoder = training.bert_config(config, Suite())
  assert (encoder.num_layers, encoder.hidden_size, encoder.max_length) == (2, 16, 32)
  Suite.vocab_size = 41
  with pytest.raises(ConfigError, match="41 tokens but model.pretrained has 40"):
    training.bert_config(config, Suite())


def test_run_config_errors(tmp_path):
  from jmtl.config import ConfigError
  from jmtl.pretrained import training
  directory = write_checkpoint(tmp_path / "m", tiny_tensors())
  too_long = _run_config(tmp_path, directory, model__encoder="bert",
                         model__pretrained=str(directory), data__max_len=64)
  with pytest.raises(ConfigError, match="data.max_len=64 exceeds the 32 positions"):
    training.tokenizer_settings(too_long)
  other_vocab = _run_config(tmp_path, directory, model__encoder="bert",
                            model__pretrained=str(directory), data__max_len=32,
                            data__vocab_file="/elsewhere/vocab.txt")
  with pytest.raises(ConfigError, match="data.vocab_file='/elsewhere/vocab.txt' differs"):
    training.tokenizer_settings(other_vocab)
  with pytest.raises(ConfigError, match="model.encoder 'gpt'"):
    training.uses_bert(_run_config(tmp_path, directory, model__encoder="gpt"))
  with pytest.raises(ConfigError, match="needs model.encoder='bert'"):
    training.uses_bert(_run_config(tmp_path, directory, model__pretrained=str(directory)))

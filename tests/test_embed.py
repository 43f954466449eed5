"""Sentence embeddings (``jmtl.embed`` and ``jmtl embed``) against a float64 NumPy forward pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jmtl
from bert_reference import forward, tiny_tensors, write_checkpoint
from jmtl.pretrained.embedding import Embedder

TEXTS = ["The cat sat on the mat.", "A big red dog is running", "small blue house", "cats"]


def _reference(embedder, tensors, texts):
  encoded = embedder.wordpiece.encode_texts(texts)
  length = max(len(e.ids) for e in encoded)
  ids = np.zeros((len(texts), length), np.int64)
  for row, e in enumerate(encoded):
    ids[row, :len(e.ids)] = e.ids
  mean = forward(tensors, ids, (ids > 0).astype(np.int64))[1]
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True), ids


def test_embed_equals_reference_in_small_batches(tmp_path):
  tensors = tiny_tensors(seed=3)
  directory = str(write_checkpoint(tmp_path / "m", tensors))
  vectors = jmtl.embed(TEXTS, pretrained=directory, batch_size=3, data_dir=tmp_path)
  embedder = Embedder(directory, data_dir=tmp_path)
  expected, ids = _reference(embedder, tensors, TEXTS)
  assert (ids[:, 1:-1] > 4).sum() > 8  # real words, not only [UNK]
  assert vectors.shape == (4, 16) and vectors.dtype == np.float32
  np.testing.assert_allclose(vectors, expected, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-6)


def test_truncation_is_counted_and_reported(tmp_path):
  directory = str(write_checkpoint(tmp_path / "m", tiny_tensors()))
  said = []
  embedder = Embedder(directory, max_length=6, data_dir=tmp_path, log=said.append)
  vectors = embedder(["the cat sat on the mat on the mat", "a cat", "the dog is big and red"])
  assert said == ["embed: 2 of 3 texts were longer than 6 tokens and were truncated"]
  assert vectors.shape == (3, 16)
  with pytest.raises(jmtl.pretrained.PretrainedError, match="max_length 64"):
    Embedder(directory, max_length=64, data_dir=tmp_path)


def test_cli_writes_json_lines(tmp_path):
  tensors = tiny_tensors(seed=1)
  directory = str(write_checkpoint(tmp_path / "m", tensors))
  source = tmp_path / "in.txt"
  source.write_text("\n".join(TEXTS) + "\n")
  out = tmp_path / "out.jsonl"
  result = subprocess.run([sys.executable, "-m", "jmtl.cli", "embed", "--pretrained", directory,
                           "--input", str(source), "--output", str(out)], capture_output=True,
                          text=True, env={**os.environ, "JMTL_DATA_DIR": str(tmp_path / "d")})
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["text"] for r in rows] == TEXTS
  expected, _ = _reference(Embedder(directory, data_dir=tmp_path), tensors, TEXTS)
  np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-5)
  missing = subprocess.run([sys.executable, "-m", "jmtl.cli", "embed", "--pretrained", directory,
                            "--input", str(tmp_path / "nope.txt")], capture_output=True, text=True)
  assert missing.returncode == 2 and "nope.txt" in missing.stderr


@pytest.mark.slow
def test_minilm_matches_numpy_reference_and_ranks_sensibly():
  """The real all-MiniLM-L6-v2 (pinned wheel, fetched once into the data_dir cache)."""
  from safetensors.numpy import load_file
  texts = ["A man is eating food.", "A man is eating a piece of bread.",
           "The girl is carrying a baby.", "A man is riding a horse.",
           "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums."]
  embedder = Embedder("minilm")
  vectors = embedder(texts, batch_size=4)
  tensors = load_file(str(Path(embedder.model_dir) / "model.safetensors"))
  hf = json.loads((Path(embedder.model_dir) / "config.json").read_text())
  encoded = embedder.wordpiece.encode_texts(texts)
  ids = np.zeros((len(texts), max(len(e.ids) for e in encoded)), np.int64)
  for row, e in enumerate(encoded):
    ids[row, :len(e.ids)] = e.ids
  mean = forward(tensors, ids, (ids > 0).astype(np.int64), hf=hf)[1]
  np.testing.assert_allclose(vectors, mean / np.linalg.norm(mean, axis=-1, keepdims=True),
                             atol=1e-5)
  similarity = vectors @ vectors.T
  # Published for this model (sentence-transformers docs): food/bread 0.7553.
  assert abs(similarity[0, 1] - 0.7553) < 1e-3
  assert np.argsort(-similarity[0])[1] == 1  # eating food ~ eating bread
  assert np.argsort(-similarity[4])[1] == 5  # monkey drums ~ gorilla drums
  assert similarity[0, 1] > 0.5 > similarity[0, 2]

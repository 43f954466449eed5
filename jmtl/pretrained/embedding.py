"""Sentence embeddings from a pretrained encoder, as sentence-transformers computes them.

``embed(texts, pretrained="minilm")`` tokenizes with the model's own vocabulary, runs the
encoder in batches (each padded to a multiple of ``_PAD_TO`` tokens, so few shapes compile),
mean-pools over real tokens and L2-normalises: the recipe of all-MiniLM-L6-v2. A text longer
than the model's length is truncated and COUNTED; the count is reported, never hidden.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmtl import pretrained as pretrained_lib
from jmtl.data import tokenize

_PAD_TO = 32


class Embedder:
  """A loaded model and tokenizer; ``__call__(texts)`` gives ``[N, D]`` float32 vectors."""

  def __init__(self, pretrained: str = "minilm", *, pooling: str = "mean",
               normalize: bool = True, max_length: int | None = None,
               data_dir: str | os.PathLike | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    model = pretrained_lib.load(pretrained, pooling=pooling, data_dir=data_dir, log=log)
    self.config, self.normalize, self.log = model.config, normalize, log
    self.model_dir = model.path
    limit = max_length or model.max_seq_length or model.config.max_length
    if not 3 <= limit <= model.config.max_length:
      raise pretrained_lib.PretrainedError(
          f"max_length {limit}: must be between 3 and the model's {model.config.max_length} "
          "positions")
    self.wordpiece = tokenize.WordPiece(
        tokenize.from_vocab_file(model.vocab_file, lowercase=model.lowercase), limit)
    self.params = jax.tree.map(jnp.asarray, model.params)
    module = model.config.module()
    self._forward = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask)[1])

  def __call__(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    encoded = self.wordpiece.encode_texts(list(texts))
    truncated = sum(e.truncated for e in encoded)
    if truncated:
      self.log(f"embed: {truncated} of {len(encoded)} texts were longer than "
               f"{self.wordpiece.max_len} tokens and were truncated")
    out = np.zeros((len(encoded), self.config.hidden_size), np.float32)
    for start in range(0, len(encoded), batch_size):
      chunk = encoded[start:start + batch_size]
      longest = max(len(e.ids) for e in chunk)
      length = min(-(-longest // _PAD_TO) * _PAD_TO, self.wordpiece.max_len)
      ids = np.full((len(chunk), length), self.wordpiece.pad_id, np.int32)
      mask = np.zeros((len(chunk), length), np.int32)
      for row, e in enumerate(chunk):
        ids[row, :len(e.ids)], mask[row, :len(e.ids)] = e.ids, 1
      out[start:start + len(chunk)] = np.asarray(self._forward(self.params, ids, mask))
    if self.normalize:
      out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


def embed(texts: Sequence[str], pretrained: str = "minilm", *, batch_size: int = 32,
          **options) -> np.ndarray:
  """``[N, D]`` sentence embeddings of ``texts`` (see ``Embedder`` for the options)."""
  return Embedder(pretrained, **options)(texts, batch_size)


def write_jsonl(embedder: Embedder, lines: Iterable[str], out, batch_size: int = 32) -> int:
  """Embeds one text per line and writes ``{"text", "embedding"}`` JSON lines; returns N."""
  texts = [line.rstrip("\n") for line in lines]
  vectors = embedder(texts, batch_size)
  for text, vector in zip(texts, vectors):
    out.write(json.dumps({"text": text, "embedding": [round(float(v), 7) for v in vector]})
              + "\n")
  return len(texts)

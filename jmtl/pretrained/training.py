"""What a run's config needs from a pretrained model: its tokenizer, its encoder, its weights.

``model.encoder="bert"`` picks ``jmtl.models.bert``; with ``model.pretrained`` (a named model or
a Hugging Face BERT directory) its shapes come from the checkpoint's config.json, the suite is
tokenized with the checkpoint's own vocabulary and casing (the encoded-data cache is keyed by
the tokenizer's hash, so data tokenized with another vocabulary is never read), and a fresh
run starts from its weights. ``model.encoder="transformer"`` keeps jmtl's own encoder.
"""

from __future__ import annotations

import dataclasses

import functools
import sys

import jax
import ml_collections

from jmtl.config import ConfigError
from jmtl.models import precision
from jmtl.models.bert import BertConfig
from jmtl.pretrained import Pretrained, load, with_pretrained

ENCODERS = ("transformer", "bert")


def uses_bert(config: ml_collections.ConfigDict) -> bool:
  encoder = config.model.encoder
  if encoder not in ENCODERS:
    raise ConfigError(f"model.encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
  if config.model.pretrained and encoder != "bert":
    raise ConfigError(f"model.pretrained={config.model.pretrained!r} needs model.encoder='bert'")
  architecture = config.model.architecture
  if encoder == "bert" and architecture != "hard":
    # The other architectures stack jmtl's own (lighter) blocks into experts and columns:
    # there is no single BERT encoder for the pretrained weights to go into.
    raise ConfigError(f"model.encoder='bert' works with model.architecture='hard' only (got "
                      f"{architecture!r}: its experts and columns are jmtl's own blocks)")
  return encoder == "bert"


@functools.lru_cache(maxsize=2)
def _load(name: str, pooling: str, dropout: float, attention_dropout: float,
          data_dir: str) -> Pretrained:
  model = load(name, pooling=pooling, dropout=dropout, attention_dropout=attention_dropout,
               data_dir=data_dir or None, log=lambda m: print(m, file=sys.stderr))
  for note in model.notes:
    print(f"pretrained {name}: {note}", file=sys.stderr)
  return model


def pretrained_model(config: ml_collections.ConfigDict) -> Pretrained | None:
  if not (uses_bert(config) and config.model.pretrained):
    return None
  m = config.model
  return _load(m.pretrained, m.pooling, m.dropout, m.attention_dropout, config.data.data_dir)


def tokenizer_settings(config: ml_collections.ConfigDict) -> tuple[str | None, bool]:
  """``(vocab_file or None, lowercase)`` to tokenize the suite with."""
  d = config.data
  model = pretrained_model(config)
  if model is None:
    return d.vocab_file or None, d.lowercase
  if d.vocab_file and d.vocab_file != str(model.vocab_file):
    raise ConfigError(f"data.vocab_file={d.vocab_file!r} differs from the vocabulary of "
                      f"model.pretrained={config.model.pretrained!r} ({model.vocab_file}); "
                      "leave data.vocab_file empty")
  if d.max_len > model.config.max_length:
    raise ConfigError(f"data.max_len={d.max_len} exceeds the {model.config.max_length} "
                      f"positions of model.pretrained={config.model.pretrained!r}")
  return str(model.vocab_file), model.lowercase


def bert_config(config: ml_collections.ConfigDict, suite) -> BertConfig:
  """The encoder of a BERT run: the checkpoint's shapes, or model.* for one from scratch."""
  m = config.model
  model = pretrained_model(config)
  if model is not None:
    if suite.vocab_size != model.config.vocab_size:
      raise ConfigError(f"the suite's tokenizer has {suite.vocab_size} tokens but "
                        f"model.pretrained has {model.config.vocab_size} embedding rows")
    return dataclasses.replace(model.config, remat=config.train.remat,
                               **precision.from_config(m))
  try:
    return BertConfig(vocab_size=suite.vocab_size, hidden_size=m.width, num_layers=m.depth,
                      num_heads=m.num_heads, intermediate_size=m.mlp_width,
                      max_length=max(suite.buckets), dropout=m.dropout,
                      attention_dropout=m.attention_dropout, pooling=m.pooling,
                      remat=config.train.remat, **precision.from_config(m))
  except ValueError as e:
    raise ConfigError(f"model: {e}") from None


def with_pretrained_encoder(config: ml_collections.ConfigDict, state):
  """A fresh TrainState with the checkpoint's encoder weights (no-op without a pretrained
  model). Done outside jit: captured as constants, 90 MB of weights cost seconds of compile.
  Optimizer and balancer states depend on shapes only, so they stay valid."""
  model = pretrained_model(config)
  if model is None:
    return state
  params = dict(state.params)
  params["encoder"] = jax.tree.map(jax.numpy.asarray,
                                   with_pretrained(state.params["encoder"], model.params))
  return state.replace(params=params)

"""Reading a Hugging Face BERT directory (config.json + model.safetensors + vocabulary).

Only NumPy touches the weights (``safetensors.numpy``), so no torch is needed. Tensor names are
mapped one to one onto ``jmtl.models.bert`` (with or without the ``bert.`` prefix of
``BertFor*`` checkpoints); torch's ``(out, in)`` kernels are transposed. Every problem in a
checkpoint is collected and raised as ONE ``PretrainedError`` listing them, so a user fixes
them in one pass instead of one per run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jmtl.config import ConfigError
from jmtl.models.bert import BertConfig

WEIGHTS = "model.safetensors"
# Tensors that are buffers or pre-training heads, not encoder weights: dropped, and reported.
_IGNORED = re.compile(r"^(embeddings\.position_ids|cls\..*)$")
_LAYER = {
    "attention.self.query": "attention/query", "attention.self.key": "attention/key",
    "attention.self.value": "attention/value", "attention.output.dense": "attention/output",
    "attention.output.LayerNorm": "attention_norm", "intermediate.dense": "intermediate",
    "output.dense": "output", "output.LayerNorm": "output_norm"}
_TOP = {"embeddings.word_embeddings": "token_embedding",
        "embeddings.position_embeddings": "position_embedding",
        "embeddings.token_type_embeddings": "type_embedding",
        "embeddings.LayerNorm": "embedding_norm", "pooler.dense": "pooler"}
_LEAF = {"weight": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}


class PretrainedError(ConfigError):
  """A pretrained model directory or name that cannot be used; the message says why."""


class Pretrained(NamedTuple):
  """A loaded checkpoint.

  Attributes:
    config: the encoder's shapes (dropout and pooling as requested).
    params: ``{path: array}`` nested like the encoder's params; a pooler absent from the
      checkpoint is absent here too (initialised fresh by whoever builds the model).
    vocab_file: the WordPiece ``vocab.txt`` the model was trained with.
    lowercase: whether its tokenizer lowercases (and strips accents).
    max_seq_length: the length the model was trained for (sentence-transformers), or None.
    notes: what was dropped or left fresh, for the user to read.
    path: the directory.
  """
  config: BertConfig
  params: dict[str, Any]
  vocab_file: Path
  lowercase: bool
  max_seq_length: int | None
  notes: tuple[str, ...]
  path: Path


def _read_json(path: Path) -> dict[str, Any]:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise PretrainedError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
  if not isinstance(value, dict):
    raise PretrainedError(f"{path}: expected a JSON object")
  return value


def bert_config(path: Path, **overrides) -> BertConfig:
  """``BertConfig`` from a Hugging Face config.json; a non-BERT architecture is refused."""
  hf = _read_json(path)
  kind, architectures = hf.get("model_type"), hf.get("architectures") or []
  if kind != "bert" and not any(str(a).startswith("Bert") for a in architectures):
    raise PretrainedError(
        f"{path}: model_type {kind!r} (architectures {architectures}) is not BERT; jmtl loads "
        "BERT-family encoders (model_type 'bert': BERT, MiniLM, sentence-transformers BERTs)")
  unsupported = {k: hf[k] for k, ok in (("hidden_act", "gelu"),
                                        ("position_embedding_type", "absolute"))
                 if k in hf and hf[k] != ok}
  if unsupported:
    raise PretrainedError(f"{path}: unsupported settings {unsupported} (jmtl's BERT uses exact "
                          "GELU and absolute positions)")
  keys = dict(vocab_size="vocab_size", hidden_size="hidden_size",
              num_layers="num_hidden_layers", num_heads="num_attention_heads",
              intermediate_size="intermediate_size", max_length="max_position_embeddings",
              type_vocab_size="type_vocab_size", layer_norm_eps="layer_norm_eps",
              dropout="hidden_dropout_prob", attention_dropout="attention_probs_dropout_prob")
  values = {ours: hf[theirs] for ours, theirs in keys.items() if theirs in hf}
  missing = [keys[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                               "intermediate_size") if k not in values]
  if missing:
    raise PretrainedError(f"{path}: missing keys {missing}")
  values.update({k: v for k, v in overrides.items() if v is not None})
  try:
    return BertConfig(**values)
  except (TypeError, ValueError) as e:
    raise PretrainedError(f"{path}: {e}") from None


def _leaf(module: str, leaf: str) -> str:
  return "scale" if module.endswith("LayerNorm") and leaf == "weight" else _LEAF[leaf]


def flax_path(name: str) -> str | None:
  """The jmtl param path (``a/b/leaf``) of a Hugging Face tensor name, or None if unknown."""
  name = name.removeprefix("bert.")
  module, _, leaf = name.rpartition(".")
  if leaf not in _LEAF:
    return None
  if module in _TOP:
    if module.endswith("_embeddings"):
      return f"{_TOP[module]}/embedding" if leaf == "weight" else None
    return f"{_TOP[module]}/{_leaf(module, leaf)}"
  match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
  if match and match.group(2) in _LAYER:
    return f"layer_{int(match.group(1))}/{_LAYER[match.group(2)]}/{_leaf(module, leaf)}"
  return None


def _expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
  ids = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: config.module().init(jax.random.PRNGKey(0), ids, ids))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def convert(tensors: dict[str, np.ndarray], config: BertConfig, where: str
            ) -> tuple[dict[str, Any], tuple[str, ...]]:
  """Hugging Face tensors -> (nested jmtl params, notes). Raises ONE error for all problems."""
  expected = _expected_shapes(config)
  flat, unknown, mismatched, notes, seen = {}, [], [], [], set()
  ignored = sorted(n for n in tensors if _IGNORED.match(n.removeprefix("bert.")))
  for name, value in sorted(tensors.items()):
    if name in ignored:
      continue
    path = flax_path(name)
    if path is None:
      unknown.append(name)
      continue
    if path.startswith("pooler/") and "pooler/kernel" not in expected:
      notes.append(f"{name}: not used with pooling={config.pooling!r}")
      continue
    value = np.asarray(value, np.float32)
    if path.endswith("/kernel"):
      value = value.T  # torch Linear stores (out, in)
    if path not in expected:
      unknown.append(name)
    elif value.shape != expected[path]:
      seen.add(path)
      mismatched.append(f"{name} {tuple(value.shape)} (expected {expected[path]} for {path})")
    else:
      flat[path] = value
  missing = [p for p in expected
             if p not in flat and p not in seen and not p.startswith("pooler/")]
  problems = ([f"unknown tensors: {', '.join(unknown)}"] if unknown else []) + (
      [f"missing tensors (jmtl paths): {', '.join(missing)}"] if missing else []) + (
      [f"shape mismatches: {'; '.join(mismatched)}"] if mismatched else [])
  if problems:
    raise PretrainedError(f"{where}: the checkpoint does not fit a BERT with its config.json:\n  "
                          + "\n  ".join(problems))
  if "pooler/kernel" in expected and "pooler/kernel" not in flat:
    notes.append("the checkpoint has no pooler: it is initialised fresh")
  if ignored:
    notes.append(f"ignored (buffers or pre-training heads): {', '.join(ignored)}")
  return traverse_util.unflatten_dict(flat, sep="/"), tuple(notes)


def _tokenizer_settings(directory: Path, cache: Path) -> tuple[Path, bool]:
  """(vocab.txt, lowercase) from vocab.txt or tokenizer.json and the tokenizer configs."""
  tokenizer_json = directory / "tokenizer.json"
  spec = _read_json(tokenizer_json) if tokenizer_json.is_file() else {}
  settings = _read_json(directory / "tokenizer_config.json") if (
      directory / "tokenizer_config.json").is_file() else {}
  normalizer = spec.get("normalizer") or {}
  lowercase = bool(normalizer.get("lowercase", settings.get("do_lower_case", True)))
  vocab_file = directory / "vocab.txt"
  if vocab_file.is_file():
    return vocab_file, lowercase
  model = spec.get("model") or {}
  if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
    raise PretrainedError(f"{directory}: no vocab.txt and no WordPiece tokenizer.json")
  by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
  derived = cache / f"vocab-{hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]}.txt"
  derived.parent.mkdir(parents=True, exist_ok=True)
  derived.write_text("\n".join(token for token, _ in by_id) + "\n", encoding="utf-8")
  return derived, lowercase


def load_dir(directory: str | Path, *, pooling: str = "mean", dropout: float | None = None,
             attention_dropout: float | None = None, cache: Path | None = None) -> Pretrained:
  """Loads a local Hugging Face BERT directory (see the module docstring)."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  directory = Path(directory).expanduser()
  if not directory.is_dir():
    raise PretrainedError(f"pretrained model {str(directory)!r}: no such directory")
  absent = [f for f in ("config.json", WEIGHTS) if not (directory / f).is_file()]
  if absent:
    raise PretrainedError(f"pretrained model {directory}: missing {' and '.join(absent)} (a "
                          "Hugging Face BERT directory holds config.json, model.safetensors "
                          "and vocab.txt or tokenizer.json)")
  config = bert_config(directory / "config.json", pooling=pooling, dropout=dropout,
                       attention_dropout=attention_dropout)
  try:
    tensors = load_file(str(directory / WEIGHTS))
  except (SafetensorError, OSError) as e:
    raise PretrainedError(f"{directory / WEIGHTS}: cannot read: {e}") from None
  params, notes = convert(tensors, config, str(directory / WEIGHTS))
  vocab_file, lowercase = _tokenizer_settings(directory, cache or directory)
  vocab_rows = sum(1 for _ in vocab_file.open(encoding="utf-8"))
  if vocab_rows != config.vocab_size:
    raise PretrainedError(f"{vocab_file}: {vocab_rows} tokens, but the word embedding table "
                          f"has {config.vocab_size} rows: vocabulary and weights do not match")
  sbert = directory / "sentence_bert_config.json"
  max_seq_length = _read_json(sbert).get("max_seq_length") if sbert.is_file() else None
  return Pretrained(config, params, vocab_file, lowercase, max_seq_length, notes, directory)


def with_pretrained(fresh: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
  """``fresh`` encoder params with every leaf present in ``loaded`` replaced (same shapes)."""
  out = {}
  for key, value in fresh.items():
    if key not in loaded:
      out[key] = value
    elif isinstance(value, dict):
      out[key] = with_pretrained(value, loaded[key])
    else:
      out[key] = jnp.asarray(loaded[key], value.dtype)
  return out

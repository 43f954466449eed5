"""An independent float64 NumPy BERT forward pass over Hugging Face tensor names, and a tiny
random checkpoint written the way Hugging Face writes one (for the pretrained-loading tests)."""

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from scipy.special import erf

TINY_HF = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 40,
           "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 24, "max_position_embeddings": 32, "type_vocab_size": 2,
           "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tensors(seed=0, hf=TINY_HF, pooler=True):
  """Random float32 tensors named and shaped as Hugging Face's BertModel stores them."""
  rng = np.random.default_rng(seed)
  d, inner = hf["hidden_size"], hf["intermediate_size"]
  r = lambda *shape: (rng.normal(size=shape) * 0.3).astype(np.float32)
  t = {"embeddings.word_embeddings.weight": r(hf["vocab_size"], d),
       "embeddings.position_embeddings.weight": r(hf["max_position_embeddings"], d),
       "embeddings.token_type_embeddings.weight": r(hf["type_vocab_size"], d),
       "embeddings.LayerNorm.weight": 1 + r(d), "embeddings.LayerNorm.bias": r(d),
       "embeddings.position_ids": np.arange(hf["max_position_embeddings"])[None]}
  for i in range(hf["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, (out, inp) in {"attention.self.query": (d, d), "attention.self.key": (d, d),
                             "attention.self.value": (d, d), "attention.output.dense": (d, d),
                             "intermediate.dense": (inner, d), "output.dense": (d, inner)}.items():
      t[p + name + ".weight"], t[p + name + ".bias"] = r(out, inp), r(out)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + name + ".weight"], t[p + name + ".bias"] = 1 + r(d), r(d)
  if pooler:
    t["pooler.dense.weight"], t["pooler.dense.bias"] = r(d, d), r(d)
  return t


def write_checkpoint(directory, tensors, hf=TINY_HF, prefix="", vocab=None, lowercase=True):
  """A Hugging Face BERT directory: config.json, model.safetensors, vocab.txt, tokenizer
  config; ``prefix="bert."`` writes the names a ``BertFor*`` model uses."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(hf))
  save_file({prefix + k: v for k, v in tensors.items()}, str(directory / "model.safetensors"))
  if vocab is None:
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "##s", "is", "big", "small", "run",
             "##ning", "house", "red", "blue", "."]
    vocab = SPECIALS + words + [f"w{i}" for i in range(hf["vocab_size"] - len(SPECIALS) - len(words))]
  (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
  (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
  return directory


def _ln(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def forward(tensors, ids, mask, hf=TINY_HF, type_ids=None):
  """(tokens [B, L, D], masked mean [B, D], cls [B, D], pooler [B, D] or None), float64."""
  g = lambda n: np.asarray(tensors[n], np.float64)
  eps, heads = hf["layer_norm_eps"], hf["num_attention_heads"]
  batch, length = ids.shape
  type_ids = np.zeros_like(ids) if type_ids is None else type_ids
  x = (g("embeddings.word_embeddings.weight")[ids]
       + g("embeddings.position_embeddings.weight")[:length]
       + g("embeddings.token_type_embeddings.weight")[type_ids])
  x = _ln(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
  width = x.shape[-1]
  head = width // heads
  bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
  for i in range(hf["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    linear = lambda h, n: h @ g(p + n + ".weight").T + g(p + n + ".bias")
    q, k, v = (linear(x, f"attention.self.{n}").reshape(batch, length, heads, head)
               .transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    x = _ln(x + linear(context, "attention.output.dense"),
            g(p + "attention.output.LayerNorm.weight"), g(p + "attention.output.LayerNorm.bias"), eps)
    h = linear(x, "intermediate.dense")
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    x = _ln(x + linear(h, "output.dense"), g(p + "output.LayerNorm.weight"),
            g(p + "output.LayerNorm.bias"), eps)
  m = mask[..., None].astype(np.float64)
  mean = (x * m).sum(1) / m.sum(1)
  pooler = None
  if "pooler.dense.weight" in tensors:
    pooler = np.tanh(x[:, 0] @ g("pooler.dense.weight").T + g("pooler.dense.bias"))
  return x, mean, x[:, 0], pooler

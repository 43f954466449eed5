"""The BERT encoder alone: its declared paths, pooling modes, padding, token_rows, dropout.
(Numerics against an independent float64 forward pass are in tests/test_pretrained.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl.models.bert import BertConfig, bert_encode

CONFIG = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4,
                    intermediate_size=24, max_length=16)


def _batch():
  ids = np.array([[2, 7, 8, 9, 3, 0, 0], [2, 11, 12, 13, 14, 15, 3]], np.int32)
  return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}


def _params(config=CONFIG):
  b = _batch()
  return config.module().init(jax.random.PRNGKey(0), b["input_ids"], b["attention_mask"])["params"]


def _at(tree, path):
  for part in path.split("/") if isinstance(path, str) else path:
    tree = tree[part]
  return tree


def test_declared_paths_exist_and_name_the_right_layers():
  params = _params()
  assert _at(params, CONFIG.token_table).shape == (50, 16)
  assert set(_at(params, CONFIG.last_shared_layer)) == {"scale", "bias"}
  assert CONFIG.last_shared_layer == "layer_1/output_norm"
  assert CONFIG.pooled_width == 16


def test_pooling_modes():
  batch = _batch()
  for pooling in ("cls", "mean"):
    config = BertConfig(**{**CONFIG.__dict__, "pooling": pooling})
    params = _params(config)
    assert "pooler" not in params  # no dead parameters for the balancer to see
    tokens, pooled = bert_encode(config, params, batch)
    if pooling == "cls":
      np.testing.assert_allclose(pooled, tokens[:, 0])
    else:
      m = batch["attention_mask"][..., None]
      np.testing.assert_allclose(pooled, (tokens * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-6)
  config = BertConfig(**{**CONFIG.__dict__, "pooling": "pooler"})
  params = _params(config)
  tokens, pooled = bert_encode(config, params, batch)
  expected = np.tanh(np.asarray(tokens[:, 0]) @ params["pooler"]["kernel"] + params["pooler"]["bias"])
  np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_real_tokens():
  params = _params()
  batch = _batch()
  tokens, pooled = bert_encode(CONFIG, params, batch)
  short = {k: v[:1, :5] for k, v in batch.items()}
  t1, p1 = bert_encode(CONFIG, params, short)
  np.testing.assert_allclose(tokens[:1, :5], t1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pooled[:1], p1, rtol=1e-5, atol=1e-5)


def test_token_rows_replace_the_gather():
  params = _params()
  batch = _batch()
  rows = params["token_embedding"]["embedding"][batch["input_ids"]] + 0.5
  shifted = jax.tree.map(lambda x: x, params)
  shifted["token_embedding"] = {"embedding": params["token_embedding"]["embedding"] + 0.5}
  expected = bert_encode(CONFIG, shifted, batch)
  got = bert_encode(CONFIG, params, batch, token_rows=rows)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_only_with_rng():
  params = _params()
  batch = _batch()
  a = bert_encode(CONFIG, params, batch)[1]
  b = bert_encode(CONFIG, params, batch)[1]
  c = bert_encode(CONFIG, params, batch, rng=jax.random.PRNGKey(1))[1]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_gradients_reach_every_parameter():
  params = _params(BertConfig(**{**CONFIG.__dict__, "pooling": "pooler"}))
  config = BertConfig(**{**CONFIG.__dict__, "pooling": "pooler"})
  batch = _batch()
  grads = jax.grad(lambda p: jnp.sum(bert_encode(config, p, batch)[1] ** 2)
                   + jnp.sum(bert_encode(config, p, batch)[0] ** 3))(params)
  dead = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_flatten_with_path(grads)[0]
          if not np.any(np.asarray(g))]
  assert dead == []


def test_bad_configs_and_lengths():
  with pytest.raises(ValueError, match="divisible"):
    BertConfig(hidden_size=10, num_heads=4)
  with pytest.raises(ValueError, match="pooling"):
    BertConfig(pooling="max")
  params = _params()
  long = {"input_ids": np.ones((1, 17), np.int32), "attention_mask": np.ones((1, 17), np.int32)}
  with pytest.raises(ValueError, match="position table"):
    bert_encode(CONFIG, params, long)

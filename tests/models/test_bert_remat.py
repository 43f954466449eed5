"""Gradient checkpointing (``train.remat``) of the BERT encoder changes memory, not results:
two steps through ``jmtl.make_train_step`` with and without ``nn.remat`` around each layer
reach the same parameters."""

import dataclasses

import jax
import numpy as np
import optax

import jmtl
from tiny_model import TASKS, make_batch
from jmtl.balancers import get
from jmtl.config import base_config
from jmtl.models import MultiTaskModel
from jmtl.models.bert import BertConfig
from jmtl.pretrained import training
from jmtl.train.state import create_train_state

TINY_BERT = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                       intermediate_size=24, max_length=16, dropout=0.1, attention_dropout=0.1)


def _two_steps(encoder):
  tasks = TASKS[:3]
  model = MultiTaskModel(encoder, tasks)
  balancer = get("pcgrad", num_tasks=len(tasks))
  optimizer = optax.sgd(0.05)
  batch = make_batch(tasks)
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  step = jmtl.make_train_step(model, balancer, optimizer)  # dropout on: same keys either way
  for seed in (0, 1):
    state, metrics = step(state, make_batch(tasks, seed=seed))
    assert bool(metrics["finite"])
  return jax.tree.map(np.asarray, state.params)


def test_remat_gives_the_same_parameters_after_two_steps():
  plain = _two_steps(TINY_BERT)
  remat = _two_steps(dataclasses.replace(TINY_BERT, remat=True))
  start = jax.tree.map(np.asarray, jax.jit(lambda: create_train_state(
      MultiTaskModel(TINY_BERT, TASKS[:3]), get("pcgrad", num_tasks=3), optax.sgd(0.05),
      make_batch(TASKS[:3]), 0))().params)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(plain),
                                                            jax.tree.leaves(start)))
  assert moved > 1e-3  # the steps changed the parameters (SGD: no Adam normalisation that
  # would blow float rounding of near-zero gradients up to learning-rate-sized steps)
  assert jax.tree.structure(plain) == jax.tree.structure(remat)  # same names: checkpoints fit
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_train_remat_reaches_the_bert_config():
  config = base_config()
  config.model.encoder = "bert"
  config.train.remat = True
  suite = type("Suite", (), {"vocab_size": 40, "buckets": (16,)})()
  assert training.bert_config(config, suite).remat

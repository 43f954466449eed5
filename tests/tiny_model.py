"""A tiny model config, a task of every kind, random batches, and the per-task reference
gradient for engine tests."""

import functools

import jax
import numpy as np
from jmtl.models import EncoderConfig
from jmtl.tasks import TaskSpec

TINY = EncoderConfig(vocab_size=40, width=16, depth=2, num_heads=2, mlp_width=24, max_length=16,
                     pooled_width=8, dropout=0.0, attention_dropout=0.0)

TASKS = (
    TaskSpec("topic", "classification", 3),
    TaskSpec("score", "regression"),
    TaskSpec("pos", "tagging", 5),
    TaskSpec("qa", "span_qa"),
    TaskSpec("mlm", "mlm", 40),
)


def make_batch(tasks=TASKS, batch_size=4, length=8, seed=0, vocab=40):
  """A same-input batch with random labels for ``tasks`` and ragged padding."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, batch_size)
  attention = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  batch = {"input_ids": (rng.integers(1, vocab, (batch_size, length)) * attention).astype(np.int32),
           "attention_mask": attention}
  for spec in tasks:
    if spec.token_level and spec.kind != "span_qa":
      batch[spec.label_key] = rng.integers(0, spec.num_labels, (batch_size, length)).astype(np.int32)
      batch[spec.mask_key] = (attention * (rng.random((batch_size, length)) < 0.8)).astype(np.float32)
    elif spec.kind == "span_qa":
      start = rng.integers(0, lengths)
      batch[spec.label_key] = np.stack([start, np.minimum(start + 1, lengths - 1)], 1).astype(np.int32)
      batch[spec.mask_key] = np.ones(batch_size, np.float32)
    elif spec.kind == "regression":
      batch[spec.label_key] = rng.normal(size=batch_size).astype(np.float32)
      batch[spec.mask_key] = np.ones(batch_size, np.float32)
    else:
      batch[spec.label_key] = rng.integers(0, spec.num_labels, batch_size).astype(np.int32)
      batch[spec.mask_key] = np.ones(batch_size, np.float32)
  return batch


@functools.partial(jax.jit, static_argnums=(0, 1))
def task_loss_and_grad(model, spec, params, batch):
  """Reference: (loss, gradient of every param) of ONE task's masked mean loss, from
  ``model.apply`` and the spec alone (nothing shared with the engine). Compiled whole, once
  per (model, task, shapes): op by op it took most of the tests that use it."""
  return jax.value_and_grad(lambda p: spec.loss(model.apply(p, batch)[spec.name], batch))(params)

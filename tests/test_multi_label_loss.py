"""The multi-label loss against a float64 NumPy reference, masked rows included."""

import jax
import jax.numpy as jnp
import numpy as np

from jmtl.tasks import TaskKind, TaskSpec


def test_multi_label_loss_is_masked_mean_bce_per_example():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3)) * 3
  labels = (rng.random((4, 3)) > 0.5).astype(np.float32)
  labels[2] = np.nan  # a row without labels may hold anything
  mask = np.array([1, 1, 0, 1], np.float32)
  spec = TaskSpec("tags", TaskKind.MULTI_LABEL, num_labels=3)
  batch = {"tags": jnp.asarray(labels), "tags_mask": jnp.asarray(mask)}
  total, count = spec.loss_sum(jnp.asarray(logits, jnp.float32), batch)
  probabilities = 1 / (1 + np.exp(-logits))
  bce = -(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))
  expected = np.nansum(bce.mean(axis=1)[mask > 0])
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)
  assert float(count) == 3.0
  grads = jax.grad(lambda x: spec.loss(x, batch))(jnp.asarray(logits, jnp.float32))
  assert np.isfinite(np.asarray(grads)).all() and not np.asarray(grads)[2].any()
  # predict gives probabilities; the threshold is applied on the host by the metrics
  np.testing.assert_allclose(np.asarray(spec.predict(jnp.asarray(logits, jnp.float32))),
                             probabilities, rtol=1e-5)

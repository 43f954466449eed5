"""Multi-input steps whose tasks have different numbers of rows and lengths, every family.

Through ``make_train_step`` on the real encoder: one SGD(lr=1) step's parameter change is the
balanced gradient; it must equal the balancer applied to per-task gradients computed
independently (``jax.grad`` of each task's masked mean loss alone, in float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tiny_model import TINY, make_batch, task_loss_and_grad
from jmtl import balancers
from jmtl.models import MultiTaskModel
from jmtl.tasks import TaskSpec
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state

TASKS = (TaskSpec("topic", "classification", 3), TaskSpec("pos", "tagging", 5),
         TaskSpec("score", "regression"))
ROWS, LENGTHS = (4, 6, 8), (5, 7, 8)


def task_batches(seed=0):
  return {spec.name: make_batch((spec,), batch_size=rows, length=length, seed=seed + i)
          for i, (spec, rows, length) in enumerate(zip(TASKS, ROWS, LENGTHS))}


def reference_task_grads(model, params, batches):
  """Per task: (loss, gradient of every param) of that task's loss alone, in float64."""
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    out = []
    for spec in TASKS:
      batch = {k: (jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else v)
               for k, v in batches[spec.name].items()}
      value, grads = task_loss_and_grad(model, spec, params64, batch)
      out.append((float(value), jax.tree.map(np.asarray, grads)))
    return out


def assert_close(actual, expected, scale, what):
  """Relative to each entry, with float32 noise allowed relative to the tree's largest entry
  (e.g. attention key biases: exactly zero gradient, ~1e-9 of float32 round-off)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=1e-5 * scale, err_msg=what)


def largest(tree):
  return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("method", ["dwa", "mgda", "upgrad", "pcgrad", "gradnorm", "trimmed_mean"])
def test_per_task_batch_sizes_match_independent_gradients(method):
  model = MultiTaskModel(TINY, TASKS, layout="multi_input")
  balancer = balancers.get(method, num_tasks=len(TASKS))
  optimizer = optax.sgd(1.0)
  batches = task_batches()
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batches, 0))()
  initial_balancer_state = state.balancer_state
  before = jax.tree.map(np.asarray, state.params)
  step = make_train_step(model, balancer, optimizer, dropout=False, donate=False)
  state, metrics = step(state, batches)
  assert bool(metrics["finite"])
  change = jax.tree.map(lambda b, a: b - np.asarray(a, np.float64), before, state.params)

  reference = reference_task_grads(model, before, batches)
  losses = np.array([loss for loss, _ in reference])
  np.testing.assert_allclose(metrics["losses"], losses, rtol=1e-5)
  stacked = jax.tree.map(lambda *g: jnp.asarray(np.stack(g), jnp.float32),
                         *[g["encoder"] for _, g in reference])
  # Every task is labelled, so the step runs the plain T-task method: so does the reference
  # (and eagerly, without with_presence's T + 1 solvers, which cost ~40 s here).
  expected, _ = balancer.update(stacked, initial_balancer_state, before["encoder"],
                                task_losses=jnp.asarray(losses, jnp.float32))
  scale = largest(expected)
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(change["encoder"]),
                          jax.tree.leaves(expected)):
    assert_close(a, e, scale, f"{method}: encoder{jax.tree_util.keystr(path)}")
  # Heads belong to one task: its own gradient, scaled by its weight only where the method
  # weights losses (one backward of the weighted sum).
  weights = balancers.applied_weights(state.balancer_state)
  for i, spec in enumerate(TASKS):
    weight = float(weights[i]) if balancer.needs == "losses" else 1.0
    head = jax.tree.map(lambda g: weight * g, reference[i][1]["heads"][spec.name])
    for a, e in zip(jax.tree.leaves(change["heads"][spec.name]), jax.tree.leaves(head)):
      assert_close(a, e, largest(head), f"{method}: head {spec.name}")

"""The train step: non-finite steps change nothing, no recompilation, donation."""

import jax
import numpy as np
import optax
import pytest

from tiny_model import TASKS, TINY, make_batch
from jmtl.balancers import get
from jmtl.models import MultiTaskModel
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state


def _setup(method="pcgrad", grad_mode="exact", tasks=TASKS[:3]):
  model = MultiTaskModel(TINY, tasks)
  balancer = get(method, num_tasks=len(tasks))
  optimizer = optax.adam(1e-3)
  batch = make_batch(tasks)
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode)
  return model, step, state, batch


def test_nonfinite_step_is_skipped_and_counted():
  _, step, state, batch = _setup()
  before = jax.tree.map(np.asarray, state)
  bad = dict(batch, score=np.full_like(batch["score"], np.nan))  # a labelled NaN target
  state, metrics = step(state, bad)
  assert not bool(metrics["finite"])
  assert int(state.nonfinite_steps) == 1 and int(state.step) == 1
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  state, metrics = step(state, batch)  # and training goes on
  assert bool(metrics["finite"]) and int(state.nonfinite_steps) == 1


@pytest.mark.parametrize("method,grad_mode", [("pcgrad", "exact"), ("pcgrad", "rep"),
                                              ("dwa", "exact"), ("gradnorm", "exact")])
def test_second_step_does_not_recompile(method, grad_mode):
  _, step, state, batch = _setup(method, grad_mode)
  state, _ = step(state, batch)
  size = step._fn_every_task_present._cache_size()
  for seed in (1, 2):
    state, metrics = step(state, make_batch(TASKS[:3], seed=seed))
  assert step._fn_every_task_present._cache_size() == size == 1
  assert step._fn._cache_size() == 0  # no batch lacked a task: the masked step never compiled
  assert np.all(np.isfinite(metrics["losses"]))


def test_state_is_donated():
  _, step, state, batch = _setup()
  old_leaf = jax.tree.leaves(state.params)[0]
  step(state, batch)
  assert old_leaf.is_deleted()


def test_metrics_carry_weights_and_cosines():
  _, step, state, batch = _setup("mgda")
  _, metrics = step(state, batch)
  weights, cosines = np.asarray(metrics["weights"]), np.asarray(metrics["cosines"])
  assert weights.shape == (3,) and cosines.shape == (3, 3)
  np.testing.assert_allclose(np.diag(cosines), 1.0, rtol=1e-5)
  assert np.all(np.abs(cosines) <= 1 + 1e-5)


def _sgd_change(model, balancer, batch, params=None, seed=0):
  """Params before, and their change after one jitted SGD(lr=1) step (= the step's gradient)."""
  optimizer = optax.sgd(1.0)
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, seed))()
  if params is not None:
    state = state.replace(params=params)
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = make_train_step(model, balancer, optimizer, dropout=False)(state, batch)
  return before, jax.tree.map(lambda b, a: b - np.asarray(a), before, state.params), metrics


@pytest.mark.parametrize("method", ["mgda", "upgrad"])
def test_task_without_labels_is_left_out_of_balancing(method):
  """A mixture batch in which "score" has no labelled row: MGDA-type methods balance the two
  present tasks (exactly as a two-task model would), not a zero gradient that makes the
  min-norm point zero; the absent task's head does not move."""
  tasks = TASKS[:3]  # topic, score, pos
  batch = make_batch(tasks, seed=5)
  batch["score_mask"] = np.zeros_like(batch["score_mask"])
  model = MultiTaskModel(TINY, tasks)
  before, change, metrics = _sgd_change(model, get(method, num_tasks=3), batch)
  assert float(optax.tree.norm(change["encoder"])) > 1e-3
  for leaf in jax.tree.leaves(change["heads"]["score"]):
    np.testing.assert_array_equal(leaf, 0.0)
  assert float(metrics["weights"][1]) == 0.0

  present = (tasks[0], tasks[2])
  pair = MultiTaskModel(TINY, present)
  pair_params = {"encoder": before["encoder"],
                 "heads": {t.name: before["heads"][t.name] for t in present}}
  _, pair_change, _ = _sgd_change(pair, get(method, num_tasks=2), batch, params=pair_params)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-7),
               change["encoder"], pair_change["encoder"])



def _uneven_batch(tasks, step, layout):
  """Multi-input: the tasks' own batches, of different sizes and lengths; same-input: one
  batch. Regression targets x30, so per-task gradient norms differ by orders of magnitude."""
  if layout == "same_input":
    batch = make_batch(tasks, batch_size=6, seed=step)
    batch["score"] = batch["score"] * 30.0
    return batch
  batch = {}
  for i, spec in enumerate(tasks):
    task_batch = make_batch((spec,), batch_size=(2, 4, 6)[i], length=(5, 8, 6)[i],
                            seed=10 * step + i)
    if spec.kind == "regression":
      task_batch[spec.label_key] = task_batch[spec.label_key] * 30.0
    batch[spec.name] = task_batch
  return batch


# One case per path with_presence wraps differently (Gram solver on each layout, loss
# weighting with a learned state, Jacobian with its own state, rep-grad); every method's
# masking itself is checked in tests/balancers/test_all_methods.py.
@pytest.mark.parametrize("method,grad_mode,layout", [
    ("mgda", "exact", "multi_input"), ("imtl_g", "exact", "same_input"),
    ("uncertainty", "exact", "multi_input"), ("gradnorm", "exact", "multi_input"),
    ("mgda", "rep", "same_input"),
])
def test_every_task_present_step_equals_the_masked_step(method, grad_mode, layout):
  """Through ``make_train_step`` on a real model (multi-input batches of different sizes and
  lengths, gradients orders of magnitude apart): batches with every task labelled run the
  step compiled without the presence mask, and it takes the masked step's steps (params and
  balancer state) to round-off; a batch lacking a task runs the masked step."""
  tasks = (TASKS[0], TASKS[1], TASKS[2])  # topic, score, pos
  model = MultiTaskModel(TINY, tasks, layout=layout)
  balancer = get(method, num_tasks=3)
  optimizer = optax.sgd(0.01)
  example = _uneven_batch(tasks, 0, layout)
  extra = {}
  if grad_mode == "rep":
    extra["balancer_params"] = jax.eval_shape(
        lambda b: model.encode(model.init(jax.random.PRNGKey(0), b)["encoder"], b), example)
  make = lambda: jax.jit(lambda: create_train_state(model, balancer, optimizer, example, 0,
                                                    **extra))()
  step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode, dropout=False)
  fast, masked = make(), make()
  start = jax.tree.map(np.asarray, fast.params)
  for s in range(3):
    batch = _uneven_batch(tasks, s, layout)
    assert step.jitted_for(batch) is step._fn_every_task_present
    fast, fast_metrics = step(fast, batch)
    masked, masked_metrics = step._fn(masked, batch)
    if "weights" in fast_metrics:  # the same balancing decision, step by step
      np.testing.assert_allclose(fast_metrics["weights"], masked_metrics["weights"],
                                 rtol=1e-5, atol=1e-7)
  assert int(fast.nonfinite_steps) == 0
  # Round-off only: float32 losses near 1e3 (targets x30) make differences of 1e-4
  # relative to a leaf's movement; a wrong weight or task would be of the movement's order.
  for a, b, s0 in zip(jax.tree.leaves(fast.params), jax.tree.leaves(masked.params),
                      jax.tree.leaves(start)):
    moved = np.max(np.abs(np.asarray(a) - s0))
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-3 * moved + 1e-7
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               fast.balancer_state, masked.balancer_state)

  absent = _uneven_batch(tasks, 3, layout)
  (absent["score"] if layout == "multi_input" else absent)["score_mask"][:] = 0
  assert step.jitted_for(absent) is step._fn
  size = step._fn._cache_size()
  fast, metrics = step(fast, absent)
  assert step._fn._cache_size() == size  # the masked step, already compiled for these shapes
  if "weights" in metrics:
    assert float(metrics["weights"][1]) == 0.0

"""Per-task gradients against jax.grad of each task alone and a float64 finite difference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_model import TASKS, TINY, make_batch, task_loss_and_grad
from jmtl import gradients
from jmtl.models import MultiTaskModel


def _assert_tree_close(actual, expected, rtol=2e-5, atol=1e-6):
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected)


def test_same_input_jacobian_equals_grad_of_each_task_alone(model):
  batch = make_batch()
  params = model.init(jax.random.PRNGKey(0), batch)
  result = jax.jit(lambda p, b: gradients.same_input_jacobian(model, p, b))(params, batch)
  assert result.losses.shape == (len(TASKS),)
  for i, spec in enumerate(TASKS):
    _, expected = task_loss_and_grad(model, spec, params, batch)
    _assert_tree_close(jax.tree.map(lambda g: g[i], result.shared), expected["encoder"])
    _assert_tree_close(result.heads[spec.name], expected["heads"][spec.name])
    np.testing.assert_allclose(
        result.losses[i], spec.loss(model.apply(params, batch)[spec.name], batch), rtol=1e-6)


def test_multi_input_jacobian_equals_grad_of_each_task_alone(model):
  model = dataclasses.replace(model, layout="multi_input")
  batches = {spec.name: make_batch((spec,), batch_size=3 + i, length=8, seed=i)
             for i, spec in enumerate(TASKS)}
  params = model.init(jax.random.PRNGKey(1), batches)
  result = jax.jit(lambda p, b: gradients.multi_input_jacobian(model, p, b))(params, batches)
  for i, spec in enumerate(TASKS):
    _, expected = task_loss_and_grad(model, spec, params, batches[spec.name])
    _assert_tree_close(jax.tree.map(lambda g: g[i], result.shared), expected["encoder"])
    _assert_tree_close(result.heads[spec.name], expected["heads"][spec.name])


def test_rep_grad_backward_of_summed_cotangent_equals_summed_jacobian(model):
  batch = make_batch(seed=3)
  params = model.init(jax.random.PRNGKey(2), batch)
  def both(p, b):
    rep = gradients.same_input_representation(model, p, b)
    summed = rep.backward(jax.tree.map(lambda g: g.sum(0), rep.shared))
    return summed, gradients.same_input_jacobian(model, p, b).shared
  summed, jac = jax.jit(both)(params, batch)
  _assert_tree_close(summed, jax.tree.map(lambda g: g.sum(0), jac))


def test_weighted_loss_grads_is_one_backward_of_the_weighted_sum(model):
  batch = make_batch(seed=4)
  params = model.init(jax.random.PRNGKey(3), batch)
  weights = jnp.arange(1.0, len(TASKS) + 1)
  _, w, grads, _ = gradients.weighted_loss_grads(model, params, batch, lambda l: (weights, None))
  expected = jax.grad(lambda p: jnp.dot(weights, gradients.task_losses(model, p, batch)))(params)
  np.testing.assert_array_equal(w, weights)
  _assert_tree_close(grads, expected)


def test_missing_labels_give_zero_loss_and_zero_gradient(model):
  batch = make_batch(seed=5)
  for spec in TASKS[:3]:  # no labels at all for three tasks in this batch
    batch[spec.mask_key] = np.zeros_like(batch[spec.mask_key])
    batch[spec.label_key] = np.full_like(batch[spec.label_key], 10**6 if spec.kind != "regression" else np.nan)
  params = model.init(jax.random.PRNGKey(4), batch)
  result = gradients.same_input_jacobian(model, params, batch)
  for i, spec in enumerate(TASKS):
    row = jax.tree.map(lambda g: g[i], result.shared)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(row))
    if i < 3:
      assert result.losses[i] == 0.0
      assert all(np.all(x == 0) for x in jax.tree.leaves(row))
      assert all(np.all(x == 0) for x in jax.tree.leaves(result.heads[spec.name]))
    else:
      assert result.losses[i] > 0


def test_padding_does_not_change_losses_or_gradients(model):
  """Extra padding columns (masked everywhere) leave every per-task gradient unchanged."""
  tasks = TASKS[:3]  # sentence, regression and token tasks
  small = MultiTaskModel(TINY, tasks)
  batch = make_batch(tasks, length=6, seed=6)
  padded = {k: (np.pad(v, [(0, 0), (0, 4)]) if v.ndim == 2 else v) for k, v in batch.items()}
  params = small.init(jax.random.PRNGKey(5), batch)
  jacobian = jax.jit(lambda p, b: gradients.same_input_jacobian(small, p, b))
  a, b = jacobian(params, batch), jacobian(params, padded)
  np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
  # positions differ only in the rows of unused positions, which get no gradient either way
  _assert_tree_close(b.shared, a.shared, rtol=1e-4, atol=1e-6)


def test_jacobian_matches_float64_finite_difference():
  """Directional derivative of each task loss vs central differences, in float64."""
  with jax.enable_x64(True):
    tasks = TASKS[:3]
    # The encoder computes in its config's dtype: float64 here, or the forward rounds to float32.
    model = MultiTaskModel(dataclasses.replace(TINY, dtype="float64", param_dtype="float64"), tasks)
    batch = make_batch(tasks, batch_size=2, length=5, seed=7)
    batch = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in batch.items()}
    params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.PRNGKey(6), batch))
    result = jax.jit(lambda p: gradients.same_input_jacobian(model, p, batch))(params)
    direction = jax.tree.map(
        lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape, jnp.float64),
        params["encoder"])
    eps = 1e-6
    for i, spec in enumerate(tasks):
      @jax.jit
      def loss_along(t):
        moved = jax.tree.map(lambda p, d: p + t * d, params["encoder"], direction)
        return spec.loss(model.apply({**params, "encoder": moved}, batch)[spec.name], batch)
      numeric = (loss_along(eps) - loss_along(-eps)) / (2 * eps)
      analytic = sum(jnp.vdot(g[i], d) for g, d in
                     zip(jax.tree.leaves(result.shared), jax.tree.leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_rep_grad_rejects_multi_input(model):
  from jmtl.balancers import get
  from jmtl.train.step import balanced_gradients
  model = dataclasses.replace(model, layout="multi_input")
  batches = {spec.name: make_batch((spec,), seed=i) for i, spec in enumerate(TASKS)}
  params = model.init(jax.random.PRNGKey(0), batches)
  balancer = get("pcgrad", num_tasks=len(TASKS))
  with pytest.raises(ValueError, match="rep-grad needs one shared input"):
    balanced_gradients(model, balancer, params, balancer.init(params["encoder"]), batches, None,
                       grad_mode="rep")


@pytest.mark.parametrize("layout", ["same_input", "multi_input"])
def test_compact_token_table_gram_and_gradient_equal_dense(model, layout):
  """The per-token form of the table's per-task gradients gives the dense G and combination."""
  from jmtl.balancers import gram_matrix, weighted_sum
  if layout == "same_input":
    batch = make_batch(seed=8)
    dense_fn, compact_fn = gradients.same_input_jacobian, gradients.same_input_compact_jacobian
  else:  # overlapping and disjoint ids across tasks' batches, tasks' batch sizes differ
    model = dataclasses.replace(model, layout="multi_input")
    batch = {spec.name: make_batch((spec,), batch_size=2 + i, length=5 + i, seed=20 + i)
             for i, spec in enumerate(TASKS)}
    dense_fn, compact_fn = gradients.multi_input_jacobian, gradients.multi_input_compact_jacobian
  params = model.init(jax.random.PRNGKey(9), batch)
  dense = jax.jit(lambda p: dense_fn(model, p, batch))(params)
  compact = jax.jit(lambda p: compact_fn(model, p, batch))(params)
  same = layout == "same_input"
  gram = gram_matrix(compact.shared) + gradients.token_table_gram(
      compact.token_rows, compact.token_ids, same_ids=same)
  np.testing.assert_allclose(gram, gram_matrix(dense.shared), rtol=1e-4, atol=1e-7)
  weights = jnp.linspace(0.5, 2.0, len(TASKS))
  table, _ = gradients.split_token_table(params["encoder"], model.token_table)
  combined = gradients.with_token_table(
      weighted_sum(weights, compact.shared),
      gradients.token_table_gradient(weights, compact.token_rows, compact.token_ids, table.shape,
                                     same_ids=same), model.token_table)
  _assert_tree_close(combined, weighted_sum(weights, dense.shared), rtol=1e-4, atol=1e-7)


def test_rep_grad_rows_name_every_task_whose_feature_gradient_is_nonzero(model):
  # rows is what lets the Gram and the combination skip a head's unread feature: it must
  # leave out only rows that are exactly zero, and keep every row that is not.
  batch = make_batch(seed=11)
  params = model.init(jax.random.PRNGKey(3), batch)
  rep = gradients.same_input_representation(model, params, batch)
  leaves = jax.tree.leaves(rep.shared)
  assert len(rep.rows) == len(leaves) == 2
  for leaf, rows in zip(leaves, rep.rows):
    for task in range(len(TASKS)):
      norm = float(jnp.abs(leaf[task]).sum())
      assert (norm > 0) if task in rows else (norm == 0), (TASKS[task].name, rows)


@pytest.mark.parametrize("names", [None, ("topic", "score")])  # all kinds; sentence-level only
def test_gram_and_combination_over_rows_equal_the_dense_ones(names):
  from jmtl.balancers import gram_matrix, weighted_sum
  tasks = tuple(t for t in TASKS if names is None or t.name in names)
  model = MultiTaskModel(TINY, tasks)
  batch = make_batch(tasks, seed=12)
  params = model.init(jax.random.PRNGKey(4), batch)
  rep = gradients.same_input_representation(model, params, batch)
  weights = jnp.linspace(-1.0, 2.0, len(tasks))
  np.testing.assert_allclose(jax.jit(lambda g: gram_matrix(g, rep.rows))(rep.shared),
                             gram_matrix(rep.shared), rtol=1e-6, atol=1e-9)
  _assert_tree_close(jax.jit(lambda g: weighted_sum(weights, g, rep.rows))(rep.shared),
                     weighted_sum(weights, rep.shared))
  with pytest.raises(ValueError, match="rows names 1 leaves"):
    gram_matrix(rep.shared, rows=[(0,)])

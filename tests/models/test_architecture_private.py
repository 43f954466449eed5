"""What the sharing architectures add to a task's private part beyond its loss: DSelect-k's
entropy regulariser (an auxiliary loss the train step adds outside the balancer) and dropout
in private encoder blocks (keyed per task from the step key, off in evaluation).

References are independent of the model code: the selectors and their entropy from the
paper's formulas in NumPy, losses from ``model.apply`` and the task specs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from jmtl.balancers import get
from jmtl.models import architectures
from jmtl.models.protocol import task_loss_sum
from jmtl.tasks import TaskSpec
from jmtl.train.evaluate import make_eval_fn
from jmtl.train.state import create_train_state
from tiny_model import TINY, make_batch

TASKS = (TaskSpec("topic", "classification", 3), TaskSpec("pos", "tagging", 5),
         TaskSpec("score", "regression"))
GAMMA = 1.0


def build(name, encoder=TINY, **options):
  opts = architectures.Options(**{**dict(expert_width=8, expert_depth=1, num_experts=3,
                                         dselect_k=2, dselect_gamma=GAMMA), **options})
  return architectures.build(name, encoder, TASKS, head_hidden=8, options=opts)


@pytest.fixture(scope="module")
def batch():
  return make_batch(TASKS, batch_size=4, length=8, seed=3)


def reference_entropy(xp, params, batch, weight, num_experts=3, k=2):
  """DSelect-k's Omega from the paper, written out: embeddings -> selector logits z ->
  smooth step -> per-code probabilities (code c -> expert c mod E) -> entropy, summed over
  the non-padding tokens, selectors and tasks. ``xp`` is numpy (value) or jax.numpy (grad)."""
  emb = params["shared"]["embedder"]
  ids, mask = batch["input_ids"], batch["attention_mask"]
  x = emb["token_embedding"]["embedding"][ids] + emb["position_embedding"][:ids.shape[1]]
  x = x + emb["type_embedding"]["embedding"][0]
  bits = 2  # ceil(log2 3)
  total = 0.0
  for name in ("topic", "pos", "score"):
    dense = params["tasks"][name]["selectors"]
    z = (x @ dense["kernel"] + dense["bias"]).reshape(*x.shape[:2], k, bits)
    s = xp.where(z <= -GAMMA / 2, 0.0, xp.where(z >= GAMMA / 2, 1.0,
                                                -2 / GAMMA ** 3 * z ** 3 + 1.5 / GAMMA * z + 0.5))
    per_expert = [0.0] * num_experts
    for code in range(2 ** bits):
      p = 1.0
      for j in range(bits):
        p = p * (s[..., j] if (code >> j) & 1 else 1 - s[..., j])
      per_expert[code % num_experts] = per_expert[code % num_experts] + p
    r = xp.stack(per_expert, -1)  # [B, L, k, E]
    total = total - xp.sum(mask[..., None, None] * r * xp.log(r + 1e-6))
  return weight * total


def _sgd_update(model, batch, state):
  step = jmtl.make_train_step(model, get("equal_weight", len(TASKS)), optax.sgd(1.0),
                              dropout=False, donate=False)
  new_state, metrics = step(state, batch)
  update = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                        state.params, new_state.params)
  return update, metrics


def test_dselect_entropy_is_the_papers_and_moves_only_selectors_and_embeddings(batch):
  """The aux loss equals Omega computed in NumPy; the step's update with the regulariser
  minus the update without it is exactly w * grad(Omega): non-zero at the selectors and
  the embeddings the gate reads, zero at the experts, selector mix and towers."""
  weight = 0.05
  with_reg, without = build("dselect_k", dselect_entropy=weight), build("dselect_k",
                                                                        dselect_entropy=0.0)
  assert without.aux_loss_sum is None
  state = create_train_state(with_reg, get("equal_weight", len(TASKS)), optax.sgd(1.0), batch, 0)
  params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
  expected_value = reference_entropy(np, params64, batch, weight)
  representation = with_reg.encode(state.params["shared"], batch)
  own = state.params["tasks"]
  value = sum(with_reg.aux_loss_sum(n, own[n], representation, batch) for n in with_reg.names)
  np.testing.assert_allclose(float(value), expected_value, rtol=1e-5)

  update_reg, metrics = _sgd_update(with_reg, batch, state)
  update_plain, metrics_plain = _sgd_update(without, batch, state)
  assert "aux_loss" not in metrics_plain
  np.testing.assert_allclose(float(metrics["aux_loss"]), expected_value, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics["losses"]), np.asarray(metrics_plain["losses"]),
                             rtol=1e-6)
  expected = jax.grad(lambda p: reference_entropy(jnp, p, batch, weight))(state.params)
  difference = jax.tree.map(np.subtract, update_reg, update_plain)
  for (path, d), e in zip(jax.tree_util.tree_leaves_with_path(difference),
                          jax.tree.leaves(expected)):
    np.testing.assert_allclose(d, np.asarray(e, np.float64), atol=2e-6, rtol=1e-3,
                               err_msg=jax.tree_util.keystr(path))
  # well above the tolerance where the term reaches; the zeros (towers, experts, selector
  # mix) are checked to 2e-6 above (two compiled programs: float noise, not exact zeros)
  for n in with_reg.names:
    assert np.abs(difference["tasks"][n]["selectors"]["kernel"]).max() > 1e-3, n
  assert np.abs(difference["shared"]["embedder"]["token_embedding"]["embedding"]).max() > 1e-5


def test_dselect_entropy_weight_is_validated():
  with pytest.raises(ValueError, match="entropy weight -1.0"):
    build("dselect_k", dselect_entropy=-1.0)


DROPOUT = dataclasses.replace(TINY, dropout=0.3, attention_dropout=0.3)
PRIVATE_BLOCKS = ("soft", "cgc", "ple")  # architectures whose private part holds encoder blocks


@pytest.mark.parametrize("name", architectures.NAMES)
def test_private_dropout_is_keyed_and_only_where_private_blocks_are(name, batch):
  """On a fixed (deterministic) representation, the engine's per-task loss call: two keys
  give different losses exactly for the architectures with private encoder blocks; no key
  is deterministic and equals evaluation's ``model.apply`` without a key."""
  model = build(name, DROPOUT)
  params = model.init(jax.random.PRNGKey(0), batch)
  representation = model.encode(params[model.shared_key], batch)
  own = params[model.task_key]

  @jax.jit
  def losses(rng):
    return jnp.stack([task_loss_sum(model, i, own[n], representation, batch, rng)
                      for i, n in enumerate(model.names)])

  a, b = losses(jax.random.PRNGKey(1)), losses(jax.random.PRNGKey(2))
  off, again = losses(None), losses(None)
  np.testing.assert_array_equal(off, again)
  outputs = model.apply(params, batch)
  reference = [spec.loss_sum(outputs[spec.name], batch)[0] for spec in TASKS]
  np.testing.assert_allclose(off, reference, rtol=1e-5)
  if name in PRIVATE_BLOCKS:
    assert np.all(np.asarray(a) != np.asarray(b))
  else:
    np.testing.assert_array_equal(a, b)


# private blocks through the Gram path and the loss-only path; shared-only dropout (mmoe)
@pytest.mark.parametrize("name,method", [("soft", "upgrad"), ("ple", "equal_weight"),
                                         ("mmoe", "equal_weight")])
def test_train_dropout_changes_with_the_step_and_eval_is_deterministic(name, method, batch):
  """The step's losses are those of ``model.apply`` with key ``fold_in(state.rng, step)``
  (the private parts keyed per task as ``apply`` keys them), so they differ between steps 0
  and 1 on the same params and batch; evaluation gives the same outputs every time, those
  of no key."""
  model = build(name, DROPOUT)
  balancer = get(method, len(TASKS))
  state = create_train_state(model, balancer, optax.sgd(0.0), batch, 0)
  step = jmtl.make_train_step(model, balancer, optax.sgd(0.0), donate=False)
  at = lambda s: step(state.replace(step=jnp.asarray(s, state.step.dtype)), batch)[1]["losses"]
  first, second = np.asarray(at(0)), np.asarray(at(1))
  assert np.all(first != second)

  def applied(key):
    outputs = model.apply(state.params, batch, key)
    return [float(t.loss_sum(outputs[t.name], batch)[0] / t.loss_sum(outputs[t.name], batch)[1])
            for t in TASKS]
  np.testing.assert_allclose(first, applied(jax.random.fold_in(state.rng, 0)), rtol=1e-4)
  np.testing.assert_allclose(second, applied(jax.random.fold_in(state.rng, 1)), rtol=1e-4)

  eval_fn = make_eval_fn(model)
  names = tuple(model.names)
  once, twice = eval_fn(state.params, batch, names), eval_fn(state.params, batch, names)
  deterministic = model.apply(state.params, batch)
  for n in names:
    np.testing.assert_array_equal(once[n][1], twice[n][1])
    np.testing.assert_allclose(once[n][1], TASKS[names.index(n)].loss_sum(deterministic[n],
                                                                          batch)[0], rtol=1e-5)

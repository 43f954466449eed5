"""Sharing architectures: shapes, which parameters each task's loss reaches, soft sharing's
penalty, the expert gates, and train steps through ``jmtl.make_train_step`` checked against
gradients computed independently from ``model.apply`` and the task losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from jmtl.balancers import get
from jmtl.models import MultiTaskModel, architectures
from jmtl.models.architectures.dselect import selector_weights, smooth_step
from jmtl.tasks import TaskSpec
from jmtl.train.state import create_train_state
from tiny_model import TINY, make_batch

TASKS = (TaskSpec("topic", "classification", 3), TaskSpec("pos", "tagging", 5),
         TaskSpec("score", "regression"))
# No DSelect-k entropy term here: these tests compare updates with task-loss gradients alone
# (the term is tested in test_architecture_private.py).
OPTIONS = architectures.Options(expert_width=8, expert_depth=1, num_experts=3, dselect_k=2,
                                ple_layers=2, soft_strength=0.5, dselect_entropy=0.0)
GATED = ("mmoe", "cgc", "ple", "dselect_k")


def build(name, **options):
  opts = architectures.Options(**{**OPTIONS.__dict__, **options})
  return architectures.build(name, TINY, TASKS, head_hidden=8, options=opts)


def f64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(f64(tree))])


_REFERENCES = {}  # (model, batch id) -> (params, grads): the step tests share the seed-0 params


def task_loss_grads(model, params, batch):
  """Per task, the gradient of its mean loss w.r.t. ALL params, from ``model.apply`` and the
  task specs alone (not the engine's gradient code). Computed (and compiled) once per model,
  batch and params: the equal-weight and Gram step tests of an architecture start from the
  same state."""
  key = (model, id(batch))
  if key in _REFERENCES:
    cached_params, cached = _REFERENCES[key]
    if all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cached_params),
                                                 jax.tree.leaves(params))):
      return cached
  _REFERENCES[key] = (params, _task_loss_grads(model, params, batch))
  return _REFERENCES[key][1]


def _task_loss_grads(model, params, batch):
  @jax.jit
  def grads(p):
    def loss(p, spec):
      out = model.apply(p, batch)[spec.name]
      total, count = spec.loss_sum(out, batch)
      return total / jnp.maximum(count, 1.0)
    return [jax.grad(loss)(p, spec) for spec in TASKS]
  return [f64(g) for g in grads(params)]


@pytest.fixture(scope="module")
def batch():
  return make_batch(TASKS, batch_size=4, length=8, seed=3)


@pytest.mark.parametrize("name", architectures.NAMES)
def test_outputs_per_task_have_the_hard_sharing_shapes(name, batch):
  model = build(name)
  params = model.init(jax.random.PRNGKey(0), batch)
  out = model.apply(params, batch)
  assert sorted(out) == sorted(s.name for s in TASKS)
  assert out["topic"].shape == (4, 3) and out["pos"].shape == (4, 8, 5)
  assert out["score"].shape == (4,)
  assert set(params) == {model.shared_key, model.task_key}
  assert sorted(params[model.task_key]) == sorted(s.name for s in TASKS)


def test_unknown_architecture_names_the_closest():
  with pytest.raises(ValueError, match="did you mean 'mmoe'"):
    architectures.build("mmeo", TINY, TASKS)


def _step(model, method, grad_mode="exact"):
  return jmtl.make_train_step(model, get(method, len(TASKS)), optax.sgd(1.0), grad_mode=grad_mode,
                              dropout=False, donate=False)


def _state(model, method, batch):
  return create_train_state(model, get(method, len(TASKS)), optax.sgd(1.0), batch, 0)


def _update(state, new_state):
  """-(new - old) = the gradient the step applied (SGD, lr 1)."""
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                      state.params, new_state.params)


def _penalty_grad(model, params):
  """Soft sharing's closed form lambda (theta_t - mean_s theta_s), zero elsewhere."""
  zero = jax.tree.map(np.zeros_like, f64(params))
  if not isinstance(model, architectures.SoftSharing):
    return zero
  columns = [f64(params[model.task_key][n]["encoder"]) for n in model.names]
  mean = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *columns)
  for n, column in zip(model.names, columns):
    zero[model.task_key][n]["encoder"] = jax.tree.map(
        lambda x, m: model.strength * (x - m), column, mean)
  return zero


# The loss path is one backward of sum_i w_i L_i, so an architecture enters only through its
# apply, whose per-task gradients the Gram test below checks for all eight. Kept here: soft
# sharing (its penalty is added outside the task losses), PLE (the deepest private/shared
# mix) and DSelect-k (gates from its own selectors); the other five cost ~20 s each in CI.
@pytest.mark.parametrize("name", ["soft", "ple", "dselect_k"])
def test_equal_weight_step_is_the_weighted_loss_gradient(name, batch):
  """Every parameter moves by sum_i w_i grad(loss_i) (+ soft sharing's penalty gradient)."""
  model = build(name)
  state = _state(model, "equal_weight", batch)
  new_state, metrics = _step(model, "equal_weight")(state, batch)
  weights = np.asarray(metrics["weights"], np.float64)
  np.testing.assert_allclose(weights, weights[0])
  grads = task_loss_grads(model, state.params, batch)
  expected = jax.tree.map(lambda *g: sum(w * x for w, x in zip(weights, g)), *grads)
  expected = jax.tree.map(np.add, expected, _penalty_grad(model, state.params))
  np.testing.assert_allclose(flat(_update(state, new_state)), flat(expected), rtol=2e-3,
                             atol=2e-6)


# rep-grad for the representations of every shape: one leaf (soft), per-task leaves
# (cross_stitch), per-task plus shared leaves (ple), experts plus embeddings (dselect_k)
@pytest.mark.parametrize("name,grad_mode", [(n, "exact") for n in architectures.NAMES] + [
    (n, "rep") for n in ("soft", "cross_stitch", "ple", "dselect_k")])
def test_gram_step_combines_independent_task_gradients(name, grad_mode, batch):
  """UPGrad: the shared params move by sum_i w_i g_i (w as applied), each task's private
  params by its own gradient; in exact mode the logged cosines are those of the g_i."""
  model = build(name)
  state = _state(model, "upgrad", batch)
  new_state, metrics = _step(model, "upgrad", grad_mode)(state, batch)
  weights = np.asarray(metrics["weights"], np.float64)
  grads = task_loss_grads(model, state.params, batch)
  update = _update(state, new_state)
  penalty = _penalty_grad(model, state.params)
  shared = [flat(g[model.shared_key]) for g in grads]
  np.testing.assert_allclose(flat(update[model.shared_key]),
                             sum(w * g for w, g in zip(weights, shared)), rtol=2e-3, atol=2e-6)
  for i, n in enumerate(model.names):
    own = jax.tree.map(np.add, grads[i][model.task_key][n], penalty[model.task_key][n])
    np.testing.assert_allclose(flat(update[model.task_key][n]), flat(own), rtol=2e-3, atol=2e-6)
  if grad_mode == "exact":
    J = np.stack(shared)
    norms = np.linalg.norm(J, axis=1)
    np.testing.assert_allclose(np.asarray(metrics["cosines"]), J @ J.T / np.outer(norms, norms),
                               atol=1e-4)


@pytest.mark.parametrize("name", architectures.NAMES)
def test_a_task_loss_moves_only_its_own_private_params(name, batch):
  """Only ``pos`` is labelled: the other tasks' private params stay exactly where they were,
  while ``pos``'s own and the shared params move."""
  model = build(name, soft_strength=0.0)
  only_pos = dict(batch, topic_mask=np.zeros(4, np.float32), score_mask=np.zeros(4, np.float32))
  state = _state(model, "equal_weight", only_pos)
  new_state, _ = _step(model, "equal_weight")(state, only_pos)
  update = _update(state, new_state)
  for n in ("topic", "score"):
    assert not np.any(flat(update[model.task_key][n])), n
  assert np.any(flat(update[model.task_key]["pos"]))
  assert np.any(flat(update[model.shared_key]))


def test_cross_stitch_columns_are_shared(batch):
  """Through the cross-stitch units one task's loss reaches every task's column."""
  model = build("cross_stitch")
  params = model.init(jax.random.PRNGKey(0), batch)
  grads = task_loss_grads(model, params, batch)[0][model.shared_key]
  kernel = grads["block_0"]["mlp_in"]["kernel"]  # [T, ...]: one row per column
  assert all(np.any(kernel[t]) for t in range(len(TASKS)))


def test_soft_penalty_gradient_is_its_closed_form(batch):
  model = build("soft", soft_strength=0.3)
  params = model.init(jax.random.PRNGKey(1), batch)
  columns = [f64(params[model.task_key][n]["encoder"]) for n in model.names]
  value = 0.5 * 0.3 * sum(
      np.sum((np.stack(xs) - np.mean(xs, axis=0)) ** 2)
      for xs in zip(*[jax.tree.leaves(c) for c in columns]))
  np.testing.assert_allclose(float(model.penalty(params)), value, rtol=1e-4)
  np.testing.assert_allclose(flat(jax.grad(model.penalty)(params)),
                             flat(_penalty_grad(model, params)), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", GATED)
def test_gates_are_distributions_over_the_experts(name, batch):
  model = build(name)
  params = model.init(jax.random.PRNGKey(2), batch)
  representation = model.encode(params[model.shared_key], batch)
  experts = {"mmoe": 3, "dselect_k": 3, "cgc": 3, "ple": 3}[name]  # cgc/ple: 2 shared + 1 own
  for n in model.names:
    gate = np.asarray(model.gate_weights(n, params[model.task_key][n], representation, batch))
    assert gate.shape == (4, 8, experts)
    assert np.all(gate >= 0)
    np.testing.assert_allclose(gate.sum(-1), 1.0, atol=1e-5)


def test_smooth_step_matches_the_paper():
  gamma = 2.0
  t = np.linspace(-2, 2, 41)
  expected = np.where(t <= -1, 0, np.where(t >= 1, 1, -2 / gamma ** 3 * t ** 3 + 1.5 / gamma * t + 0.5))
  np.testing.assert_allclose(np.asarray(smooth_step(jnp.asarray(t), gamma)), expected, atol=1e-6)
  # S is continuous with zero slope at the edges: the cubic reaches 0 and 1 there
  np.testing.assert_allclose(np.asarray(smooth_step(jnp.asarray([-1.0, 1.0]) * (1 - 1e-7), gamma)),
                             [0, 1], atol=1e-6)


@pytest.mark.parametrize("num_experts", [3, 4, 5])
def test_dselect_selectors_become_one_hot_as_gamma_shrinks(num_experts, batch):
  """Same selector logits, smaller gamma: each selector converges to one expert and the gate
  to at most k experts; at every gamma each selector is a distribution."""
  z = jax.random.normal(jax.random.PRNGKey(4), (64, 2, 3 if num_experts > 4 else 2)) * 0.3
  spread = []
  for gamma in (4.0, 1.0, 0.1, 1e-4):
    w = np.asarray(selector_weights(z, gamma, num_experts))
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    spread.append(np.mean(1 - w.max(-1)))
  assert spread[0] > spread[1] > spread[2] >= spread[3]
  assert spread[3] == 0.0  # one-hot once |z| >= gamma/2 everywhere
  model = build("dselect_k", num_experts=num_experts, dselect_k=2, dselect_gamma=1e-4)
  params = model.init(jax.random.PRNGKey(5), batch)
  params = jax.tree.map(lambda x: x * 100, params)  # logits away from the tiny smooth region
  representation = model.encode(params[model.shared_key], batch)
  gate = np.asarray(model.gate_weights("topic", params[model.task_key]["topic"], representation,
                                       batch))
  np.testing.assert_allclose(gate.sum(-1), 1.0, atol=1e-5)
  assert np.all((gate > 0).sum(-1) <= 2)
  selectors = np.asarray(model.gate_weights("topic", params[model.task_key]["topic"],
                                            representation, batch, method="selectors"))
  np.testing.assert_array_equal(selectors.max(-1), 1.0)

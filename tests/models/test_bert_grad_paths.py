"""The loaded BERT through ``jmtl.make_train_step``, one method per gradient path (loss-only,
compact Gram, exact Jacobian, rep-grad), against float64 references written here: per-task
``jax.grad`` of a masked cross-entropy taken from the heads' logits, combined by NumPy
versions of the methods (constant weights, PCGrad in index order, coordinate-wise median).

The optimizer keeps the gradient it was given in its state, so the test reads exactly what the
step applied, not a difference of parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from bert_reference import tiny_tensors, write_checkpoint
from jmtl import pretrained
from jmtl.models import MultiTaskModel
from jmtl.tasks import TaskSpec
from jmtl.train.state import create_train_state

TASKS = (TaskSpec("tags", "tagging", 5), TaskSpec("topic", "classification", 3),
         TaskSpec("mood", "classification", 4))
WEIGHTS = (0.2, 0.5, 1.3)


def _batch(seed=2):  # seed 2 with head key 0: PCGrad projects in both parameter and rep space
  rng = np.random.default_rng(seed)
  lengths = np.array([8, 5, 7, 3, 6, 8])
  mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
  return {"input_ids": (rng.integers(5, 40, mask.shape) * mask).astype(np.int32),
          "attention_mask": mask,
          "tags": rng.integers(0, 5, mask.shape).astype(np.int32),
          "tags_mask": (mask * (rng.random(mask.shape) < 0.8)).astype(np.float32),
          "topic": rng.integers(0, 3, 6).astype(np.int32),
          "topic_mask": np.array([1, 1, 0, 1, 1, 1], np.float32),
          "mood": rng.integers(0, 4, 6).astype(np.int32),
          "mood_mask": np.ones(6, np.float32)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("bert")
  directory = write_checkpoint(root / "m", tiny_tensors(seed=7), prefix="bert.")
  loaded = pretrained.load(str(directory), pooling="pooler", dropout=0.0, attention_dropout=0.0,
                           data_dir=root / "data", log=lambda m: None)
  model = MultiTaskModel(loaded.config, TASKS, head_hidden=8)
  batch = _batch()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  params = {**params, "encoder": pretrained.with_pretrained(params["encoder"], loaded.params)}
  params = jax.tree.map(np.asarray, params)
  return model, batch, params, _reference(model, params, batch)


def _reference(model, params, batch):
  """Float64: per-task gradients of the shared params and of each task's head, the per-task
  gradients w.r.t. the encoder outputs, and the encoder's VJP to map a cotangent back."""
  def loss(spec, head, features, b):
    logits = model.head(spec, head, features)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), b[spec.name][..., None], -1)[..., 0]
    mask = b[spec.name + "_mask"]
    return jnp.sum(nll * mask) / jnp.sum(mask)

  def per_task(p, b):
    features = model.encode(p["encoder"], b)
    shared, heads, rep = [], [], []
    for spec in TASKS:
      f = lambda e, h, spec=spec: loss(spec, h, model.encode(e, b), b)
      g_enc, g_head = jax.grad(f, argnums=(0, 1))(p["encoder"], p["heads"][spec.name])
      shared.append(g_enc)
      heads.append(g_head)
      rep.append(jax.grad(lambda z, spec=spec: loss(spec, p["heads"][spec.name], z, b))(features))
    return shared, heads, rep

  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    b64 = {k: jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else jnp.asarray(v)
           for k, v in batch.items()}
    shared, heads, rep = jax.tree.map(np.asarray, jax.jit(per_task)(p64, b64))

  def back(cotangent):
    with jax.enable_x64(True):
      p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
      b64 = {k: jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else jnp.asarray(v)
             for k, v in batch.items()}
      vjp = lambda e, c: jax.vjp(lambda e: model.encode(e, b64), e)[1](c)[0]
      return jax.tree.map(np.asarray, jax.jit(vjp)(p64["encoder"], cotangent))
  return shared, heads, rep, back


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _pcgrad(vectors):
  """PCGrad (Yu et al. 2020) visiting the other tasks in index order, mean of the results,
  and whether any projection happened."""
  projected, conflicts = [], 0
  for i, g in enumerate(vectors):
    g = g.copy()
    for j, other in enumerate(vectors):
      if j != i and g @ other < 0:
        g -= (g @ other) / (other @ other) * other
        conflicts += 1
    projected.append(g)
  return np.mean(projected, axis=0), conflicts


def _unflatten(vector, like):
  leaves, treedef = jax.tree.flatten(like)
  sizes = np.cumsum([x.size for x in leaves])[:-1]
  return treedef.unflatten([v.reshape(x.shape) for v, x in zip(np.split(vector, sizes), leaves)])


def _expected(method, grad_mode, model, reference):
  """(shared gradient, {task: head gradient}) that ``method`` should apply."""
  shared, heads, rep, back = reference
  own = dict(zip(model.names, heads))
  if method == "constant":  # loss path: one backward of sum_i w_i L_i, heads weighted too
    combined = jax.tree.map(lambda *g: sum(w * x for w, x in zip(WEIGHTS, g)), *shared)
    return combined, {n: jax.tree.map(lambda x, w=w: w * x, h) for n, w, h in
                      zip(model.names, WEIGHTS, heads)}
  if method == "pcgrad" and grad_mode == "exact":  # whole shared vector, the token table included
    combined, conflicts = _pcgrad([_flat(g) for g in shared])
    assert conflicts > 0, "no conflicting pair: PCGrad would be the mean, pick another batch"
    return _unflatten(combined, shared[0]), own
  if method == "trimmed_mean":  # trim 1 of 3: the coordinate-wise median
    return jax.tree.map(lambda *g: np.median(np.stack(g), axis=0), *shared), own
  # rep: PCGrad on the gradients w.r.t. the encoder outputs, then one backward.
  combined, conflicts = _pcgrad([_flat(g) for g in rep])
  assert conflicts > 0, "no conflicting pair at the representation"
  return back(_unflatten(combined, rep[0])), own


def _keep_gradient():
  """An optimizer that takes no step and keeps the last gradient as its state."""
  return optax.GradientTransformation(
      init=lambda p: jax.tree.map(jnp.zeros_like, p),
      update=lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


@pytest.mark.parametrize("method,grad_mode,needs", [
    ("constant", "exact", "losses"), ("pcgrad", "exact", "gram"),
    ("trimmed_mean", "exact", "jacobian"), ("pcgrad", "rep", "gram")])
def test_each_gradient_path_matches_float64_per_task_grads(setup, method, grad_mode, needs):
  model, batch, params, reference = setup
  hparams = {"constant": {"weights": WEIGHTS}, "pcgrad": {"random_order": False},
             "trimmed_mean": {"trim_number": 1}}[method]
  balancer = jmtl.balancers.get(method, len(TASKS), **hparams)
  assert balancer.needs == needs
  optimizer = _keep_gradient()
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0))()
  state = state.replace(params=jax.tree.map(jnp.asarray, params))
  step = jmtl.make_train_step(model, balancer, optimizer, grad_mode=grad_mode, dropout=False)
  state, metrics = step(state, batch)
  assert bool(metrics["finite"])
  got = jax.tree.map(np.asarray, state.opt_state)
  shared, heads = _expected(method, grad_mode, model, reference)
  scale = max(np.max(np.abs(_flat(shared))), 1e-3)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got["encoder"])[0],
                          jax.tree.leaves(shared)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=f"{method}/{grad_mode} encoder{jax.tree_util.keystr(path)}")
  for name in model.names:
    for a, b in zip(jax.tree.leaves(got["heads"][name]), jax.tree.leaves(heads[name])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{method} head {name}")
  # The token table's gradient is not all zero (it is the compact path's special case).
  assert np.max(np.abs(got["encoder"]["token_embedding"]["embedding"])) > 1e-4

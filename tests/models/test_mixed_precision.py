"""Mixed precision (``model.dtype`` / ``model.param_dtype``, ``jmtl.models.precision``).

What is checked, on both encoders, every sharing architecture and the train step:
params stay float32 under a bfloat16 compute dtype; every matmul of the forward and backward
runs on bfloat16 operands; softmaxes, LayerNorm statistics, pools and losses are float32
(every exp, log, rsqrt and reduction of the forward is on float32); balancers receive float32
per-task gradients (and G) whatever the params or the representation are stored in; and a
bfloat16 run of ``train_and_evaluate`` tracks the float32 run's losses.
"""

import collections
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import balancers
from jmtl.config import ConfigError
from jmtl.gradients import task_losses
from jmtl.models import BertConfig, MultiTaskModel, architectures
from jmtl.train import grad_paths, loop
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state
from tiny_model import TASKS, TINY, make_batch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "train"))
from test_loop import tiny_config  # noqa: E402
from tiny_suite import write_tiny_suite  # noqa: E402

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
BERT = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                  max_length=16, dropout=0.0, attention_dropout=0.0)
ENCODERS = {"transformer": TINY, "bert": BERT}
# Primitives whose precision matters: softmax (exp, reduce_max, reduce_sum), LayerNorm
# statistics (reduce_sum, rsqrt), pools (reduce_sum), losses (log, exp, reduce_sum).
FLOAT32_PRIMITIVES = ("exp", "log", "rsqrt", "reduce_sum", "reduce_max")


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def _operand_dtypes(fn, *args):
  """({primitive: Counter of its floating operands' dtypes} over every equation of ``fn``,
  the dtypes of ``fn``'s outputs), from one trace (nothing runs)."""
  closed = jax.make_jaxpr(fn)(*args)
  found = collections.defaultdict(collections.Counter)
  for eqn in _equations(closed.jaxpr):
    for var in eqn.invars:
      dtype = getattr(getattr(var, "aval", None), "dtype", None)
      if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        found[eqn.primitive.name][jnp.dtype(dtype)] += 1
  return found, {jnp.dtype(aval.dtype) for aval in closed.out_avals}


def _bf16(encoder, **kwargs):
  return dataclasses.replace(encoder, dtype="bfloat16", **kwargs)


def _dtypes_of(tree):
  return {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)}


def _check_mixed_precision(model, params, batch):
  """The forward of every task loss, and its value and gradient, traced (nothing runs): see
  the module docstring. ``params`` may be shapes (``jax.eval_shape`` of ``model.init``)."""
  assert _dtypes_of(params) == {F32}
  rng = jax.random.PRNGKey(1)
  loss = lambda p: jnp.sum(task_losses(model, p, batch, rng))
  forward, _ = _operand_dtypes(loss, params)
  assert forward["dot_general"] and set(forward["dot_general"]) == {BF16}, forward["dot_general"]
  for name in FLOAT32_PRIMITIVES:
    assert set(forward.get(name, {F32: 0})) == {F32}, (name, forward[name])
  backward, outputs = _operand_dtypes(jax.value_and_grad(loss), params)
  assert set(backward["dot_general"]) == {BF16}, backward["dot_general"]
  assert outputs == {F32}  # the loss and every param's gradient


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_bf16_encoders_keep_float32_params_and_islands_and_track_float32(encoder):
  batch = make_batch()
  reference = MultiTaskModel(ENCODERS[encoder], TASKS)
  model = MultiTaskModel(_bf16(ENCODERS[encoder]), TASKS)
  shapes = lambda m: jax.eval_shape(m.init, jax.random.PRNGKey(0), batch)
  assert shapes(model) == shapes(reference)  # float32 master weights, same tree
  # The float32 model has no bfloat16 anywhere: the dtype is what changes the trace.
  plain, _ = _operand_dtypes(lambda p: task_losses(reference, p, batch), shapes(reference))
  assert all(set(counts) == {F32} for counts in plain.values())
  _check_mixed_precision(model, shapes(model), batch)
  assert _dtypes_of(jax.eval_shape(model.apply, shapes(model), batch)) == {F32}
  # Activations are bfloat16 up to the heads (whose outputs are float32).
  tokens, pooled = jax.eval_shape(model.encode, shapes(model)["encoder"], batch)
  assert tokens.dtype == pooled.dtype == BF16
  # Same params, same batch: bfloat16 rounding moves each loss by well under 2%.
  params = jax.jit(reference.init)(jax.random.PRNGKey(0), batch)
  losses = lambda m: jax.jit(lambda p: task_losses(m, p, batch))(params)
  np.testing.assert_allclose(losses(model), losses(reference), rtol=2e-2)


@pytest.mark.parametrize("name", architectures.NAMES)
def test_every_architecture_computes_in_bf16_with_float32_params_and_losses(name):
  batch = make_batch()
  model = architectures.build(name, _bf16(TINY), TASKS,
                              options=architectures.Options(expert_width=8, expert_depth=1,
                                                            num_experts=2))
  _check_mixed_precision(model, jax.eval_shape(model.init, jax.random.PRNGKey(0), batch), batch)


def _recording(balancer, seen):
  """``balancer`` whose entry points note the dtypes they are handed (at trace time)."""
  def update(task_grads, *args, **kwargs):
    seen.append(("update", _dtypes_of(task_grads)))
    return balancer.update(task_grads, *args, **kwargs)
  def weigh_gram(gram, *args, **kwargs):
    seen.append(("weigh_gram", _dtypes_of(gram)))
    return balancer.weigh_gram(gram, *args, **kwargs)
  return balancer._replace(update=update,
                           weigh_gram=weigh_gram if balancer.weigh_gram else None)


@pytest.mark.parametrize("method,grad_mode,param_dtype", [
    ("graddrop", "exact", "bfloat16"),  # per-task gradients of bfloat16 params, cast up
    ("mgda", "exact", "bfloat16"),  # the compact Gram path: bfloat16 token rows
    ("graddrop", "rep", "float32"),  # gradients w.r.t. the bfloat16 representation
    ("mgda", "rep", "float32"),
])
def test_balancers_receive_float32_through_make_train_step(method, grad_mode, param_dtype):
  batch = make_batch()
  model = MultiTaskModel(_bf16(TINY, param_dtype=param_dtype), TASKS)
  seen = []
  balancer = _recording(balancers.get(method, len(TASKS)), seen)
  optimizer = optax.adam(1e-2)  # large enough to move bfloat16-stored weights
  rep = None
  if grad_mode == "rep":
    rep = jax.eval_shape(lambda: model.encode(model.init(jax.random.PRNGKey(0), batch)["encoder"],
                                              batch))
  state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch, 0, rep))()
  assert _dtypes_of(state.params) == {jnp.dtype(param_dtype)}
  step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode, donate=False)
  new_state, metrics = step(state, batch)
  assert seen and all(dtypes == {F32} for _, dtypes in seen), seen
  assert {entry for entry, _ in seen} == {"weigh_gram" if balancer.needs == "gram" else "update"}
  assert metrics["losses"].dtype == F32 and bool(metrics["finite"])
  # The step keeps every stored dtype (params and the optimizer's moments) and moves them.
  assert jax.tree.map(lambda x: x.dtype, new_state.params) == \
      jax.tree.map(lambda x: x.dtype, state.params)
  assert jax.tree.map(lambda x: x.dtype, new_state.opt_state) == \
      jax.tree.map(lambda x: x.dtype, state.opt_state)
  assert not np.array_equal(new_state.params["encoder"]["pooler"]["kernel"],
                            state.params["encoder"]["pooler"]["kernel"])


def test_bf16_gram_matches_the_float32_gram():
  """The G a Gram balancer weighs, from the bfloat16 model's per-task gradients, against the
  float32 model's on the same params and batch (the compact path, token rows included), on
  the scale sqrt(G_ii G_jj) of the float32 G: within 0.05."""
  batch = make_batch()
  reference = MultiTaskModel(TINY, TASKS)
  params = reference.init(jax.random.PRNGKey(0), batch)
  balancer = balancers.get("mgda", len(TASKS))
  state = balancer.init(params["encoder"])
  grams = [jax.jit(lambda p, m=m: grad_paths.gram(m, balancer, p, state, batch, None).gram)(params)
           for m in (reference, MultiTaskModel(_bf16(TINY), TASKS))]
  assert grams[1].dtype == F32
  scale = np.sqrt(np.outer(np.diag(grams[0]), np.diag(grams[0])))
  # Measured: every entry within 0.033 of the float32 one on this scale (the regression
  # task's squared norm moves most); 0.05 leaves room for other seeds.
  np.testing.assert_allclose(grams[1] / scale, grams[0] / scale, atol=5e-2)


def test_dtype_keys_are_checked_before_any_build(tmp_path):
  config = tiny_config(write_tiny_suite(str(tmp_path)), str(tmp_path / "data"))
  config.model.dtype = "bf16"
  with pytest.raises(ConfigError, match="model.dtype 'bf16': use one of float32, bfloat16"):
    loop.validate_config(config)
  config.model.dtype, config.model.param_dtype = "bfloat16", "float16"
  with pytest.raises(ConfigError, match="model.param_dtype 'float16'"):
    loop.validate_config(config)
  with pytest.raises(ValueError, match="BERT dtype 'float16'"):
    dataclasses.replace(BERT, dtype="float16")
  # float64 is for reference checks on modules (test_gradients), never a run config's choice.
  dataclasses.replace(BERT, dtype="float64")
  config.model.dtype, config.model.param_dtype = "float64", "float32"
  with pytest.raises(ConfigError, match="model.dtype 'float64'"):
    loop.validate_config(config)


def _train_losses(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in records if r["split"] == "train"]
  return np.array([[r["losses"][t] for t in ("ner", "topic", "lm")] for r in train])


def test_bf16_run_tracks_the_float32_run(tmp_path):
  """30 steps of ``train_and_evaluate`` on the tiny suite (PCGrad, dropout on), float32 and
  bfloat16 compute from the same init and batches: every logged per-task loss within 5%
  (plus 0.02 absolute, for losses near zero)."""
  path = write_tiny_suite(str(tmp_path / "suite"))
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(path, str(tmp_path / "data"), steps=30, log_every=3, eval_every=0,
                         checkpoint_every=30)
    config.balancer.name = "pcgrad"
    config.model.dtype = dtype
    result = loop.train_and_evaluate(config, str(tmp_path / dtype), out=open(os.devnull, "w"))
    runs[dtype] = (_train_losses(str(tmp_path / dtype)), result)
  (f32, _), (bf16, bf16_result) = runs["float32"], runs["bfloat16"]
  assert f32.shape == bf16.shape == (10, 3) and bf16_result["step"] == 30
  # The float32 run learns (batches of 4: compare the first and last three logs), so
  # tracking it means something.
  assert f32[-3:].sum(1).mean() < f32[:3].sum(1).mean()
  np.testing.assert_allclose(bf16, f32, rtol=5e-2, atol=2e-2)

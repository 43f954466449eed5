"""dense_dot_general: the same values and derivatives as lax.dot_general, in every AD mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jmtl.models.matmul import dense_dot_general, fused_projections

# (lhs shape, rhs shape, contracting dims): Dense, attention q/k/v, attention output.
WIDENING_FORMS = {
    "dense": ((2, 5, 3), (3, 7), ((2,), (0,))),
    "qkv": ((2, 5, 4), (4, 2, 3), ((2,), (0,))),
    "attention_out": ((2, 5, 2, 3), (2, 3, 6), ((2, 3), (0, 1))),
}


def _operands(lhs_shape, rhs_shape, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(lhs_shape).astype(np.float32),
          rng.standard_normal(rhs_shape).astype(np.float32))


def _as_matrices(lhs, rhs, n):
  """float64 [N, K] and [K, M] views of a dense-form product with n contracting axes."""
  k = int(np.prod(rhs.shape[:n]))
  return np.asarray(lhs, np.float64).reshape(-1, k), np.asarray(rhs, np.float64).reshape(k, -1)


def _uses_custom_rule(fn, *args) -> bool:
  return "custom_jvp_call" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("form", sorted(WIDENING_FORMS))
def test_values_gradients_and_jacobian_match_float64(form):
  lhs_shape, rhs_shape, contract = WIDENING_FORMS[form]
  lhs, rhs = _operands(lhs_shape, rhs_shape)
  dims = (contract, ((), ()))
  product = lambda a, b: dense_dot_general(a, b, dims)
  assert _uses_custom_rule(product, lhs, rhs)

  x, w = _as_matrices(lhs, rhs, len(contract[0]))
  out = product(lhs, rhs)
  np.testing.assert_allclose(np.asarray(out).reshape(x.shape[0], -1), x @ w, rtol=1e-5, atol=1e-5)

  # vmap over vjp, as the exact per-task Jacobian uses it: three cotangents at once.
  cotangents = np.random.default_rng(1).standard_normal((3,) + out.shape).astype(np.float32)
  _, vjp = jax.vjp(product, lhs, rhs)
  d_lhs, d_rhs = jax.jit(jax.vmap(vjp))(cotangents)
  for t in range(3):
    g = cotangents[t].astype(np.float64).reshape(x.shape[0], -1)
    np.testing.assert_allclose(np.asarray(d_lhs[t]).reshape(x.shape), g @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(d_rhs[t]).reshape(w.shape), x.T @ g, rtol=1e-5, atol=1e-5)


def test_forward_mode_and_second_order_agree_with_lax():
  lhs_shape, rhs_shape, contract = WIDENING_FORMS["dense"]
  lhs, rhs = _operands(lhs_shape, rhs_shape)
  tangents = _operands(lhs_shape, rhs_shape, seed=2)
  dims = (contract, ((), ()))

  def loss(dot_general):
    return lambda a, b: jnp.sum(jnp.tanh(dot_general(a, b, dims)) ** 2)

  ours, reference = loss(dense_dot_general), loss(lax.dot_general)
  _, ours_tangent = jax.jvp(ours, (lhs, rhs), tangents)
  _, reference_tangent = jax.jvp(reference, (lhs, rhs), tangents)
  np.testing.assert_allclose(ours_tangent, reference_tangent, rtol=1e-5)
  hessian = jax.hessian(ours, argnums=1)(lhs, rhs)
  np.testing.assert_allclose(hessian, jax.hessian(reference, argnums=1)(lhs, rhs),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["narrowing", "batch_dims", "lhs_leading_contraction"])
def test_other_forms_are_plain_dot_general(case):
  if case == "narrowing":  # fan-in 7 > fan-out 3: XLA's own backward was as fast there
    lhs, rhs = _operands((2, 5, 7), (7, 3))
    dims = (((2,), (0,)), ((), ()))
  elif case == "batch_dims":
    lhs, rhs = _operands((4, 5, 3), (4, 3, 6))
    dims = (((2,), (1,)), ((0,), (0,)))
  else:
    lhs, rhs = _operands((3, 5), (3, 6))
    dims = (((0,), (0,)), ((), ()))
  product = lambda a, b: dense_dot_general(a, b, dims)
  assert not _uses_custom_rule(product, lhs, rhs)
  np.testing.assert_array_equal(product(lhs, rhs), lax.dot_general(lhs, rhs, dims))


def test_encoder_projections_use_it():
  """Every widening or square projection of the encoder (q, k and v as one product,
  attention output, MLP in, pooler) goes through the custom rule; only the narrowing MLP
  output does not."""
  from jmtl.models import EncoderConfig
  from jmtl.models.encoder import Encoder
  config = EncoderConfig(vocab_size=20, width=8, depth=1, num_heads=2, mlp_width=16,
                         max_length=8, pooled_width=8, dropout=0.0, attention_dropout=0.0)
  ids = jnp.ones((2, 8), jnp.int32)
  params = Encoder(config).init(jax.random.key(0), ids, ids)
  jaxpr = str(jax.make_jaxpr(lambda p: Encoder(config).apply(p, ids, ids))(params))
  assert jaxpr.count("custom_jvp_call") == 4


def test_fused_projections_match_separate_products_in_float64():
  """One product against [W_q | W_k | W_v]: each output, and every gradient, equals its own
  x @ W_i + b_i computed in float64 NumPy; kernels of any trailing shape keep it."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 5, 4)).astype(np.float32)
  projections = [(rng.standard_normal((4,) + shape).astype(np.float32),
                  rng.standard_normal(shape).astype(np.float32))
                 for shape in ((2, 3), (2, 3), (6,))]
  outputs = fused_projections(x, projections)
  x64 = np.asarray(x, np.float64).reshape(-1, 4)
  cotangents = [rng.standard_normal(o.shape).astype(np.float32) for o in outputs]
  for out, (kernel, bias) in zip(outputs, projections):
    expected = x64 @ np.asarray(kernel, np.float64).reshape(4, -1) + np.asarray(bias).reshape(-1)
    assert out.shape == x.shape[:-1] + kernel.shape[1:]
    np.testing.assert_allclose(np.asarray(out).reshape(expected.shape), expected, rtol=1e-5,
                               atol=1e-5)
  loss = lambda x, ps: sum(jnp.vdot(o, c) for o, c in zip(fused_projections(x, ps), cotangents))
  gx, gps = jax.grad(loss, argnums=(0, 1))(x, projections)
  g64 = [np.asarray(c, np.float64).reshape(x64.shape[0], -1) for c in cotangents]
  kernels64 = [np.asarray(k, np.float64).reshape(4, -1) for k, _ in projections]
  np.testing.assert_allclose(np.asarray(gx).reshape(x64.shape),
                             sum(g @ k.T for g, k in zip(g64, kernels64)), rtol=1e-5, atol=1e-5)
  for (gk, gb), g, (kernel, _) in zip(gps, g64, projections):
    np.testing.assert_allclose(np.asarray(gk).reshape(4, -1), x64.T @ g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gb).reshape(-1), g.sum(0), rtol=1e-5, atol=1e-5)


def test_self_attention_is_flax_multi_head_attention():
  """The encoder's fused-projection attention has Flax's MultiHeadDotProductAttention's
  parameters (names, shapes, initial values) and, on them, its outputs and gradients, with
  attention dropout on (same dropout key) and a padding mask."""
  import flax.linen as nn
  from jmtl.models.encoder import SelfAttention, attention
  from jmtl.models.matmul import dense_dot_general as ddg
  x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 6, 8)), jnp.float32)
  mask = jnp.ones((3, 1, 1, 6), bool).at[0, ..., 4:].set(False)
  ours = SelfAttention(num_heads=2, dropout_rate=0.3)
  flax_mha = nn.MultiHeadDotProductAttention(
      num_heads=2, dropout_rate=0.3, attention_fn=attention, qkv_dot_general=ddg,
      out_dot_general=ddg)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  params = ours.init(rngs, x, mask, False)
  reference_params = flax_mha.init(rngs, x, x, mask=mask, deterministic=False)
  assert jax.tree.structure(params) == jax.tree.structure(reference_params)
  jax.tree.map(np.testing.assert_array_equal, params, reference_params)
  run = lambda p: ours.apply(p, x, mask, False, rngs={"dropout": jax.random.key(2)})
  run_reference = lambda p: flax_mha.apply(p, x, x, mask=mask, deterministic=False,
                                           rngs={"dropout": jax.random.key(2)})
  np.testing.assert_allclose(run(params), run_reference(params), rtol=1e-6, atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(run(p) ** 2))(params)
  reference_grads = jax.grad(lambda p: jnp.sum(run_reference(p) ** 2))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads,
               reference_grads)

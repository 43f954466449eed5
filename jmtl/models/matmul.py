"""``lax.dot_general`` for dense layers, with a kernel gradient XLA:CPU lays out well.

The kernel gradient of ``y = x @ W`` is ``x^T g``, a contraction over the batch-and-sequence
axis of both operands. Left to itself, XLA:CPU transposes the cotangent ``g`` (an elementwise
fusion with strided writes) and hands the product to a slower generic dot. For a layer that
widens (the MLP's first projection: g is 4x the size of x) that transpose is the expensive
one. ``dense_dot_general`` transposes ``x`` instead, once, during the forward pass of
differentiation, and states the kernel term of the JVP as a contraction over ``x^T``'s leading
axis, so its transpose (the kernel gradient) is the plain product ``x^T @ g``.

It is a ``custom_jvp``, not a ``custom_vjp``: forward mode, ``jax.hessian`` and gradients of
gradients keep working. Layers that narrow (fan-in > fan-out) keep XLA's own form, which was as
fast there. Measured on the benchmark encoder (one CPU thread): the equal-weight step 5% and
the multi-input exact step at T=8 8% faster, the same-input exact step at T=8 within noise (its
vmapped kernel gradient still transposes g), same temporary memory.

``Dense`` is ``flax.linen.Dense`` with it; the encoder and heads build every projection from it.
``fused_projections`` applies several projections of one input (attention's query, key and
value) as one product through it, with parameters from ``ProjectionParams`` (as ``Dense``
creates them): one input gradient, one kernel gradient and one transposed ``x`` instead of
three (the equal-weight step ~2% faster on the peer model, together with two optimizer-side
changes in ``jmtl.train.step`` 0.89x on an Intel Sapphire Rapids, one thread).
"""

from __future__ import annotations

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _matmul(x, kernel, precision):
  return jnp.matmul(x, kernel, precision=precision)


@_matmul.defjvp
def _matmul_jvp(precision, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  # The barrier keeps XLA from folding the transpose back into the dot, which would restore
  # the layout this module avoids.
  x_t = lax.optimization_barrier(x.T)
  kernel_term = lax.dot_general(x_t, kernel_dot, (((0,), (0,)), ((), ())), precision=precision)
  y_dot = jnp.matmul(x_dot, kernel, precision=precision) + kernel_term
  return _matmul(x, kernel, precision), y_dot


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                      **kwargs):
  """Drop-in ``lax.dot_general`` for Flax ``Dense``/``DenseGeneral``/attention projections.

  Takes the dense-layer form (``lhs``'s trailing axes against ``rhs``'s leading axes, no batch
  axes) of a layer that does not narrow; anything else goes to ``lax.dot_general`` unchanged.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  n = len(lhs_contract)
  dense_form = (not lhs_batch and not rhs_batch and n > 0
                and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
                and tuple(rhs_contract) == tuple(range(n)))
  fan_in, fan_out = math.prod(rhs.shape[:n]), math.prod(rhs.shape[n:])
  if not dense_form or fan_in > fan_out or preferred_element_type is not None or kwargs:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)
  out = _matmul(lhs.reshape(-1, fan_in), rhs.reshape(fan_in, fan_out), precision)
  return out.reshape(lhs.shape[:lhs.ndim - n] + rhs.shape[n:])


Dense = functools.partial(nn.Dense, dot_general=dense_dot_general)


class ProjectionParams(nn.Module):
  """The ``kernel`` and ``bias`` of a ``Dense``/``DenseGeneral`` over the last axis, created as
  those modules create them (same names, shapes and initial values), without applying them:
  ``fused_projections`` applies several at once."""

  features: tuple[int, ...]
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    fan_out = math.prod(self.features)
    # As DenseGeneral: initialise the flat (fan_in, fan_out) matrix, then reshape.
    kernel_init = lambda rng, shape, dtype: self.kernel_init(
        rng, (in_features, fan_out), dtype).reshape(shape)
    bias_init = lambda rng, shape, dtype: self.bias_init(rng, (fan_out,), dtype).reshape(shape)
    kernel = self.param("kernel", kernel_init, (in_features, *self.features), self.param_dtype)
    bias = self.param("bias", bias_init, self.features, self.param_dtype)
    return kernel, bias


def fused_projections(x, projections, precision=None):
  """``[x @ W_i + b_i for each (W_i, b_i)]`` as ONE matmul of ``x`` with ``[W_1 | W_2 | ...]``.

  Attention's query, key and value read the same input: one wide product (and, in the
  backward, one input gradient and one kernel gradient) instead of three narrow ones. Kernels
  are ``[D, *features_i]`` over ``x``'s last axis; outputs keep each ``features_i`` shape.
  """
  fan_in = x.shape[-1]
  shapes = [kernel.shape[1:] for kernel, _ in projections]
  widths = [math.prod(shape) for shape in shapes]
  kernel = jnp.concatenate([k.reshape(fan_in, -1) for k, _ in projections], axis=1)
  bias = jnp.concatenate([b.reshape(-1) for _, b in projections])
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=None)
  y = dense_dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision) + bias
  splits = list(itertools.accumulate(widths))[:-1]
  return [part.reshape(x.shape[:-1] + shape)
          for part, shape in zip(jnp.split(y, splits, axis=-1), shapes)]

"""Mixed precision: one compute dtype for activations and matmuls, one for the stored params.

``model.dtype`` (compute) and ``model.param_dtype`` (storage) reach the encoder configs
(``EncoderConfig``, ``BertConfig``) as ``dtype`` / ``param_dtype``. The policy is applied
where a model's parameters meet its Flax modules, so every module (encoders, heads, every
sharing architecture) follows it without a dtype argument of its own:

* ``init`` stores the params in ``param_dtype`` (float32 master weights by default);
* ``encode`` / ``head`` apply the modules to ``compute_params``: every floating param cast to
  ``dtype``, except the token table, which stays in ``param_dtype`` so its gradient (a
  scatter-add of many rows into the same ids) accumulates in float32; the embedding sum is
  cast to ``dtype`` once (``encoder.embed_tokens``, BERT's embedding norm). Flax modules infer
  their dtype from their inputs and params, so the whole forward then runs in ``dtype``, and
  the gradients w.r.t. the stored params come back in ``param_dtype``.

Kept in (at least) float32 whatever ``dtype`` is: LayerNorm statistics (Flax computes them
in at least float32), attention and gate softmaxes, masked mean pools, the heads' outputs and
so every loss, and everything a balancer sees (``jmtl.train.grad_paths`` hands it
``float32(...)`` of the per-task gradients: G, the solvers and the combination run in
float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

DTYPES: tuple[str, ...] = ("float32", "bfloat16")  # what a run config may ask for
# Encoder configs also take float64, for float64 reference checks under jax.enable_x64
# (the finite-difference tests): with dtype float32 the forward would round them down.
MODULE_DTYPES: tuple[str, ...] = (*DTYPES, "float64")
PyTree = Any


def check_dtype(value, key: str) -> str:
  """``value`` if it names a supported dtype; a ValueError naming ``key`` otherwise."""
  if value not in MODULE_DTYPES:
    raise ValueError(f"{key} {value!r}: use one of {', '.join(MODULE_DTYPES)}")
  return value


def at_least_float32(x: jax.Array) -> jax.Array:
  """``x`` in float32 if it is narrower (bfloat16), unchanged if wider (a float64 check)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _floating(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def cast_floating(tree: PyTree, dtype) -> PyTree:
  """Every floating leaf of ``tree`` as ``dtype``; other leaves (ids, masks) unchanged."""
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda x: x.astype(dtype) if _floating(x) and x.dtype != dtype else x,
                      tree)


def float32(tree: PyTree) -> PyTree:
  """Floating leaves as float32: what balancers and the optimizer's inputs are made of."""
  return cast_floating(tree, jnp.float32)


def _get(tree, path: Sequence[str]):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _set(tree, path: Sequence[str], value):
  head, *rest = path
  return {**tree, head: value if not rest else _set(tree[head], rest, value)}


def compute_params(params: PyTree, dtype, keep: Sequence[str] | None = None) -> PyTree:
  """``params`` cast to the compute ``dtype``, but the leaf at path ``keep`` (the token
  table), which stays as stored. A no-op (the same tree) when nothing needs a cast."""
  if all(not _floating(x) or x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(params)):
    return params
  cast = cast_floating(params, dtype)
  kept = _get(params, keep) if keep else None
  return cast if kept is None else _set(cast, keep, kept)



def from_config(model_config) -> dict[str, str]:
  """``dtype`` / ``param_dtype`` keyword arguments of an encoder config from the ``model``
  section of a run config (float32 for a run saved before the keys existed)."""
  return {"dtype": model_config.get("dtype", "float32"),
          "param_dtype": model_config.get("param_dtype", "float32")}


def softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """``jax.nn.softmax`` computed in float32 and returned in ``logits``' dtype: attention and
  expert gates keep the compute dtype while their exponentials and sums do not lose bits."""
  return jax.nn.softmax(at_least_float32(logits), axis=axis).astype(logits.dtype)

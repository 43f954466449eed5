"""benchmarks/profile_step.py (op times from a profiler trace) and benchmarks/gemm_rates.py
(FLOP counts of the products it times)."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import gemm_rates, profile_step  # noqa: E402


class _MatmulRunner:
  """The runner interface profile_step reads: a call runs one step; ``compiled`` its program."""

  def __init__(self):
    self.x = jnp.ones((256, 256), jnp.float32)
    self.compiled = jax.jit(lambda x: jnp.tanh(x @ x)).lower(self.x).compile()

  def __call__(self):
    return self.compiled(self.x).block_until_ready()


def test_traced_ops_are_the_compiled_programs_and_cpu_time_is_counted():
  runner = _MatmulRunner()
  runner()
  ops = profile_step.traced_op_times(runner, steps=3)
  sources = profile_step.op_sources(runner.compiled.as_text())
  assert ops and all(seconds > 0 for seconds in ops.values())
  assert set(ops) <= set(sources), "every traced op is an instruction of the program"
  assert any(sources[name][0].startswith("f32[256,256]") for name in ops)
  cpu = profile_step.cpu_per_step(runner, steps=3)
  assert cpu["wall_s"] > 0 and cpu["user_s"] >= 0 and cpu["minor_faults"] >= 0


def test_gemm_flop_counts_match_the_products_shapes():
  """2 m n k for every product, with m, n from lax.dot_general's actual output and k the
  contracted length: a wrong axis in the table would misstate every rate."""
  for name, (lhs, rhs, lhs_axis, rhs_axis) in gemm_rates.PRODUCTS.items():
    assert lhs[lhs_axis] == rhs[rhs_axis], name
    out = jax.eval_shape(lambda a, b, d=(((lhs_axis,), (rhs_axis,)), ((), ())):
                         lax.dot_general(a, b, d),
                         jax.ShapeDtypeStruct(lhs, jnp.float32),
                         jax.ShapeDtypeStruct(rhs, jnp.float32))
    assert gemm_rates.flops(lhs, rhs, lhs_axis, rhs_axis) == 2.0 * np.prod(out.shape) * lhs[lhs_axis]

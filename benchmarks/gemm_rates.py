"""Matrix products alone: XLA:CPU (what jmtl's steps compile to) against PyTorch, GFLOP/s.

The peer and MiniLM comparisons time whole steps. This separates the kernels: the products
those steps run (forward ``x @ W``, input gradient ``g @ W^T``, kernel gradient ``x^T g`` as
XLA leaves it (lhs contracted on its rows) and with ``x^T`` materialised, as
``jmtl.models.matmul`` arranges for widening layers), at MiniLM's sizes (4096 tokens, 384 ->
1536) and the peer model's (2048 tokens, 128 <-> 512), each framework in its own process,
pinned to the same CPUs with the same thread count, alternating rounds. float32 only.

  python -m benchmarks.gemm_rates --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

# name: (lhs shape, rhs shape, lhs contracting axis, rhs contracting axis)
PRODUCTS = {
    "MiniLM MLP-in forward x @ W": ((4096, 384), (384, 1536), 1, 0),
    "MiniLM MLP-in input grad g @ W^T": ((4096, 1536), (384, 1536), 1, 1),
    "MiniLM MLP-out kernel grad x^T g (rows contracted)": ((4096, 1536), (4096, 384), 0, 0),
    "MiniLM MLP-in kernel grad (x^T materialised) @ g": ((384, 4096), (4096, 1536), 1, 0),
    "peer MLP-in forward x @ W": ((2048, 128), (128, 512), 1, 0),
    "peer MLP-out kernel grad x^T g (rows contracted)": ((2048, 512), (2048, 128), 0, 0),
}


def flops(lhs, rhs, lhs_axis, rhs_axis) -> float:
  return 2.0 * lhs[lhs_axis] * lhs[1 - lhs_axis] * rhs[1 - rhs_axis]


def time_products(run, repeats: int) -> dict[str, float]:
  """{name: GFLOP/s (median over ``repeats`` calls)} for ``run(name) -> seconds``."""
  out = {}
  for name, spec in PRODUCTS.items():
    for _ in range(3):
      run(name)
    seconds = statistics.median(run(name) for _ in range(repeats))
    out[name] = flops(*spec) / seconds / 1e9
  return out


def jax_child(repeats: int) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  compiled, operands = {}, {}
  for name, (a, b, ka, kb) in PRODUCTS.items():
    x = jnp.asarray(np.random.default_rng(0).standard_normal(a, np.float32))
    y = jnp.asarray(np.random.default_rng(1).standard_normal(b, np.float32))
    dims = (((ka,), (kb,)), ((), ()))
    compiled[name] = jax.jit(lambda x, y, d=dims: lax.dot_general(x, y, d)).lower(x, y).compile()
    operands[name] = (x, y)

  def run(name):
    start = time.perf_counter()
    compiled[name](*operands[name]).block_until_ready()
    return time.perf_counter() - start
  print(json.dumps(time_products(run, repeats)))


def torch_child(repeats: int) -> None:
  import torch
  operands = {}
  for name, (a, b, ka, kb) in PRODUCTS.items():
    x, y = torch.randn(*a), torch.randn(*b)
    operands[name] = (x if ka == 1 else x.t(), y if kb == 0 else y.t())  # views, as autograd

  def run(name):
    x, y = operands[name]
    start = time.perf_counter()
    torch.mm(x, y)
    return time.perf_counter() - start
  print(json.dumps(time_products(run, repeats)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=15, help="timed calls per product")
  parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
  parser.add_argument("--out", type=pathlib.Path, default=_common.RESULTS)
  args = parser.parse_args(argv)
  if args.child:
    _common.pin_threads(args.threads)
    if args.child == "jax":
      os.environ["XLA_FLAGS"] = _common.xla_thread_flags(args.threads)
      return jax_child(args.repeats)
    import torch
    torch.set_num_threads(args.threads)
    return torch_child(args.repeats)
  from benchmarks.peers.compare import TORCH_PYTHON
  here = pathlib.Path(__file__).resolve()
  pythons = {"jax": sys.executable, "torch": str(TORCH_PYTHON)}
  samples: dict[str, dict[str, list[float]]] = {"jax": {}, "torch": {}}
  for k in range(args.rounds):
    for side in (("jax", "torch") if k % 2 == 0 else ("torch", "jax")):
      out = subprocess.run([pythons[side], str(here), "--child", side, "--threads",
                            str(args.threads), "--repeats", str(args.repeats)],
                           check=True, capture_output=True, text=True, cwd=here.parents[1])
      for name, rate in json.loads(out.stdout.strip().splitlines()[-1]).items():
        samples[side].setdefault(name, []).append(rate)
  rows = []
  for name in PRODUCTS:
    jax_rate = statistics.median(samples["jax"][name])
    torch_rate = statistics.median(samples["torch"][name])
    rows.append({"product": name, "shapes": PRODUCTS[name][:2], "xla_gflops": jax_rate,
                 "torch_gflops": torch_rate, "xla_over_torch": jax_rate / torch_rate,
                 "xla_samples": samples["jax"][name], "torch_samples": samples["torch"][name]})
  payload = {"threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
             "machine": _common.machine_info(), "rows": rows}
  json_path = _common.write_json(args.out / "gemm_rates.json", payload)
  table = _common.markdown_table(
      ["product", "lhs x rhs", "XLA:CPU GFLOP/s", "PyTorch GFLOP/s", "XLA / PyTorch"],
      [[r["product"], f"{r['shapes'][0]} x {r['shapes'][1]}", f"{r['xla_gflops']:.0f}",
        f"{r['torch_gflops']:.0f}", f"{r['xla_over_torch']:.2f}"] for r in rows])
  text = (f"# float32 products alone: XLA:CPU vs PyTorch\n\n{args.threads} thread(s), pinned; "
          f"{args.rounds} alternating rounds of a fresh process per side, median of "
          f"{args.repeats} calls each; {payload['machine'].get('cpu_model')}.\n\n{table}\n")
  (args.out / "gemm_rates.md").write_text(text)
  print(text)
  print(f"wrote {json_path}")


if __name__ == "__main__":
  main()

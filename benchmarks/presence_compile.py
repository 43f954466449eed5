"""Compile time of a balancer's weighting with and without the absent-task mask, as T grows.

Every registered balancer leaves absent tasks out through ``with_presence``
(jmtl/balancers/_presence.py): under jit the number of present tasks k is traced, so the
method is built for every k in 0..T and ``lax.switch`` picks one. That is T + 1 copies of
the solver in the compiled step, which is what makes Gram methods' compile time grow faster
than EW's with T (issue 16 asks for T = 64 within 2x of EW's). Since commit 0290539 the train
step passes the mask only for batches that lack a task (``jmtl.train.parallel``: the host
reads the label masks and picks one of two compiled steps); this still measures what such a
step pays.

This times ``jax.jit(weigh).lower(...).compile()`` of the weighting alone (a Gram matrix or
losses in, weights out; no model) with ``present=None`` and with a mask, alternating the two,
per method and T; the median over ``--repeats`` and the ratio mask / no mask.

  python -m benchmarks.presence_compile --tasks 8,32,64 --repeats 2 \\
      --out benchmarks/results/presence_compile.json
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from jmtl import balancers

METHODS = ("equal_weight", "pcgrad", "mgda", "nash_mtl")


def compile_seconds(name: str, num_tasks: int, masked: bool) -> float:
  balancer = balancers.get(name, num_tasks=num_tasks)
  state = balancer.init(jnp.zeros((16,)))
  present = jnp.ones((num_tasks,), bool) if masked else None
  losses = jnp.ones((num_tasks,))
  if balancer.needs == "gram":
    rows = np.random.default_rng(0).normal(size=(num_tasks, 16))
    args = (jnp.asarray(rows @ rows.T, jnp.float32), state)
    weigh = lambda gram, s: balancer.weigh_gram(gram, s, task_losses=losses, present=present)
  else:
    args = (losses, state)
    weigh = lambda task_losses, s: balancer.weigh_losses(task_losses, s, present=present)
  start = time.perf_counter()
  jax.jit(weigh).lower(*args).compile()
  return time.perf_counter() - start


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", default="8,32,64")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  rows = []
  print("| T | method | no mask s | mask s | mask / no mask |")
  print("|---|---|---|---|---|")
  for num_tasks in (int(t) for t in args.tasks.split(",")):
    for name in args.methods.split(","):
      times = {"no_mask": [], "mask": []}
      for _ in range(args.repeats):
        times["no_mask"].append(compile_seconds(name, num_tasks, masked=False))
        times["mask"].append(compile_seconds(name, num_tasks, masked=True))
      plain, masked = float(np.median(times["no_mask"])), float(np.median(times["mask"]))
      rows.append({"tasks": num_tasks, "method": name, "no_mask_s": plain, "mask_s": masked,
                   "ratio": masked / plain, "rounds": times})
      print(f"| {num_tasks} | {name} | {plain:.2f} | {masked:.2f} | {masked / plain:.1f}x |",
            flush=True)
  result = {"repeats": args.repeats, "rows": rows}
  if args.out:
    _common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()

"""Where a compiled train step's time goes: XLA:CPU ops from a ``jax.profiler`` trace.

Builds the EW (or another method's) step of the peer-benchmark model or of MiniLM exactly as
``benchmarks.peers.compare`` / ``benchmarks.pretrained`` do, runs a few steps under the
profiler, and prints the time per op kind (``ynn_fusion`` = YNNPACK products, ``dot`` = XLA's
own, ``transpose_copy_fusion`` ...) and the slowest ops with their shapes and source, plus the
user and system CPU time and minor page faults of untraced steps (system time is the cost of
memory the step touches fresh). Times are summed over the threads that ran them. Writes JSON.

  python -m benchmarks.profile_step --model peer --layout multi_input --tasks 3
  python -m benchmarks.profile_step --model minilm --threads 1 --steps 2
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import pathlib
import re
import resource
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402


def build_runner(args):
  from benchmarks import grad_engine
  if args.model == "minilm":
    from benchmarks import pretrained
    return pretrained.build(argparse.Namespace(pretrained="minilm", tasks=args.tasks,
                                               batch_size=32, length=128))[1]
  from benchmarks.peers import compare
  model, batch = compare.make_model_and_batches(grad_engine.FULL, args.tasks, args.layout)
  return grad_engine.Runner(model, args.method, "exact", batch)


def op_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (result shape, op_name metadata)} of the optimised HLO."""
  out = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
    if match:
      source = re.search(r'op_name="([^"]*)"', line)
      out[match.group(1)] = (match.group(2), source.group(1) if source else "")
  return out


def traced_op_times(runner, steps: int) -> collections.Counter:
  """{op name: seconds per step} over the XLA:CPU worker threads."""
  import jax
  from jax._src.lib import _profile_data
  with tempfile.TemporaryDirectory(prefix="jmtl_profile_") as directory:
    with jax.profiler.trace(directory):
      for _ in range(steps):
        runner()
    path = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
    data = _profile_data.ProfileData.from_file(path)
  totals = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      # Ops run on XLA's worker threads and, small ones, on the calling thread.
      if line.name.startswith(("tf_XLAEigen", "tf_XLAExecute")):
        for event in line.events:
          if "::" not in event.name and not event.name.startswith("end: "):  # bookkeeping
            totals[event.name] += event.duration_ns / 1e9 / steps
  return totals


def cpu_per_step(runner, steps: int) -> dict[str, float]:
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    runner()
  after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
  return {"wall_s": wall / steps, "user_s": (after.ru_utime - before.ru_utime) / steps,
          "system_s": (after.ru_stime - before.ru_stime) / steps,
          "minor_faults": (after.ru_minflt - before.ru_minflt) / steps}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=("peer", "minilm"), default="peer")
  parser.add_argument("--layout", choices=("same_input", "multi_input"), default="same_input",
                      help="peer model only (MiniLM is multi-input)")
  parser.add_argument("--tasks", type=int, default=3)
  parser.add_argument("--method", default="equal_weight", help="peer model only")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5, help="traced (and untraced) steps")
  parser.add_argument("--top", type=int, default=25)
  _common.add_malloc_arguments(parser)
  parser.add_argument("--out", type=pathlib.Path, default=None, help="folder for the JSON")
  args = parser.parse_args(argv)
  malloc = _common.apply_malloc(args.malloc)
  _common.pin_threads(args.threads)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _common.xla_thread_flags(args.threads)).strip()
  runner = build_runner(args)
  for _ in range(2):
    runner()
  cpu = cpu_per_step(runner, args.steps)
  ops = traced_op_times(runner, args.steps)
  sources = op_sources(runner.compiled.as_text())
  kinds = collections.Counter()
  for name, seconds in ops.items():
    kinds[name.split(".")[0]] += seconds
  print(f"{args.model} {args.layout if args.model == 'peer' else 'multi_input'} T={args.tasks} "
        f"{args.method if args.model == 'peer' else 'equal_weight'}, {args.threads} thread(s); "
        f"untraced step {cpu['wall_s'] * 1e3:.1f} ms: user {cpu['user_s'] * 1e3:.1f} ms, "
        f"system {cpu['system_s'] * 1e3:.1f} ms, {cpu['minor_faults']:.0f} minor faults")
  print(f"\nop time per step by kind (ms, summed over threads; all ops "
        f"{sum(kinds.values()) * 1e3:.1f} ms)")
  for kind, seconds in kinds.most_common(20):
    print(f"{seconds * 1e3:9.2f}  {kind}")
  slowest = []
  print(f"\nslowest {args.top} ops (ms)")
  for name, seconds in ops.most_common(args.top):
    shape, source = sources.get(name, ("?", "?"))
    slowest.append({"op": name, "ms": seconds * 1e3, "shape": shape, "source": source})
    print(f"{seconds * 1e3:8.2f}  {name:30} {shape[:36]:36} {source[-80:]}")
  if args.out is not None:
    path = _common.write_json(
        args.out / (f"profile_{args.model}_" + (f"{args.layout}_" if args.model == "peer" else "")
        + f"T{args.tasks}_{args.threads}t.json"),
        {"settings": {k: str(v) for k, v in vars(args).items()}, "malloc": malloc,
         "cpu_per_step": cpu, "kinds_ms": {k: v * 1e3 for k, v in kinds.items()},
         "slowest": slowest, "machine": _common.machine_info()})
    print(f"\nwrote {path}")


if __name__ == "__main__":
  main()

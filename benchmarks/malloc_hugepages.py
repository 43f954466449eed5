"""glibc's default malloc against ``glibc.malloc.hugetlb=1`` (what the ``jmtl`` command sets,
``jmtl.hugepages``): step time, page faults and peak memory.

Two parts, each a pair of fresh processes per round (glibc reads the tunable only at start),
the setting that goes first alternating between rounds:

- ``step``: the peer benchmark's equal-weight step (``benchmarks.peers.compare``'s model,
  T=3, same input and multi-input, 1 thread, pinned), compiled, 3 untimed steps, then
  ``--steps`` timed ones: median ms, minor page faults per step, peak RSS (VmHWM).
- ``train``: ``jmtl train`` on a config for a few steps, as users run it (``python -m
  jmtl.cli``; ``default`` with ``JMTL_HUGEPAGES=0``): wall time and peak RSS from ``wait4``
  (``ru_maxrss`` of the child; this parent stays small, so what it carries over ``execve`` is
  negligible). An untimed run first prepares the config's data.

  python -m benchmarks.malloc_hugepages --parts step,train --rounds 3
  python -m benchmarks.malloc_hugepages --parts train --train-config configs/minilm_en_mix.py \\
      --train-steps 30 --rounds 1 --out /tmp/m
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

SETTINGS = ("default", "hugepages")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def step_child(layout: str, steps: int) -> None:
  """One process: the EW step, timed; prints one JSON line."""
  _common.pin_threads(1)
  os.environ["XLA_FLAGS"] = _common.xla_thread_flags(1)
  from benchmarks import grad_engine
  from benchmarks.peers import compare
  model, batch = compare.make_model_and_batches(grad_engine.FULL, 3, layout)
  runner = grad_engine.Runner(model, "equal_weight", "exact", batch)
  for _ in range(3):
    runner()
  times, faults = [], []
  for _ in range(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    runner()
    times.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(json.dumps({"median_ms": 1e3 * statistics.median(times), "times": times,
                    "faults_per_step": statistics.median(faults),
                    "peak_rss_mib": _common.peak_rss_mib(),
                    "xla_temp_mib": (runner.xla_temp_bytes or 0) / 2**20}))


def run_step(setting: str, layout: str, steps: int) -> dict:
  out = subprocess.run([sys.executable, "-m", "benchmarks.malloc_hugepages", "--step-child",
                        layout, "--steps", str(steps)], cwd=ROOT,
                       env=_common.malloc_environment(setting), capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout.splitlines()[-1])


def run_train(setting: str, config: str, steps: int, workdir: str) -> dict:
  command = [sys.executable, "-m", "jmtl.cli", "train", "--config", config, "--workdir", workdir,
             f"--config.train.steps={steps}", "--config.train.eval_every=0",
             f"--config.train.checkpoint_every={steps}"]
  with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: wait4 reads no output
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=_common.malloc_environment(setting),
                               stdout=subprocess.DEVNULL, stderr=stderr)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
      stderr.seek(0)
      raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n"
                         f"{stderr.read()[-3000:]}")
  return {"wall_seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
          "minor_faults": usage.ru_minflt}


def alternate(rounds: int, measure) -> dict[str, list[dict]]:
  results = {s: [] for s in SETTINGS}
  for k in range(rounds):
    for setting in (SETTINGS if k % 2 == 0 else SETTINGS[::-1]):
      results[setting].append(measure(setting))
      shown = {key: value for key, value in results[setting][-1].items() if key != "times"}
      print(f"  round {k + 1} {setting}: {json.dumps(shown)}", flush=True)
  return results


def summary(results: dict[str, list[dict]], key: str) -> dict:
  medians = {s: statistics.median(r[key] for r in rows) for s, rows in results.items()}
  ratios = [h[key] / d[key] for d, h in zip(results["default"], results["hugepages"])]
  return {"median": medians, "ratio": medians["hugepages"] / medians["default"],
          "round_ratios": ratios}


def markdown(payload: dict) -> str:
  lines = ["# glibc malloc: default vs glibc.malloc.hugetlb=1 (the jmtl command's setting)", "",
           f"{payload['machine']['cpu_model']}; transparent huge pages offered: "
           f"{payload['transparent_hugepages']}; load {payload['machine']['load_average_1_5_15']} "
           f"at the end. Fresh processes per round, settings alternating. Ratios: hugepages / "
           f"default, of medians (per-round range in brackets).", ""]
  rows = []
  for name, part in payload["parts"].items():
    for key, label in (("median_ms", "step ms"), ("faults_per_step", "page faults / step"),
                       ("wall_seconds", "wall s"), ("peak_rss_mib", "peak RSS MiB")):
      if key in part:
        s = part[key]
        rows.append([name, label, f"{s['median']['default']:.1f}",
                     f"{s['median']['hugepages']:.1f}",
                     f"{s['ratio']:.2f} ({min(s['round_ratios']):.2f}-"
                     f"{max(s['round_ratios']):.2f})"])
  lines.append(_common.markdown_table(["run", "measure", "default", "hugepages", "ratio"], rows))
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="step,train")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20, help="timed steps per step process")
  parser.add_argument("--layouts", default="same_input,multi_input")
  parser.add_argument("--train-config", default="configs/default.py")
  parser.add_argument("--train-steps", type=int, default=100)
  parser.add_argument("--out", type=pathlib.Path, default=_common.RESULTS)
  parser.add_argument("--name", default="malloc_hugepages")
  parser.add_argument("--step-child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.step_child:
    return step_child(args.step_child, args.steps)
  from jmtl import hugepages
  parts = {}
  for part in args.parts.split(","):
    if part == "step":
      for layout in args.layouts.split(","):
        print(f"step, T=3 {layout}", flush=True)
        results = alternate(args.rounds, lambda s: run_step(s, layout, args.steps))
        parts[f"EW step T=3 {layout}"] = {
            key: summary(results, key) for key in ("median_ms", "faults_per_step", "peak_rss_mib")
        } | {"runs": results}
    elif part == "train":
      with tempfile.TemporaryDirectory(prefix="jmtl_malloc_") as tmp:
        print(f"train {args.train_config}: preparing data (untimed)", flush=True)
        run_train("hugepages", args.train_config, 1, os.path.join(tmp, "prepare"))
        results = alternate(args.rounds, lambda s: run_train(
            s, args.train_config, args.train_steps, tempfile.mkdtemp(dir=tmp)))
      parts[f"jmtl train {args.train_config} {args.train_steps} steps"] = {
          key: summary(results, key) for key in ("wall_seconds", "peak_rss_mib")
      } | {"runs": results}
    else:
      raise SystemExit(f"malloc_hugepages: unknown part {part!r} (step, train)")
  payload = {"parts": parts, "rounds": args.rounds, "steps": args.steps,
             "transparent_hugepages": hugepages.transparent_hugepages_offered(),
             "machine": _common.machine_info()}
  _common.write_json(args.out / f"{args.name}.json", payload)
  text = markdown(payload)
  (args.out / f"{args.name}.md").write_text(text)
  print(text)
  return payload


if __name__ == "__main__":
  main()

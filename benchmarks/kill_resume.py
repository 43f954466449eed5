"""Crash safety: ``kill -9`` of ``jmtl train`` at random moments, then the same command again.

On a tiny generated suite with a tiny model, one uninterrupted run gives the reference final
state. Each trial then starts a fresh workdir and kills ``jmtl train`` (SIGKILL: no handler
runs) ``--kills-per-trial`` times, each time at a moment of one phase:

* ``data``: while the suite is being prepared (a fresh data_dir; killed once its temporary
  build folder exists, or the encoded cache is being written),
* ``checkpoint``: while an asynchronous Orbax write is in flight (a ``*.orbax-checkpoint-tmp*``
  folder exists),
* ``step``: at a random time while steps run.

After each kill it checks that every prepared suite in the data_dir is complete (a manifest
that parses, every dataset it names present) and that the rerun resumes from the newest
complete checkpoint; after the last rerun, that the final state (params, optimizer and
balancer state, RNG, counters) and the data position are bit-identical to the reference.

  python -m benchmarks.kill_resume [--trials 10] [--kills-per-trial 2] [--steps 24]

Writes ``kill_resume.json`` and ``kill_resume.md`` under ``--out`` (benchmarks/results).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "train"))
from tiny_suite import write_tiny_suite  # noqa: E402  (the runner tests' generated suite)

PHASES = ("data", "checkpoint", "step")
TINY = ["--config.data.max_len=16", "--config.data.buckets=(16,)", "--config.data.vocab_size=200",
        "--config.data.batch_size=4", "--config.data.eval_batch_size=8",
        "--config.model.width=16", "--config.model.depth=1", "--config.model.num_heads=2",
        "--config.model.mlp_width=32", "--config.model.pooled_width=16",
        "--config.model.head_hidden=8", "--config.optimizer.warmup_steps=2",
        "--config.train.log_every=2", "--config.train.eval_every=0",
        "--config.train.progress=False", "--config.balancer.name=pcgrad"]


def train_command(suite: str, data_dir: str, workdir: str, steps: int, every: int) -> list[str]:
  return [sys.executable, "-m", "jmtl.cli", "train", "--config", "configs/default.py",
          "--workdir", workdir, f"--config.data.suite={suite}",
          f"--config.data.data_dir={data_dir}", f"--config.train.steps={steps}",
          f"--config.train.checkpoint_every={every}", *TINY]


def complete_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def tmp_checkpoints(workdir: str) -> set[str]:
  return set(glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*")))


def events(workdir: str) -> int:
  """Lines of events.jsonl: a run adds one when its training starts."""
  path = os.path.join(workdir, "events.jsonl")
  return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def preparing(data_dir: str) -> bool:
  """A suite build or an encoded-cache write is under way."""
  return bool(glob.glob(os.path.join(data_dir, ".*.tmp-*"))
              or glob.glob(os.path.join(data_dir, "*", "encoded", "*", "*.tmp*")))


def suites_complete(data_dir: str) -> list[str]:
  """Problems with the prepared suites in ``data_dir`` (a half-written one is one)."""
  problems = []
  for suite_dir in glob.glob(os.path.join(data_dir, "*")):
    if not os.path.isdir(suite_dir) or os.path.basename(suite_dir).startswith(("_", ".")):
      continue
    manifest = os.path.join(suite_dir, "suite.json")
    try:
      entries = json.load(open(manifest))["sources"]
    except (OSError, ValueError, KeyError) as e:
      problems.append(f"{suite_dir}: no readable manifest ({type(e).__name__})")
      continue
    for entry in entries:
      name = entry.get("dataset") or entry.get("name")
      if name and not glob.glob(os.path.join(suite_dir, name, "*", "dataset_info.json")):
        problems.append(f"{suite_dir}: dataset {name} missing or incomplete")
  return problems


def kill_at(phase: str, command: list[str], workdir: str, data_dir: str, rng: random.Random,
            timeout: float = 600) -> dict:
  """Starts ``command`` and SIGKILLs it at a moment of ``phase``; what was seen at the kill."""
  # What an earlier killed run left (a torn checkpoint folder, its events) is not this run's.
  stale, started = tmp_checkpoints(workdir), events(workdir)
  in_flight = lambda: bool(tmp_checkpoints(workdir) - stale)
  training = lambda: events(workdir) > started
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  start = time.time()
  wait_random = None
  hit = False
  while time.time() - start < timeout and proc.poll() is None:
    if phase == "data" and preparing(data_dir):
      time.sleep(rng.uniform(0, 0.5))
      hit = preparing(data_dir)
      break
    if phase == "checkpoint" and in_flight():
      hit = True
      break
    if phase == "step" and training():
      wait_random = wait_random or time.time() + rng.uniform(0.0, 8.0)
      if time.time() >= wait_random:
        hit = True
        break
    time.sleep(0.002)
  finished = proc.poll() is not None
  if not finished:
    os.kill(proc.pid, signal.SIGKILL)
  proc.communicate()
  return {"phase": phase, "killed": not finished, "in_phase": hit and not finished,
          "seconds": round(time.time() - start, 2), "steps_before": complete_steps(workdir)}


def run_to_end(command: list[str]) -> str:
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
  if out.returncode != 0:
    raise RuntimeError(f"rerun failed ({out.returncode}):\n{out.stderr[-3000:]}")
  return out.stdout


def final_state(workdir: str) -> tuple[list[np.ndarray], dict]:
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
  manager.close()
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(restored["state"])], restored["data"]


def identical(a, b) -> bool:
  (leaves_a, data_a), (leaves_b, data_b) = a, b
  return data_a == data_b and len(leaves_a) == len(leaves_b) and all(
      x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
      for x, y in zip(leaves_a, leaves_b))


def write_results(args, trials: list[dict], seconds: float) -> dict:
  """Writes kill_resume.json and .md for the trials so far; returns the summary."""
  all_kills = [k for t in trials for k in t["kills"]]
  summary = {
      "kills": sum(k["killed"] for k in all_kills),
      "kills_in_phase": {p: sum(k["in_phase"] for k in all_kills if k["phase"] == p)
                         for p in PHASES},
      "kills_by_phase": {p: sum(k["killed"] for k in all_kills if k["phase"] == p)
                         for p in PHASES},
      "trials": len(trials),
      "resumed_from_newest_checkpoint": sum(t["resumed_from_newest"] for t in trials),
      "identical_final_state": sum(t["identical_to_reference"] for t in trials),
      "half_written_datasets": sum(len(t["data_problems"]) for t in trials),
      "seconds": round(seconds, 1),
  }
  os.makedirs(args.out, exist_ok=True)
  payload = {"args": vars(args), "summary": summary, "trials": trials}
  with open(os.path.join(args.out, "kill_resume.json"), "w") as f:
    json.dump(payload, f, indent=1)
  rows = "\n".join(
      f"| {t['trial']} | {', '.join(k['phase'] + ('' if k['in_phase'] else ' (missed)') for k in t['kills'])}"
      f" | {t['newest_complete_checkpoint']} | {t['resumed_from']} | "
      f"{'yes' if t['identical_to_reference'] else 'NO'} | {len(t['data_problems'])} |"
      for t in trials)
  with open(os.path.join(args.out, "kill_resume.md"), "w") as f:
    f.write(f"# kill -9 of `jmtl train`, then the same command again\n\n"
            f"{args.steps} steps, a checkpoint every {args.checkpoint_every}, tiny suite and "
            f"model, pcgrad, one CPU device. {summary['kills']} kills in {summary['trials']} "
            f"trials ({summary['seconds']} s). A phase marked (missed) was not caught at its "
            "moment (the kill landed just after it).\n\n"
            f"- resumed from the newest complete checkpoint: "
            f"{summary['resumed_from_newest_checkpoint']}/{summary['trials']}\n"
            f"- final state bit-identical to the uninterrupted run: "
            f"{summary['identical_final_state']}/{summary['trials']}\n"
            f"- half-written prepared datasets found after a kill: "
            f"{summary['half_written_datasets']}\n"
            f"- kills by phase: {summary['kills_by_phase']}, caught in phase: "
            f"{summary['kills_in_phase']}\n\n"
            "| trial | kills | newest complete checkpoint | resumed from | identical | data "
            "problems |\n|---|---|---|---|---|---|\n" + rows + "\n")
  return summary


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=10)
  parser.add_argument("--kills-per-trial", type=int, default=2)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--checkpoint-every", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  args = parser.parse_args(argv)
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="jmtl-kill-")
  suite = write_tiny_suite(os.path.join(root, "suite"))
  shared_data = os.path.join(root, "data")
  command = lambda workdir, data_dir: train_command(suite, data_dir, workdir, args.steps,
                                                    args.checkpoint_every)
  t0 = time.time()
  reference_dir = os.path.join(root, "reference")
  run_to_end(command(reference_dir, shared_data))
  reference = final_state(reference_dir)
  trials = []
  for trial in range(args.trials):
    workdir = os.path.join(root, f"trial{trial}")
    # Data is prepared once per data_dir, so only a trial's first kill can hit it; the first
    # trial covers every phase in order, later ones draw them.
    phases = [rng.choice(PHASES)] + [rng.choice(PHASES[1:]) for _ in range(args.kills_per_trial - 1)]
    if trial == 0:
      phases[:len(PHASES)] = PHASES[:args.kills_per_trial]
    data_dir = os.path.join(root, f"data{trial}") if phases[0] == "data" else shared_data
    kills, problems = [], []
    for phase in phases:
      kill = kill_at(phase, command(workdir, data_dir), workdir, data_dir, rng)
      problems += suites_complete(data_dir)
      kills.append(kill)
    stdout = run_to_end(command(workdir, data_dir))
    resumed = re.search(r"resumed from step (\d+)", stdout)
    resumed_step = int(resumed.group(1)) if resumed else 0
    expected_step = (kills[-1]["steps_before"] or [0])[-1]
    same = identical(final_state(workdir), reference)
    trials.append({"trial": trial, "kills": kills, "resumed_from": resumed_step,
                   "newest_complete_checkpoint": expected_step,
                   "resumed_from_newest": resumed_step == expected_step,
                   "identical_to_reference": same, "data_problems": problems})
    print(f"trial {trial}: kills {[(k['phase'], k['in_phase'], k['steps_before'][-1:]) for k in kills]}"
          f" resumed from {resumed_step} (newest complete {expected_step}), identical={same}"
          + (f", data problems {problems}" if problems else ""), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    summary = write_results(args, trials, time.time() - t0)  # after each trial: a cut run keeps its figures
  shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(summary))
  ok = (summary["identical_final_state"] == summary["trials"]
        and summary["resumed_from_newest_checkpoint"] == summary["trials"]
        and not summary["half_written_datasets"])
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())

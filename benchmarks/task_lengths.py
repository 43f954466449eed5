"""Step time of a multi-input config with its tasks padded to one shared length or each to its
own bucket (``data.task_lengths``), on the config's own model and batches.

The same model and state for both, the same batches (each round starts fresh
iterators), every shape compiled in an untimed first pass, rounds interleaved (shared, own,
shared, own, ...); the step is synced once per round. Reports the median ms per step of each
setting, the ratio of medians and each round's ratio (own / shared: the spread).

  python -m benchmarks.task_lengths --config configs/minilm_en_mix.py --steps 5 --rounds 3 \\
      --out benchmarks/results/task_lengths_minilm_512.json
"""

from __future__ import annotations

import argparse
import copy
import time

import jax
import numpy as np

from benchmarks import _common
from jmtl.config import load_config
from jmtl.train import loop
from jmtl.train.parallel import make_train_step

SETTINGS = ("shared", "own")


def _lengths(batch) -> dict[str, int]:
  return {name: int(task["input_ids"].shape[1]) for name, task in batch.items()}


def measure(config_path: str, overrides: list[str], steps: int, rounds: int) -> dict:
  config = load_config(config_path, overrides)
  experiment = loop.build_experiment(config)
  step_fn = make_train_step(experiment.model, experiment.balancer, experiment.optimizer,
                            grad_mode=config.grad_mode, log_cosines=False)
  # One state carried through every step (it is donated): values do not change a step's cost.
  state = step_fn.place_state(jax.jit(experiment.create_state)())
  configs = {}
  for setting in SETTINGS:
    configs[setting] = copy.deepcopy(config)
    configs[setting].data.task_lengths = setting
  fresh = lambda setting: loop.train_iterator(configs[setting], experiment.suite,
                                              experiment.tasks)
  lengths = {}
  for setting in SETTINGS:  # compile every shape the timed rounds meet
    iterator = fresh(setting)
    lengths[setting] = []
    for _ in range(steps):
      batch = next(iterator)
      lengths[setting].append(_lengths(batch))
      state, metrics = step_fn(state, step_fn.place_batch(batch))
    jax.block_until_ready(metrics)
  times = {s: [] for s in SETTINGS}
  for _ in range(rounds):
    for setting in SETTINGS:
      iterator = fresh(setting)
      batches = [step_fn.place_batch(next(iterator)) for _ in range(steps)]
      start = time.perf_counter()
      for batch in batches:
        state, metrics = step_fn(state, batch)
      jax.block_until_ready(metrics)
      times[setting].append((time.perf_counter() - start) / steps * 1e3)
  median = lambda xs: float(np.median(xs))
  return {"config": config_path, "overrides": overrides, "steps": steps, "rounds": rounds,
          "lengths": lengths,
          "step_ms": {s: median(times[s]) for s in SETTINGS},
          "step_ms_rounds": times,
          "ratio_own_over_shared": median(times["own"]) / median(times["shared"]),
          "ratio_rounds": [o / s for o, s in zip(times["own"], times["shared"])]}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--override", action="append", default=[], help="KEY=VALUE (repeat)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  result = measure(args.config, args.override, args.steps, args.rounds)
  print(f"{args.config} {' '.join(args.override)}: {args.steps} steps x {args.rounds} rounds")
  print("| task_lengths | padded lengths (first step) | ms/step (median) | rounds |")
  print("|---|---|---|---|")
  for setting in SETTINGS:
    rounds = ", ".join(f"{t:.0f}" for t in result["step_ms_rounds"][setting])
    print(f"| {setting} | {result['lengths'][setting][0]} | {result['step_ms'][setting]:.0f} "
          f"| {rounds} |")
  spread = result["ratio_rounds"]
  print(f"own / shared: {result['ratio_own_over_shared']:.2f}x "
        f"(rounds {min(spread):.2f}-{max(spread):.2f})")
  if args.out:
    _common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()

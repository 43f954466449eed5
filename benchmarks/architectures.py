"""Sharing architectures side by side on real suites, at one small fixed budget.

Per suite: the single-task baselines (hard sharing, one task each) and every architecture
train for the same number of steps with the same balancer, optimizer and data; the table
reports each task's main validation metric, Δm% against the baselines, the parameter count,
and the train-step time relative to hard sharing (round-robin timed steps on one fixed batch,
median of paired ratios; see ``_common``). The budget is tiny on purpose (a shared 2-core
machine): the figures compare architectures at that budget, they are not converged results.

  python -m benchmarks.architectures --steps 150            # ud_tr and en_mix
  python -m benchmarks.architectures --suites my_suite.json --steps 2 --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import sys
import tempfile

import jax

from benchmarks import _common
from jmtl.config import base_config
from jmtl.models import architectures, count_params
from jmtl.train import loop
from jmtl.train.parallel import make_train_step


def suite_config(suite: str, steps: int, args) -> "ml_collections.ConfigDict":
  c = base_config()
  c.data.suite = suite
  c.data.data_dir = args.data_dir
  c.data.max_len = args.max_len
  c.data.buckets = (args.max_len,)
  c.data.batch_size = args.batch_size
  c.data.vocab_size = args.vocab_size
  c.model.update(dict(width=args.width, depth=args.depth, num_heads=args.heads,
                      mlp_width=4 * args.width, pooled_width=args.width, head_hidden=args.width,
                      expert_width=args.expert_width, expert_depth=args.expert_depth,
                      num_experts=args.experts))
  c.balancer.name = args.balancer
  c.optimizer.warmup_steps = max(1, steps // 10)
  c.train.update(dict(steps=steps, log_every=max(1, steps), eval_every=0,
                      checkpoint_every=steps, keep_checkpoints=1, keep_best=False,
                      progress=False, log_cosines=False))
  return c


def with_architecture(config, name: str):
  c = copy.deepcopy(config)
  c.model.architecture = name
  return c


def parameter_count(config) -> int:
  return count_params(jax.eval_shape(loop.build_experiment(config).create_state).params)


def step_times(configs: dict, rounds: int) -> dict[str, list[float]]:
  """Seconds per train step of each config's model on one fixed batch, timed round robin."""
  steps = {}
  for name, config in configs.items():
    experiment = loop.build_experiment(config)
    batch = next(loop.train_iterator(config, experiment.suite, experiment.tasks))
    step = make_train_step(experiment.model, experiment.balancer, experiment.optimizer,
                           grad_mode=config.grad_mode, donate=False, log_cosines=False)
    holder = {"state": step.place_state(jax.jit(experiment.create_state)()),
              "batch": step.place_batch(batch)}
    def run(step=step, holder=holder):
      holder["state"], metrics = step(holder["state"], holder["batch"])
      jax.block_until_ready(metrics)
    steps[name] = run
  return _common.interleaved_times(steps, rounds=rounds, warmup=1)


def run_suite(suite: str, args, workdir: pathlib.Path, out) -> list[dict]:
  config = suite_config(suite, args.steps, args)
  single = copy.deepcopy(config)
  single.single_task = True
  baseline_runs = loop.train_and_evaluate(single, str(workdir / "baselines"), out=out)
  baselines_path = workdir / "baselines" / "baselines.json"
  config.baselines = str(baselines_path)
  configs = {name: with_architecture(config, name) for name in args.architectures}
  times = step_times(configs, args.rounds)
  rows = []
  for name, arch_config in configs.items():
    result = loop.train_and_evaluate(arch_config, str(workdir / name), out=out)
    tasks = loop.load_suite(arch_config)[1]
    row = {"suite": suite, "architecture": name, "steps": args.steps,
           "main": {t.name: {t.main_metric: result["validation"][t.name][t.main_metric]}
                    for t in tasks},
           "delta_m": result["delta_m"], "params": parameter_count(arch_config),
           "step_seconds": _common.summarize(times[name])}
    if "hard" in times:
      row["step_time_vs_hard"] = _common.median_of_ratios(times[name], times["hard"])
    rows.append(row)
  for row in rows:
    row["baselines"] = baseline_runs["baselines"]["validation"]
  return rows


def table(rows: list[dict]) -> str:
  headers = ["suite", "architecture", "main metrics (validation)", "Δm%", "params",
             "step ms", "vs hard"]
  body = [[r["suite"], r["architecture"],
           ", ".join(f"{t}/{m}={v:.4f}" for t, d in r["main"].items() for m, v in d.items()),
           "n/a" if r["delta_m"] is None else f"{r['delta_m']:+.2f}",
           f"{r['params']:,}", _common.format_ms(r["step_seconds"]["median"]),
           _common.format_ratio(r.get("step_time_vs_hard"))] for r in rows]
  return _common.markdown_table(headers, body)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--suites", default="ud_tr,en_mix",
                      help="comma-separated suite names or suite JSON files")
  parser.add_argument("--architectures", default=",".join(architectures.NAMES))
  parser.add_argument("--steps", type=int, default=150, help="train steps per run (the budget)")
  parser.add_argument("--balancer", default="equal_weight")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds of one step each")
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--expert-width", type=int, default=32)
  parser.add_argument("--expert-depth", type=int, default=1)
  parser.add_argument("--experts", type=int, default=4)
  parser.add_argument("--max-len", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--vocab-size", type=int, default=8000)
  parser.add_argument("--data-dir", default=os.environ.get("JMTL_DATA_DIR", ""))
  parser.add_argument("--workdir", type=pathlib.Path, default=None,
                      help="where runs go (default: a new temporary directory)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny model, for testing the script (figures meaningless)")
  parser.add_argument("--out", type=pathlib.Path, default=_common.RESULTS)
  args = parser.parse_args(argv)
  args.architectures = [architectures.check_name(n) for n in args.architectures.split(",")]
  if args.quick:
    args.width, args.depth, args.heads, args.expert_width, args.experts = 16, 1, 2, 8, 2
    args.max_len, args.batch_size, args.rounds, args.vocab_size = 16, 4, 2, 200
  args.workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="jmtl-bench-arch-"))
  args.workdir.mkdir(parents=True, exist_ok=True)
  log = open(args.workdir / "runs.log", "w")  # the runs' own output; the table goes to stdout
  rows = []
  for suite in args.suites.split(","):
    name = pathlib.Path(suite).stem
    rows += run_suite(suite, args, args.workdir / name, log)
  payload = {"machine": _common.machine_info(), "budget_steps": args.steps,
             "balancer": args.balancer, "settings": {k: v for k, v in vars(args).items()
                                                     if k not in ("out", "workdir")},
             "results": rows}
  _common.write_json(args.out / "architectures.json", json.loads(json.dumps(payload, default=str)))
  text = table(rows)
  (args.out / "architectures.md").write_text(
      f"Budget: {args.steps} steps per run, balancer {args.balancer}, batch {args.batch_size}, "
      f"max_len {args.max_len}.\n\n{text}\n")
  print(text)


if __name__ == "__main__":
  sys.exit(main())

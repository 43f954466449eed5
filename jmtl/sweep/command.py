"""The ``jmtl sweep``, ``jmtl sweep report`` and ``jmtl plot`` commands (parsers + entry).

  jmtl sweep --dir DIR [--sweep configs/sweeps/x.py] [--config CONFIG] [--workers N]
             [--executor local|ray [--cpus_per_run C] [--gpus_per_run G]] [--extend]
             [--config.KEY=V1,V2 ...]
  jmtl sweep report DIR [--split validation|test] [--tasks A,B] [--reference equal_weight]
  jmtl plot WORKDIR [--out FILE]     (training curves; for a sweep directory, one per run)

Kept out of ``jmtl/cli.py`` except for one call each, and light to import (``jmtl --help``).
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_SOME_RUNS_FAILED = 1


def add_parsers(commands) -> None:
  sweep = commands.add_parser(
      "sweep", help="run a grid of training runs (balancers x seeds x suites x keys)",
      epilog="Grid axes: --config.KEY=V1,V2 (top-level commas; a tuple keeps its "
             "parentheses). `jmtl sweep report DIR` aggregates a sweep directory.")
  sweep.add_argument("--dir", help="the sweep directory (one workdir per run under runs/)")
  sweep.add_argument("--sweep", help="sweep config file: get_config() with config, balancers, "
                     "seeds, suites, baselines, overrides")
  sweep.add_argument("--config", help="training config file (default: the sweep file's)")
  sweep.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
  sweep.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local processes, or Ray tasks (RAY_ADDRESS: an existing cluster)")
  sweep.add_argument("--cpus_per_run", type=float, default=1, help="Ray: CPUs per run")
  sweep.add_argument("--gpus_per_run", type=float, default=0, help="Ray: GPUs per run")
  sweep.add_argument("--extend", action="store_true",
                     help="add this grid's runs to a sweep directory made by another grid")
  _report_arguments(sweep)
  sweep_commands = sweep.add_subparsers(dest="sweep_command")
  report = sweep_commands.add_parser("report", help="tables and plots of a sweep directory")
  report.add_argument("sweep_dir")
  _report_arguments(report)
  plot = commands.add_parser("plot", help="training curves of a run (or of every sweep run)")
  plot.add_argument("workdir")
  plot.add_argument("--out", help="PNG path (default WORKDIR/curves.png)")


def _report_arguments(parser) -> None:
  parser.add_argument("--split", choices=("validation", "test"),
                      help="default: test when every run has it, else validation")
  parser.add_argument("--tasks", help="two or more tasks for the Pareto plot (default: all)")
  parser.add_argument("--reference", default="equal_weight",
                      help="the method others are compared with (default equal_weight)")


def run(args: argparse.Namespace, overrides: list[str], out=None) -> int:
  from jmtl.config import ConfigError
  out = out or sys.stdout  # looked up at call time (tests capture it)
  if args.command == "plot":
    from jmtl.sweep import plots
    for path in plots.plot_curves(args.workdir, args.out):
      print(f"wrote {path}", file=out)
    return 0
  if args.sweep_command == "report":
    if overrides:
      raise ConfigError("jmtl sweep report takes no --config.KEY flags")
    return _report(args.sweep_dir, args, out)
  if not args.dir:
    raise ConfigError("jmtl sweep needs --dir DIR (the sweep directory)")
  if not args.sweep and not args.config:
    raise ConfigError("jmtl sweep needs --sweep FILE and/or --config FILE")
  from jmtl.sweep.executors import make_executor
  from jmtl.sweep.grid import build_grid
  from jmtl.sweep.manifest import FAILED
  from jmtl.sweep.runner import run_sweep
  grid = build_grid(args.sweep, args.config, overrides)
  executor = make_executor(args.executor, args.workers, cpus_per_run=args.cpus_per_run,
                           gpus_per_run=args.gpus_per_run)
  counts = run_sweep(grid, args.dir, executor, extend=args.extend, out=out)
  try:
    _report(args.dir, args, out)
  except ConfigError as e:  # e.g. every run failed: the sweep's own outcome still counts
    print(f"no report: {e}", file=out)
  return EXIT_SOME_RUNS_FAILED if counts[FAILED] else 0


def _report(sweep_dir: str, args, out) -> int:
  from jmtl.sweep import plots, report
  tasks = tuple(t for t in (args.tasks or "").split(",") if t)
  summary = report.build_report(sweep_dir, split=args.split, reference=args.reference)
  paths = report.write_report(summary, sweep_dir)
  paths += plots.plot_pareto(summary, sweep_dir, tasks)
  print(report.to_markdown(summary), file=out)
  for path in paths:
    print(f"wrote {os.path.abspath(path)}", file=out)
  return 0

"""The ``jmtl`` command: train, eval, data prepare, bench.

  jmtl train --config configs/default.py --workdir runs/default [--config.KEY=VALUE ...]
  jmtl train --workdir runs/default [--config.train.steps=N]   (resume with the saved config)
  jmtl eval  --workdir runs/default [--checkpoint STEP | --best] [--split test]
  jmtl data prepare SUITE [--data_dir DIR] [--force] [--min_label_count N] [tokenizer options]
  jmtl data inspect SUITE [--split S] [--examples N] [--task T ...] [tokenizer options]
  jmtl bench NAME [ARGS ...]          (runs benchmarks/NAME.py from the repository)
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jmtl", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  for name, help_text in (("train", "train (or resume) a multi-task model"),
                          ("eval", "evaluate a saved checkpoint")):
    p = commands.add_parser(name, help=help_text,
                            epilog="Override any config key with --config.KEY=VALUE.")
    p.add_argument("--config", help="Python file with get_config() (default: the config "
                   "saved in --workdir; required to start a run)")
    p.add_argument("--workdir", required=True, help="folder for checkpoints and logs")
    p.add_argument("--allow-data-change", action="store_true",
                   help="go on when the data differ from the checkpoint's (recorded in "
                   "WORKDIR/events.jsonl)")
    if name == "eval":
      which = p.add_mutually_exclusive_group()
      which.add_argument("--checkpoint", type=int, help="step to evaluate (default: newest)")
      which.add_argument("--best", action="store_true", help="the best checkpoint")
      p.add_argument("--split", default="validation", choices=("validation", "test", "train"))
  data = commands.add_parser("data", help="prepare and look at datasets").add_subparsers(
      dest="data_command", required=True)
  prepare = data.add_parser("prepare", help="download and build a suite; report its labels")
  inspect = data.add_parser("inspect", help="show tokenized examples with their labels")
  for p in (prepare, inspect):
    p.add_argument("suite", help="a built-in suite name, a suite .json file, or a suite "
                   "prepared earlier")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--max_len", type=int, default=64)
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--vocab_file", default=None, help="a BERT vocab.txt instead of training one")
    p.add_argument("--cased", action="store_true", help="do not lowercase")
  prepare.add_argument("--force", action="store_true", help="rebuild even if present")
  prepare.add_argument("--min_label_count", type=int, default=5,
                       help="warn about labels seen fewer times in train")
  inspect.add_argument("--split", default="train", choices=("train", "validation", "test"))
  inspect.add_argument("--examples", type=int, default=3, help="examples per input dataset")
  inspect.add_argument("--task", action="append", help="only these tasks (repeatable)")
  bench = commands.add_parser("bench", help="run a benchmark script from benchmarks/")
  bench.add_argument("name")
  bench.add_argument("args", nargs=argparse.REMAINDER)
  return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      if "=" in arg:
        overrides.append(arg[len("--config."):])
      elif i + 1 < len(argv):
        overrides.append(f"{arg[len('--config.'):]}={argv[i + 1]}")
        i += 1
      else:
        overrides.append(arg[len("--config."):])  # reported as not KEY=VALUE
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _data(args: argparse.Namespace) -> None:
  from jmtl import data
  from jmtl.data import report
  tokenizer = dict(max_len=args.max_len, lowercase=not args.cased, vocab_size=args.vocab_size,
                   vocab_file=args.vocab_file)
  if args.data_command == "prepare":
    data.prepare(args.suite, args.data_dir, force=args.force,
                 min_label_count=args.min_label_count, **tokenizer)
  else:
    suite = data.load_suite(args.suite, args.data_dir, **tokenizer)
    for line in report.inspect_lines(suite, args.split, args.examples, args.task):
      print(line)


def _bench(name: str, args: list[str]) -> None:
  root = os.path.join(os.getcwd(), "benchmarks")
  path = os.path.join(root, f"{name}.py")
  if not os.path.isfile(path):
    available = sorted(f[:-3] for f in os.listdir(root) if f.endswith(".py") and
                       not f.startswith("_")) if os.path.isdir(root) else []
    raise FileNotFoundError(f"no benchmark {name!r} in {root}"
                            + (f"; available: {', '.join(available)}" if available else
                               " (run from the repository root)"))
  sys.argv = [path, *args]
  sys.path.insert(0, os.getcwd())
  runpy.run_path(path, run_name="__main__")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  # Imports after parsing: `jmtl --help` stays fast.
  from jmtl.config import ConfigError
  from jmtl.data import DataError
  from jmtl.train.checkpoint import CheckpointError
  from jmtl.train.loop import NonFiniteLossError
  try:
    if args.command == "data":
      _data(args)
    elif args.command == "bench":
      _bench(args.name, args.args)
    else:
      from jmtl.train import loop, runs
      config = runs.config_for_workdir(args.workdir, args.config, overrides)
      if args.command == "train":
        loop.train_and_evaluate(config, args.workdir, allow_data_change=args.allow_data_change)
      else:
        loop.evaluate_checkpoint(config, args.workdir, step=args.checkpoint, best=args.best,
                                 split=args.split, allow_data_change=args.allow_data_change)
  except KeyboardInterrupt:
    return EXIT_INTERRUPTED
  except (ConfigError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError) as e:
    print(f"jmtl: error: {e}", file=sys.stderr)
    return EXIT_ERROR
  except (KeyError, TypeError, ValueError) as e:
    # Unknown balancer names and bad hyperparameters come from the balancer registry.
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"jmtl: error: {message}", file=sys.stderr)
    return EXIT_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())

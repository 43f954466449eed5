"""The ``jmtl`` command: train, eval, data prepare, bench.

  jmtl train --config configs/default.py --workdir runs/default [--config.KEY=VALUE ...]
  jmtl train --workdir runs/default [--config.train.steps=N]   (resume with the saved config)
  jmtl train ... --coordinator_address H:P --num_processes N --process_id I | --distributed
                                      (one process of a multi-host run: README, Multi-host)
  jmtl eval  --workdir runs/default [--checkpoint STEP | --best] [--split test]
  jmtl predict --workdir runs/default [--checkpoint STEP | --best] --input FILE --output FILE
  jmtl data prepare SUITE [--data_dir DIR] [--force] [--min_label_count N] [tokenizer options]
  jmtl data inspect SUITE [--split S] [--examples N] [--task T ...] [tokenizer options]
  jmtl bench NAME [ARGS ...]          (runs benchmarks/NAME.py from the repository)
  jmtl sweep | sweep report | plot    (grids of runs, their tables and plots: jmtl/sweep)
  jmtl embed --pretrained NAME_OR_DIR [--input FILE|-] [--output FILE|-]
"""

from __future__ import annotations

import argparse
import contextlib
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
    else:
      _add_distributed_flags(p)
  predict = commands.add_parser(
      "predict", help="label new text with a trained model",
      epilog="Input by extension: .txt (one text per line), .jsonl ('text', 'text' + "
             "'text_pair', or 'tokens'), .conll (one token per line, blank line between "
             "sentences). Output: one JSON line per input.")
  predict.add_argument("--workdir", required=True, help="the trained run's folder")
  which = predict.add_mutually_exclusive_group()
  which.add_argument("--checkpoint", type=int, help="step to use (default: newest)")
  which.add_argument("--best", action="store_true", help="the best checkpoint")
  predict.add_argument("--input", required=True, help="file of texts or tokens")
  predict.add_argument("--format", choices=("text", "jsonl", "conll"),
                       help="input format (default: from the extension)")
  predict.add_argument("--tasks", nargs="+", help="tasks to predict (default: all)")
  predict.add_argument("--output", required=True, help="JSON lines file ('-' = stdout)")
  predict.add_argument("--batch_size", type=int, help="default: the run's eval batch size")
  predict.add_argument("--no_progress", action="store_true", help="no progress bar")
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
  embed = commands.add_parser("embed", help="sentence embeddings (JSON lines) of one text per line")
  embed.add_argument("--pretrained", default="minilm", help="a named model or a HF BERT folder")
  embed.add_argument("--input", default="-", help="text file, one text per line (- = stdin)")
  embed.add_argument("--output", default="-", help="JSON lines file (- = stdout)")
  embed.add_argument("--batch_size", type=int, default=32)
  embed.add_argument("--max_length", type=int, default=None,
                     help="tokens per text (default: the model's own; longer texts are cut)")
  embed.add_argument("--pooling", default="mean", choices=("mean", "cls", "pooler"))
  embed.add_argument("--no_normalize", action="store_true", help="skip L2 normalisation")
  embed.add_argument("--data_dir", default=None, help="cache of named models")
  bench = commands.add_parser("bench", help="run a benchmark script from benchmarks/")
  bench.add_argument("name")
  bench.add_argument("args", nargs=argparse.REMAINDER)
  from jmtl.sweep import command as sweep_command
  sweep_command.add_parsers(commands)
  return parser


def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
  group = p.add_argument_group(
      "multi-host", "join a jax.distributed run, one process per host (README: Multi-host); "
      "each flag falls back on $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID")
  group.add_argument("--coordinator_address", metavar="HOST:PORT",
                     help="process 0's address and a free port, the same in every process")
  group.add_argument("--num_processes", type=int, metavar="N", help="processes in the run")
  group.add_argument("--process_id", type=int, metavar="I", help="this process: 0..N-1")
  group.add_argument("--distributed", action="store_true",
                     help="join, detecting what is not given from the cluster (SLURM, "
                     "Open MPI, a Cloud TPU pod slice, Kubernetes), as jax does")


def _join_distributed(args: argparse.Namespace) -> bool:
  """Joins the run the flags or environment name (before JAX starts); True if it did."""
  from jmtl.train import distributed
  request = distributed.resolve({f: getattr(args, f) for f in distributed.NAMES},
                                detect=args.distributed)
  if request is not None:
    distributed.join(request)
  return request is not None


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


def _predict(args) -> None:
  from jmtl import predict_files  # no JAX: a bad input file fails before any loading
  fmt = predict_files.input_format(args.input, args.format)
  inputs = predict_files.read_inputs(args.input, fmt)
  from jmtl import predict
  # Loading the suite logs to stdout; with --output - stdout carries only the JSON lines.
  with contextlib.redirect_stdout(sys.stderr):
    predictor = predict.Predictor.from_workdir(args.workdir, step=args.checkpoint,
                                               best=args.best, batch_size=args.batch_size)
  predictions = predictor.predict(inputs, args.tasks, progress=not args.no_progress,
                                  warn_truncated=False)
  predict_files.write_jsonl(predictions, args.output)
  source = predictor.source
  print(f"jmtl predict: {predictions.summary()}; model {source['workdir']} step "
        f"{source['step']}{' (best)' if source['best'] else ''}; wrote {args.output}",
        file=sys.stderr)


def _embed(args) -> None:
  from jmtl.pretrained.embedding import Embedder, write_jsonl
  if args.input != "-" and not os.path.isfile(args.input):
    raise FileNotFoundError(f"--input {args.input!r} does not exist")
  embedder = Embedder(args.pretrained, pooling=args.pooling, normalize=not args.no_normalize,
                      max_length=args.max_length, data_dir=args.data_dir)
  source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
  with source:
    lines = source.readlines()
  if args.output == "-":
    count = write_jsonl(embedder, lines, sys.stdout, args.batch_size)
  else:
    tmp = f"{args.output}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
      count = write_jsonl(embedder, lines, out, args.batch_size)
    os.replace(tmp, args.output)  # an existing output is replaced only by a complete one
  print(f"embedded {count} texts", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  # Imports after parsing: `jmtl --help` stays fast.
  from jmtl.config import ConfigError
  from jmtl.data import DataError
  from jmtl.interrupts import interrupt_on_signals
  from jmtl.train.checkpoint import CheckpointError
  from jmtl.train.loop import NonFiniteLossError
  try:
    if args.command == "data":
      _data(args)
    elif args.command == "embed":
      _embed(args)
    elif args.command == "bench":
      _bench(args.name, args.args)
    elif args.command in ("sweep", "plot"):
      from jmtl.sweep import command as sweep_command
      return sweep_command.run(args, overrides)
    elif args.command == "predict":
      _predict(args)
    else:
      from jmtl.train import loop, runs
      joined = args.command == "train" and _join_distributed(args)
      config = runs.config_for_workdir(args.workdir, args.config, overrides)
      if args.command == "train":
        with interrupt_on_signals():  # Ctrl-C / SIGTERM stop at a step, even if started with &
          loop.train_and_evaluate(config, args.workdir,
                                  allow_data_change=args.allow_data_change)
        if joined:
          from jmtl.train import distributed
          distributed.shutdown()
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


def run() -> None:
  """The installed ``jmtl`` command (and ``python -m jmtl.cli``): ``main`` in a process whose
  malloc backs XLA's large per-step buffers with huge pages (``jmtl.hugepages``). Tests and
  scripts call ``main(argv)`` directly, in their own process, without the restart."""
  from jmtl.hugepages import restart_with_hugepages
  restart_with_hugepages()
  sys.exit(main())


if __name__ == "__main__":
  run()

"""Fine-tuning throughput of MiniLM: jmtl against Hugging Face ``transformers`` (PyTorch).

The same model on both sides: sentence-transformers all-MiniLM-L6-v2 (6 post-LN BERT layers,
hidden 384, 22.7M parameters), the encoder weights read from the SAME model.safetensors
(jmtl through ``jmtl.pretrained``, PyTorch through ``transformers.BertModel``), mean pooling,
T classification heads (384-64-10) whose initial weights jmtl exports to the PyTorch side.
Multi-input: T batches of 32 x 128 tokens (ragged padding), one per task, each with its own
encoder forward; equal weighting (one backward of the mean loss); Adam(1e-3); dropout off.

Protocol (as benchmarks/peers/compare.py): both processes get the same intra-op threads
(``--threads``; XLA via the CPUs the process may use, PyTorch ``set_num_threads``), never run
at the same time, and alternate rounds of ``--settle`` untimed and ``--steps`` timed steps
(the side that goes first alternates). jmtl's step is compiled ahead of time (compile reported apart). Reported: median
step times, the ratio of medians, the median of per-round ratios, and the first forward's
per-task losses of both sides (must agree to 1e-5, relative).

Usage, from the repository root (the PyTorch side needs ``bash benchmarks/peers/setup.sh``)::

  python -m benchmarks.pretrained                      # writes results/pretrained.{json,md}
  python -m benchmarks.pretrained --skip-peers --repeats 2 --out /tmp/p   # jmtl side only
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402
from benchmarks.peers import compare  # noqa: E402

TARGET = 1.0  # jmtl's step / PyTorch's (issue 11)
LOSS_TOLERANCE = 1e-5


class BertTorchWorker(compare.TorchWorker):
  """``compare.TorchWorker`` running the transformers BertModel worker instead."""

  SCRIPT = "run_bert_torch.py"


def build(args):
  """(model, runner, batches, model_dir): jmtl's EW step on MiniLM, compiled."""
  import jax
  import numpy as np

  from benchmarks import grad_engine
  from jmtl import pretrained
  from jmtl.models import MultiTaskModel
  from jmtl.tasks import TaskSpec

  loaded = pretrained.load(args.pretrained, dropout=0.0, attention_dropout=0.0)
  tasks = tuple(TaskSpec(f"task{i}", "classification", 10) for i in range(args.tasks))
  model = MultiTaskModel(loaded.config, tasks, head_hidden=64, layout="multi_input")
  shape = grad_engine.Shape(vocab_size=loaded.config.vocab_size, width=loaded.config.hidden_size,
                            depth=loaded.config.num_layers, num_heads=loaded.config.num_heads,
                            mlp_width=loaded.config.intermediate_size,
                            batch_size=args.batch_size, length=args.length)
  batches = {spec.name: {k: v for k, v in grad_engine.make_batch((spec,), shape, seed=i).items()}
             for i, spec in enumerate(tasks)}
  runner = grad_engine.Runner(model, "equal_weight", "exact", batches)
  params = dict(runner.state.params)
  params["encoder"] = jax.tree.map(jax.numpy.asarray, pretrained.with_pretrained(
      jax.device_get(params["encoder"]), loaded.params))
  runner.state = runner.state.replace(params=params)
  return model, runner, batches, loaded.path, jax.tree.map(np.asarray, params)


def measure(args, workdir: pathlib.Path, log) -> dict:
  import numpy as np

  from benchmarks.peers.weights import export_params
  from jmtl import gradients

  model, runner, batches, model_dir, params = build(args)
  log(f"jmtl: lower {runner.lower_seconds:.1f} s, compile {runner.compile_seconds:.1f} s")
  jmtl_losses = np.asarray(gradients.task_losses(model, params, batches)).tolist()
  worker, torch_losses = None, None
  if not args.skip_peers:
    np.savez(workdir / "batches.npz", **{f"{t}/{k}": v for t, fields in batches.items()
                                         for k, v in fields.items()})
    heads = export_params({"heads": params["heads"]}, workdir / "heads.npz")
    worker = BertTorchWorker(compare.torch_thread_args(args),
                             _common.malloc_environment(args.peer_malloc))
    torch_losses = worker.ask({"cmd": "setup", "model_dir": str(model_dir), "heads": str(heads),
                               "batches": str(workdir / "batches.npz"),
                               "task_names": list(model.names)})["first_losses"]
    log(f"first losses: jmtl {jmtl_losses} torch {torch_losses}")
  times = {"jmtl": [], "torch": []}
  jmtl_round = lambda: _common.interleaved_times({"ew": runner}, rounds=1,
                                                 steps_per_round=args.steps,
                                                 warmup=args.settle)["ew"]
  torch_round = lambda: worker.ask({"cmd": "round", "steps": args.steps,
                                    "settle": args.settle})["times"]["ew"]
  for _ in range(args.warmup):
    jmtl_round()
    if worker:
      torch_round()
  for k in range(args.repeats):
    for side in (("torch", "jmtl") if k % 2 == 0 else ("jmtl", "torch")):
      if side == "jmtl":
        times["jmtl"].extend(jmtl_round())
      elif worker:
        times["torch"].extend(torch_round())
    log(f"round {k + 1}/{args.repeats}: jmtl {times['jmtl'][-1]:.2f} s"
        + (f", torch {times['torch'][-1]:.2f} s" if worker else ""))
  if worker:
    worker.close()
  steps = {side: _common.summarize(t) for side, t in times.items() if t}
  ratio = (steps["jmtl"]["median"] / steps["torch"]["median"]) if "torch" in steps else None
  difference = None if torch_losses is None else compare.relative_difference(
      torch_losses, jmtl_losses)
  return {"steps": steps, "samples": times, "ratio_of_medians": ratio,
          "median_of_round_ratios": None if ratio is None else _common.median_of_ratios(
              times["jmtl"], times["torch"]),
          "target": TARGET, "meets_target": None if ratio is None else ratio <= TARGET,
          "compile_seconds": runner.compile_seconds, "lower_seconds": runner.lower_seconds,
          "first_losses": {"jmtl": jmtl_losses, "torch": torch_losses,
                           "max_relative_difference": difference,
                           "agree": None if difference is None else difference <= LOSS_TOLERANCE}}


def markdown(result: dict, settings: dict) -> str:
  steps, losses = result["steps"], result["first_losses"]
  rows = [[side, _common.format_ms(s["median"]), _common.format_ms(s["q1"]),
           _common.format_ms(s["q3"]), s["n"]] for side, s in steps.items()]
  lines = [f"# MiniLM fine-tuning step: jmtl vs PyTorch (transformers BertModel)\n",
           f"T={settings['tasks']} multi-input, batch {settings['batch_size']} x "
           f"{settings['length']} per task, EW, Adam, dropout off; {settings['threads']} "
           f"thread(s); {settings['rounds']} rounds of {settings.get('settle_steps_per_round', 0)}"
           f" untimed + {settings['steps_per_round']} timed steps per side; "
           f"{settings['machine']['cpu_model']}; load "
           f"{settings['machine']['load_average_1_5_15']}. "
           f"{_common.malloc_sentence(settings.get('malloc'))}\n",
           _common.markdown_table(["side", "median ms", "q1 ms", "q3 ms", "steps"], rows), "",
           f"- jmtl / PyTorch, ratio of medians: {_common.format_ratio(result['ratio_of_medians'])}"
           f" (median of per-round ratios {_common.format_ratio(result['median_of_round_ratios'])}"
           f"; target <= {TARGET:.1f}x)",
           f"- jmtl compile: {result['compile_seconds']:.1f} s (lowering "
           f"{result['lower_seconds']:.1f} s), not in the step times",
           f"- first losses: jmtl {losses['jmtl']}, PyTorch {losses['torch']}, max relative "
           f"difference {losses['max_relative_difference']}"]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--pretrained", default="minilm")
  parser.add_argument("--tasks", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per side")
  parser.add_argument("--settle", type=int, default=1,
                      help="untimed steps at the start of every round, both sides "
                           "(benchmarks/peers/compare.py says why)")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--pin", action="store_true")
  parser.add_argument("--skip-peers", action="store_true", help="jmtl side only")
  _common.add_malloc_arguments(parser)
  parser.add_argument("--out", type=pathlib.Path, default=_common.RESULTS)
  args = parser.parse_args(argv)
  malloc = _common.apply_malloc(args.malloc)
  cpus = _common.pin_threads(args.threads if args.pin else None)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _common.xla_thread_flags(args.threads)).strip()
  import jax
  log = lambda message: print(message, flush=True)
  from benchmarks.grad_engine import warm_up_compiler
  warm_up_compiler()
  with tempfile.TemporaryDirectory(prefix="jmtl_pretrained_") as tmp:
    result = measure(args, pathlib.Path(tmp), log)
  settings = {"pretrained": args.pretrained, "tasks": args.tasks, "batch_size": args.batch_size,
              "length": args.length, "threads": args.threads, "cpus": cpus,
              "rounds": args.repeats, "steps_per_round": args.steps, "warmup_rounds": args.warmup,
              "settle_steps_per_round": args.settle,
              "xla_flags": os.environ["XLA_FLAGS"],
              "malloc": {"jmtl": malloc, "torch": args.peer_malloc},
              "machine": {**_common.machine_info(), "jax": jax.__version__}}
  payload = {"settings": settings, **result}
  json_path = _common.write_json(args.out / "pretrained.json", payload)
  md_path = args.out / "pretrained.md"
  md_path.write_text(markdown(result, settings))
  print(md_path.read_text())
  log(f"wrote {json_path}, {md_path}")


if __name__ == "__main__":
  main()

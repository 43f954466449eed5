"""jmtl against its PyTorch peers (LibMTL 1.1.5, torchjd 0.18) on the same model and data.

Run with the jmtl venv from the repository root; the PyTorch side runs in its own venv
(``benchmarks/peers/setup.sh`` creates it) as a worker process, ``run_torch.py``::

  bash benchmarks/peers/setup.sh
  .venv/bin/python -m benchmarks.peers.compare                  # T = 3, 8, 16; both layouts
  .venv/bin/python -m benchmarks.peers.compare --quick --skip-peers --out /tmp/p   # smoke test

Model (both frameworks, identical initial weights exported from jmtl): token embedding
30k x 128 + learned positions (+ the type row 0 jmtl always adds), 2 pre-LN blocks (4
heads, MLP 512), mean pool, pooler Dense 128 + tanh; T classification heads 128-64-10;
batch 32 x 64 (multi-input: T batches of 32 x 64, one per task); Adam(1e-3); no dropout.

Protocol: both processes use the same intra-op thread count, ``--threads`` (PyTorch:
``set_num_threads(n)``, one inter-op thread; XLA: ``--xla_cpu_multi_thread_eigen`` and the
CPUs it may use), and with ``--pin`` the same first n CPUs. The default
is 1 thread: on this 2-core machine, shared and oversubscribed, PyTorch's OpenMP pool at 2
threads ran the EW step 3x slower than at 1 (threads wait at barriers for a descheduled
sibling), which would measure the contention rather than the frameworks. jmtl's steps are
compiled ahead of time (compile time reported apart). After a warm-up round on each side,
``--repeats`` rounds alternate between the processes, which never run at once: in round k
the PyTorch worker runs ``--steps`` steps of each of its variants, then jmtl does the same
(the side that goes first alternates with k). Each round starts every variant with
``--settle`` untimed steps (default 1), on both sides: this machine is a VM that hands memory
freed for ~2 s back to its host (Firecracker's free page reporting), and a process that
returns its step temporaries to the OS, as jmtl does through glibc and PyTorch's caching
allocator does not, then pays heavily to touch memory again on its first step after the other
side's round (MiniLM, ``benchmarks/pretrained.py``: 6.3-10.2 s against 4.2-4.5 s, 5-12 s of
system time against 0.5 s; the same after a plain 8 s sleep). Training runs its steps back to
back, which is what the timed steps then measure; ``--settle 0`` is the protocol before
2026-12-04. Reported: medians, and ratios of medians taken in the same run. Peak memory: each variant alone in a fresh process, peak RSS
(VmHWM) after setup (jmtl: including compilation) and 3 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks import _common  # noqa: E402
from benchmarks.peers import report  # noqa: E402

PEERS = pathlib.Path(__file__).resolve().parent
TORCH_PYTHON = PEERS / ".venv" / "bin" / "python"

# name -> (jmtl balancer, hyperparameters, grad_mode); the same settings as the peers use,
# scale included: the peers' EW is the mean loss (run_torch.py), as jmtl's; their PCGrad sums
# the projected gradients, jmtl's averages unless reduction="sum"; both CAGrads rescale=1.
JMTL_VARIANTS = {
    "ew": ("equal_weight", {}, "exact"),
    "pcgrad": ("pcgrad", {"reduction": "sum"}, "exact"),
    "mgda": ("mgda", {}, "exact"),
    "cagrad": ("cagrad", {"c": 0.5, "rescale": 1}, "exact"),
    "upgrad": ("upgrad", {}, "exact"),
    "rep_pcgrad": ("pcgrad", {"reduction": "sum"}, "rep"),
}
QUICK_METHODS = ("ew", "pcgrad", "rep_pcgrad")  # --quick: a smoke test, compile time dominates
TORCH_VARIANTS = ("ew", "libmtl_pcgrad", "libmtl_mgda", "libmtl_cagrad", "torchjd_pcgrad",
                  "torchjd_mgda", "torchjd_cagrad", "torchjd_upgrad", "rep_pcgrad")


def shape_for(quick: bool):
  from benchmarks import grad_engine
  return grad_engine.QUICK if quick else grad_engine.FULL


def make_model_and_batches(shape, num_tasks: int, layout: str):
  """jmtl model with T classification heads, and the layout's batch (NumPy)."""
  from benchmarks import grad_engine
  from jmtl.models import EncoderConfig, MultiTaskModel
  from jmtl.tasks import TaskSpec

  config = EncoderConfig(vocab_size=shape.vocab_size, width=shape.width, depth=shape.depth,
                         num_heads=shape.num_heads, mlp_width=shape.mlp_width,
                         max_length=shape.length, pooled_width=shape.width, dropout=0.0,
                         attention_dropout=0.0)
  tasks = tuple(TaskSpec(f"task{i}", "classification", shape.num_labels) for i in range(num_tasks))
  model = MultiTaskModel(config, tasks, head_hidden=shape.head_hidden, layout=layout)
  if layout == "same_input":
    batch = grad_engine.make_batch(tasks, shape, seed=num_tasks)
  else:
    batch = {spec.name: grad_engine.make_batch((spec,), shape, seed=100 * num_tasks + i)
             for i, spec in enumerate(tasks)}
  return model, batch


def method_of(variant: str) -> str:
  """``libmtl_pcgrad`` -> ``pcgrad``; jmtl names and ``rep_pcgrad`` are methods already."""
  library, _, method = variant.partition("_")
  return method if library in ("libmtl", "torchjd") else variant


def jmtl_variants(layout: str, quick: bool = False) -> dict[str, tuple]:
  """The jmtl variants that exist in this checkout and apply to ``layout``."""
  from jmtl import balancers
  return {name: spec for name, spec in JMTL_VARIANTS.items()
          if spec[0] in balancers.names() and not (spec[2] == "rep" and layout != "same_input")
          and (not quick or name in QUICK_METHODS)}


def torch_variants(quick: bool) -> list[str]:
  return [v for v in TORCH_VARIANTS if not quick or method_of(v) in QUICK_METHODS]


def save_for_torch(model, params, batch, layout: str, shape, workdir: pathlib.Path,
                   quick: bool = False) -> dict:
  """Writes weights and batches for the PyTorch side; returns its ``setup`` config."""
  import numpy as np

  from benchmarks.peers.weights import export_params
  weights = export_params(params, workdir / "weights.npz")
  if layout == "same_input":
    arrays = dict(batch)
  else:
    arrays = {f"{task}/{key}": value for task, fields in batch.items() for key, value in fields.items()}
  np.savez(workdir / "batches.npz", **arrays)
  return {"cmd": "setup", "weights": str(weights), "batches": str(workdir / "batches.npz"),
          "task_names": list(model.names), "layout": layout, "variants": torch_variants(quick),
          "shape": {"vocab_size": shape.vocab_size, "width": shape.width, "depth": shape.depth,
                    "num_heads": shape.num_heads, "mlp_width": shape.mlp_width,
                    "length": shape.length, "head_hidden": shape.head_hidden,
                    "num_labels": shape.num_labels}}


def torch_thread_args(args) -> list[str]:
  """Thread options for a child process (either framework's): the same count, same pinning."""
  return ["--threads", str(args.threads)] + (["--pin"] if args.pin else [])


class TorchWorker:
  """The PyTorch process: one JSON command per line in, one JSON answer per line out."""

  SCRIPT = "run_torch.py"

  def __init__(self, thread_args: list[str], env: dict[str, str] | None = None):
    if not TORCH_PYTHON.exists():
      raise FileNotFoundError(f"{TORCH_PYTHON} is missing: run bash benchmarks/peers/setup.sh")
    self.process = subprocess.Popen(
        [str(TORCH_PYTHON), str(PEERS / self.SCRIPT), "--worker", *thread_args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def ask(self, command: dict) -> dict:
    self.process.stdin.write(json.dumps(command) + "\n")
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker died on {command['cmd']} (see its stderr above)")
    return json.loads(line)

  def close(self):
    if self.process.poll() is None:
      self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.process.stdin.flush()
      self.process.wait(timeout=60)


def relative_difference(a, b) -> float:
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def measure(shape, num_tasks: int, layout: str, args, workdir: pathlib.Path, log) -> dict:
  """Timings of every variant of both frameworks for one (T, layout), interleaved."""
  import jax
  import numpy as np

  from benchmarks import grad_engine
  from jmtl import gradients

  model, batch = make_model_and_batches(shape, num_tasks, layout)
  runners, skipped = {}, {}
  for name, (balancer, hparams, grad_mode) in JMTL_VARIANTS.items():
    if args.quick and name not in QUICK_METHODS:
      continue
    if name not in jmtl_variants(layout):
      skipped[f"jmtl/{name}"] = ("rep-grad needs one shared input" if grad_mode == "rep"
                                 else f"balancer {balancer!r} is not registered in this checkout")
      continue
    runners[name] = grad_engine.Runner(model, balancer, grad_mode, batch, hparams=hparams)
    log(f"  T={num_tasks} {layout} jmtl {name}: lower {runners[name].lower_seconds:.2f} s, "
        f"compile {runners[name].compile_seconds:.2f} s")
  params = jax.tree.map(np.asarray, runners["ew"].state.params)  # every runner starts here
  jmtl_losses = np.asarray(gradients.task_losses(model, params, batch)).tolist()

  worker, torch_losses = None, None
  if not args.skip_peers:
    worker = TorchWorker(torch_thread_args(args), _common.malloc_environment(args.peer_malloc))
    answer = worker.ask(save_for_torch(model, params, batch, layout, shape, workdir, args.quick))
    torch_losses = answer["first_losses"]
    skipped.update({f"torch/{k}": v for k, v in answer["skipped"].items()})
    log(f"  T={num_tasks} {layout} first losses: jmtl {jmtl_losses[:3]} torch {torch_losses[:3]}")

  times = {f"jmtl/{name}": [] for name in runners}
  jmtl_round = lambda: _common.interleaved_times(runners, rounds=1, steps_per_round=args.steps,
                                                 warmup=args.settle)
  torch_round = lambda: worker.ask({"cmd": "round", "steps": args.steps,
                                    "settle": args.settle})["times"]
  for _ in range(args.warmup):
    jmtl_round()
    if worker:
      torch_round()
  for k in range(args.repeats):
    order = ("torch", "jmtl") if k % 2 == 0 else ("jmtl", "torch")
    for side in order:
      if side == "jmtl":
        for name, samples in jmtl_round().items():
          times[f"jmtl/{name}"].extend(samples)
      elif worker:
        for name, samples in torch_round().items():
          times.setdefault(f"torch/{name}", []).extend(samples)
    log(f"  T={num_tasks} {layout} round {k + 1}/{args.repeats}")
  if worker:
    worker.close()
  return {
      "tasks": num_tasks, "layout": layout,
      "steps": {key: _common.summarize(samples) for key, samples in times.items()},
      "samples": times, "skipped": skipped,
      "jmtl_compile": {name: {"lower_seconds": r.lower_seconds, "compile_seconds": r.compile_seconds,
                              "xla_temp_bytes": r.xla_temp_bytes} for name, r in runners.items()},
      "first_losses": {"jmtl": jmtl_losses, "torch": torch_losses,
                       "max_relative_difference": None if torch_losses is None
                       else relative_difference(torch_losses, jmtl_losses)},
  }


def agreement(args, workdir: pathlib.Path) -> dict:
  """PCGrad with a fixed task order on one random Jacobian: LibMTL, torchjd, jmtl, NumPy."""
  import jax.numpy as jnp
  import numpy as np

  from benchmarks.peers import reference
  from jmtl import balancers

  jacobian = reference.conflicting_jacobian(num_tasks=5, dimension=4000, seed=0)
  # LibMTL, torchjd and the NumPy reference sum the projected gradients (the paper's scale).
  balancer = balancers.get("pcgrad", 5, random_order=False, reduction="sum")
  combined, _ = balancer.update(jnp.asarray(jacobian), balancer.init(None))
  result = {"num_tasks": 5, "dimension": 4000,
            "jmtl": np.asarray(combined, np.float64),
            "numpy_float64": reference.pcgrad_fixed_order(jacobian, visit_self=False),
            "numpy_float64_visit_self": reference.pcgrad_fixed_order(jacobian, visit_self=True)}
  if not args.skip_peers:
    np.savez(workdir / "jacobian.npz", jacobian=jacobian)
    out = subprocess.run([str(TORCH_PYTHON), str(PEERS / "run_torch.py"), "--agreement",
                          str(workdir / "jacobian.npz"), *torch_thread_args(args)],
                         capture_output=True, text=True, check=True)
    peers = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(libmtl=np.asarray(peers["libmtl"]), torchjd=np.asarray(peers["torchjd"]))
  return reference.agreement_summary(result)


def memory(shape, task_counts, layouts, args, workdir: pathlib.Path, log) -> list[dict]:
  """Peak RSS of each variant alone in a fresh process."""
  rows = []
  for num_tasks in task_counts:
    for layout in layouts:
      model, batch = make_model_and_batches(shape, num_tasks, layout)
      for name in jmtl_variants(layout, args.quick):
        command = [sys.executable, "-m", "benchmarks.peers.compare", "--memory-child", name,
                   "--tasks", str(num_tasks), "--layouts", layout, *torch_thread_args(args)]
        if args.quick:
          command.append("--quick")
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             cwd=PEERS.parents[1])
        rows.append({"tasks": num_tasks, "layout": layout, "library": "jmtl", "variant": name,
                     **json.loads(out.stdout.strip().splitlines()[-1])})
        log(f"  memory T={num_tasks} {layout} jmtl {name}: {rows[-1]}")
      if args.skip_peers:
        continue
      import jax
      import numpy as np
      params = jax.jit(lambda: model.init(
          jax.random.split(jax.random.PRNGKey(0))[0], batch))()  # create_train_state's init
      config = save_for_torch(model, jax.tree.map(np.asarray, params), batch, layout, shape,
                              workdir, args.quick)
      (workdir / "memory.json").write_text(json.dumps(config))
      for name in torch_variants(args.quick):
        out = subprocess.run([str(TORCH_PYTHON), str(PEERS / "run_torch.py"), "--memory", name,
                              "--config", str(workdir / "memory.json"),
                              *torch_thread_args(args)], capture_output=True, text=True, check=True)
        rows.append({"tasks": num_tasks, "layout": layout, "library": "torch", "variant": name,
                     **json.loads(out.stdout.strip().splitlines()[-1])})
        log(f"  memory T={num_tasks} {layout} torch {name}: {rows[-1]}")
  return rows


def memory_child(args) -> None:
  """One jmtl variant in this fresh process: setup + compile + 3 steps, then peak RSS."""
  from benchmarks import grad_engine
  shape = shape_for(args.quick)
  num_tasks, layout = int(args.tasks), args.layouts
  model, batch = make_model_and_batches(shape, num_tasks, layout)
  balancer, hparams, grad_mode = JMTL_VARIANTS[args.memory_child]
  runner = grad_engine.Runner(model, balancer, grad_mode, batch, hparams=hparams)
  for _ in range(3):
    runner()
  print(json.dumps({"peak_rss_mib": _common.peak_rss_mib(),
                    "xla_temp_mib": (runner.xla_temp_bytes or 0) / 2**20}))


def _reexec_with_preload(library: str) -> None:
  """Restarts this command with ``library`` in LD_PRELOAD (once; a no-op when it is there)."""
  if not os.path.isfile(library):
    raise SystemExit(f"compare: --preload {library}: no such file")
  if library in os.environ.get("LD_PRELOAD", "").split(":"):
    return
  from jmtl import hugepages
  hugepages.restart(dict(os.environ, LD_PRELOAD=":".join(
      filter(None, (library, os.environ.get("LD_PRELOAD"))))))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tasks", default="3,8,16")
  parser.add_argument("--layouts", default="same_input,multi_input")
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
  parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per side")
  parser.add_argument("--settle", type=int, default=1,
                      help="untimed steps of each variant at the start of every round, both "
                           "sides (see the module docstring)")
  parser.add_argument("--threads", type=int, default=1,
                      help="intra-op threads of both frameworks (see the module docstring)")
  parser.add_argument("--pin", action="store_true",
                      help="also pin both processes to the first --threads CPUs")
  parser.add_argument("--quick", action="store_true",
                      help="tiny model, T = 3, same input, EW and PCGrad only, 2 rounds")
  parser.add_argument("--skip-peers", action="store_true", help="jmtl side only (no torch venv)")
  parser.add_argument("--skip-memory", action="store_true")
  parser.add_argument("--preload", default=None, metavar="LIBRARY",
                      help="LD_PRELOAD this allocator into both frameworks' processes, e.g. "
                           "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
  _common.add_malloc_arguments(parser)
  parser.add_argument("--out", type=pathlib.Path, default=_common.RESULTS)
  parser.add_argument("--memory-child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.preload:
    _reexec_with_preload(args.preload)  # children (torch worker, memory runs) inherit it
  malloc = _common.apply_malloc(args.malloc)
  # Before JAX starts: same CPUs and intra-op threads as the PyTorch worker gets.
  cpus = _common.pin_threads(args.threads if args.pin else None)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _common.xla_thread_flags(args.threads)).strip()
  if args.memory_child:
    return memory_child(args)

  import jax

  shape = shape_for(args.quick)
  task_counts = [int(t) for t in args.tasks.split(",")]
  layouts = args.layouts.split(",")
  if args.quick:  # a smoke test: tiny model, T = 3, same input, EW and PCGrad (exact, rep)
    task_counts, layouts, args.repeats, args.steps, args.warmup = [3], ["same_input"], 2, 1, 1
  log = lambda message: print(message, flush=True)
  log(f"compare: T={task_counts} layouts={layouts} {shape}, CPUs {cpus}, jax {jax.__version__}, "
      f"peers {'skipped' if args.skip_peers else TORCH_PYTHON}")
  from benchmarks.grad_engine import warm_up_compiler
  warm_up_compiler()
  with tempfile.TemporaryDirectory(prefix="jmtl_peers_") as tmp:
    workdir = pathlib.Path(tmp)
    agree = agreement(args, workdir)
    log(f"agreement: {agree['relative_errors']}")
    runs = [measure(shape, t, layout, args, workdir, log) for t in task_counts for layout in layouts]
    memory_rows = [] if args.skip_memory else memory(shape, task_counts, layouts, args, workdir, log)
  payload = report.build_payload(runs, memory_rows, agree, {
      "shape": shape.__dict__, "quick": args.quick, "skip_peers": args.skip_peers,
      "threads": args.threads, "cpus": cpus, "xla_flags": os.environ["XLA_FLAGS"],
      "ld_preload": os.environ.get("LD_PRELOAD") or None,
      "malloc": {"jmtl": malloc, "torch": args.peer_malloc},
      "torch_threads": f"torch.set_num_threads({args.threads}), set_num_interop_threads(1)",
      "rounds": args.repeats, "steps_per_round": args.steps, "warmup_rounds": args.warmup,
      "settle_steps_per_round": args.settle,
      "machine": {**_common.machine_info(), "jax": jax.__version__}})
  paths = report.write(payload, args.out)
  print(report.markdown(payload))
  log("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
  main()

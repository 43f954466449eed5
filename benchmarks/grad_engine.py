"""Cost of per-task gradients in the train step, as ratios to the equal-weight step.

For T tasks on one shared text encoder, times the compiled train step of

* ``ew``: equal weighting, one backward of the mean loss (the baseline);
* ``pcgrad_exact``: PCGrad on exact per-task gradients of every shared parameter;
* ``pcgrad_rep``: PCGrad on gradients w.r.t. the shared representation (rep-grad);
* ``gradnorm``: GradNorm (exact per-task gradients);
* ``graddrop``: GradDrop, which reads the whole T x P Jacobian (the exact-Jacobian path);

on a *same-input* batch (one batch of 32 x 64 tokens carrying all T tasks' labels) and, for
``ew`` and ``pcgrad_exact``, on a *multi-input* batch (T batches of 32 x 64 tokens, one per
task: each task sees as many tokens as in the same-input layout, so the multi-input EW step
does T times the work of the same-input one; ratios compare like with like). Every ratio
divides by the EW step of the same layout, measured in the same run.

Model: token embedding 30k x 128 + learned positions, 2 pre-LN blocks (4 heads, MLP 512),
mean pool, pooler 128; tasks alternate classification (head 128-64-10) and tagging (10
tags); Adam(1e-3); dropout off (it would only add RNG work that both sides share).

Protocol: every variant is compiled ahead of time (``jit(...).lower(...).compile()``, timed:
tracing + lowering and XLA compilation are reported apart), run for ``--warmup`` untimed
rounds, then ``--repeats`` rounds round robin over variants, ``--steps`` timed steps per
variant per round, each ended with ``jax.block_until_ready``. Reported: median step time,
and its ratio to the median EW step of the same layout; the method family (the path its
gradients take: loss-only, Gram, Jacobian, rep-grad); XLA's memory account of the compiled
step (arguments + outputs + temporaries, and the temporaries alone); and, over the T values
run, each variant's growth: the least-squares slope of step time in T (ms per added task)
and the exponent of a log-log fit (1 = linear in T).

``--gram_compile T`` compiles every Gram-family balancer of the registry at T tasks (same
input) beside EW and reports each compile time against EW's (target: within 2x at T = 64):
a method whose solver unrolls T x T work in Python shows there.

Usage, from the repository root::

  python -m benchmarks.grad_engine                    # T = 3, 8, 16; writes results/grad_engine.{json,md}
  python -m benchmarks.grad_engine --tasks 8 --repeats 9
  python -m benchmarks.grad_engine --quick --out /tmp/ge   # tiny model, T = 3 (the test)
  python -m benchmarks.grad_engine --tasks 32,64 --repeats 3 --steps 1 --warmup 1 \
      --gram_compile 64 --name grad_engine_large
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

# Targets from the core-engine issue, as (variant, layout, T or None for every T, max ratio).
STEP_TARGETS = (
    ("pcgrad_exact", "same_input", 8, 4.0),
    ("pcgrad_exact", "multi_input", None, 1.15),
    ("pcgrad_rep", "same_input", None, 1.10),
)
COMPILE_TARGET = ("pcgrad_exact", "same_input", 16, 1.5)  # compile time vs EW's
GRAM_COMPILE_LIMIT = 2.0  # every Gram method's compile time vs EW's, at --gram_compile T


@dataclasses.dataclass(frozen=True)
class Shape:
  """Model and batch sizes of one benchmark configuration."""
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  mlp_width: int
  batch_size: int
  length: int
  num_labels: int = 10
  head_hidden: int = 64


FULL = Shape(vocab_size=30_000, width=128, depth=2, num_heads=4, mlp_width=512,
             batch_size=32, length=64)
QUICK = Shape(vocab_size=500, width=16, depth=1, num_heads=2, mlp_width=32,
              batch_size=4, length=8)

# (name, balancer, grad_mode, layout)
VARIANTS = (
    ("ew", "equal_weight", "exact", "same_input"),
    ("pcgrad_exact", "pcgrad", "exact", "same_input"),
    ("pcgrad_rep", "pcgrad", "rep", "same_input"),
    ("gradnorm", "gradnorm", "exact", "same_input"),
    ("graddrop", "graddrop", "exact", "same_input"),
    ("ew", "equal_weight", "exact", "multi_input"),
    ("pcgrad_exact", "pcgrad", "exact", "multi_input"),
)


def task_specs(num_tasks: int, num_labels: int):
  """Alternating sentence classification and token tagging tasks."""
  from jmtl.tasks import TaskSpec
  return tuple(TaskSpec(f"cls{i}", "classification", num_labels) if i % 2 == 0
               else TaskSpec(f"tag{i}", "tagging", num_labels) for i in range(num_tasks))


def make_batch(tasks, shape: Shape, seed: int) -> dict[str, Any]:
  """A batch with ragged padding (lengths in [L/2, L]) and labels for ``tasks``."""
  import numpy as np
  rng = np.random.default_rng(seed)
  b, length = shape.batch_size, shape.length
  lengths = rng.integers(length // 2, length + 1, b)
  attention = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  batch = {"input_ids": (rng.integers(1, shape.vocab_size, (b, length)) * attention).astype(np.int32),
           "attention_mask": attention}
  for spec in tasks:
    if spec.token_level:
      batch[spec.label_key] = rng.integers(0, spec.num_labels, (b, length)).astype(np.int32)
      batch[spec.mask_key] = attention.astype(np.float32)
    else:
      batch[spec.label_key] = rng.integers(0, spec.num_labels, b).astype(np.int32)
      batch[spec.mask_key] = np.ones(b, np.float32)
  return batch


def encoder_config(shape: Shape):
  from jmtl.models import EncoderConfig
  return EncoderConfig(vocab_size=shape.vocab_size, width=shape.width, depth=shape.depth,
                       num_heads=shape.num_heads, mlp_width=shape.mlp_width,
                       max_length=shape.length, pooled_width=shape.width, dropout=0.0,
                       attention_dropout=0.0)


class Runner:
  """One compiled variant and its (donated, hence replaced every step) train state."""

  def __init__(self, model, balancer_name: str, grad_mode: str, batch, seed: int = 0,
               hparams: dict | None = None):
    import jax
    import optax

    from jmtl import balancers
    from jmtl.train.parallel import make_train_step
    from jmtl.train.state import create_train_state

    balancer = balancers.get(balancer_name, len(model.tasks), **(hparams or {}))
    optimizer = optax.adam(1e-3)
    example = batch
    self.state = jax.jit(lambda: create_train_state(model, balancer, optimizer, example, seed))()
    self.batch = jax.device_put(batch)
    step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode, dropout=False,
                           log_cosines=False)
    # The jax.jit object this batch runs (every task present: no per-count solvers),
    # lowered here so compile time is measured apart.
    jitted = step.jitted_for(self.batch)
    start = time.perf_counter()
    lowered = jitted.lower(self.state, self.batch)
    traced = time.perf_counter()
    self.compiled = lowered.compile()
    done = time.perf_counter()
    self.lower_seconds = traced - start
    self.compile_seconds = done - traced
    analysis = self.compiled.memory_analysis()
    # XLA's own account of the step's buffers: arguments + outputs + temporaries.
    self.xla_temp_bytes = int(analysis.temp_size_in_bytes)
    self.xla_total_bytes = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                               + analysis.temp_size_in_bytes)

  def __call__(self):
    import jax
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics


def warm_up_compiler() -> None:
  """Compiles a small gradient once, so the first measured compile pays no one-time setup."""
  import jax
  import jax.numpy as jnp
  loss = lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2)
  jax.jit(jax.grad(loss)).lower(jnp.ones((8, 8)), jnp.ones((4, 8))).compile()


def run(shape: Shape, task_counts, repeats: int, steps: int, warmup: int, variants=VARIANTS,
        log=print):
  """Measures ``variants`` at every T; returns the JSON-ready result rows."""
  import numpy as np

  from jmtl.models import MultiTaskModel

  config = encoder_config(shape)
  warm_up_compiler()
  rows = []
  for num_tasks in task_counts:
    tasks = task_specs(num_tasks, shape.num_labels)
    models = {layout: MultiTaskModel(config, tasks, head_hidden=shape.head_hidden, layout=layout)
              for layout in ("same_input", "multi_input")}
    batches = {
        "same_input": make_batch(tasks, shape, seed=num_tasks),
        "multi_input": {spec.name: make_batch((spec,), shape, seed=100 * num_tasks + i)
                        for i, spec in enumerate(tasks)},
    }
    runners = {}
    for name, balancer, grad_mode, layout in variants:
      runner = Runner(models[layout], balancer, grad_mode, batches[layout])
      runners[(name, layout)] = runner
      log(f"  T={num_tasks} {layout:<11} {name:<13} lower {runner.lower_seconds:6.2f} s  "
          f"compile {runner.compile_seconds:6.2f} s")
    for runner in runners.values():  # losses must be finite, or the timing means nothing
      losses = np.asarray(runner()["losses"])
      if not np.all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite losses {losses}")
    times = _common.interleaved_times(
        {f"{layout}/{name}": runner for (name, layout), runner in runners.items()},
        rounds=repeats, steps_per_round=steps, warmup=warmup,
        on_round=lambda k: log(f"  T={num_tasks} round {k + 1}/{repeats}"))
    for (name, layout), runner in runners.items():
      samples = times[f"{layout}/{name}"]
      baseline_samples = times[f"{layout}/ew"]
      baseline = runners[("ew", layout)]
      summary = _common.summarize(samples)
      base_summary = _common.summarize(baseline_samples)
      compile_total = runner.lower_seconds + runner.compile_seconds
      base_compile = baseline.lower_seconds + baseline.compile_seconds
      rows.append({
          "tasks": num_tasks, "layout": layout, "variant": name,
          "family": family(*next((b, g) for n, b, g, l in variants if (n, l) == (name, layout))),
          "xla_total_mb": runner.xla_total_bytes / 2**20,
          "xla_temp_mb": runner.xla_temp_bytes / 2**20,
          "step_seconds": summary,
          "ratio_to_ew": summary["median"] / base_summary["median"],
          "median_of_paired_ratios": _common.median_of_ratios(samples, baseline_samples),
          "lower_seconds": runner.lower_seconds, "compile_seconds": runner.compile_seconds,
          "compile_ratio_to_ew": compile_total / base_compile,
      })
  return rows


def family(balancer: str, grad_mode: str) -> str:
  """The gradient path a variant takes: rep-grad, or what the balancer needs."""
  from jmtl import balancers
  if grad_mode == "rep":
    return "rep-grad"
  return {"losses": "loss-only", "gram": "Gram", "jacobian": "Jacobian"}[
      balancers.info(balancer).needs]


def growth(rows):
  """Per (layout, variant) measured at two or more T: ms per added task (least-squares slope)
  and the exponent of step time in T (log-log slope), beside EW's."""
  import numpy as np
  out = []
  keys = dict.fromkeys((r["layout"], r["variant"]) for r in rows)
  for layout, variant in keys:
    mine = sorted((r["tasks"], r["step_seconds"]["median"] * 1e3) for r in rows
                  if (r["layout"], r["variant"]) == (layout, variant))
    if len(mine) < 2:
      continue
    t, ms = np.array(mine, dtype=float).T
    out.append({"layout": layout, "variant": variant,
                "family": next(r["family"] for r in rows
                               if (r["layout"], r["variant"]) == (layout, variant)),
                "tasks": [int(x) for x in t], "ms_per_task": float(np.polyfit(t, ms, 1)[0]),
                "exponent": float(np.polyfit(np.log(t), np.log(ms), 1)[0])})
  return out


def gram_compile(shape: Shape, num_tasks: int, log=print, methods=None):
  """Compile seconds (trace + lower + XLA) of EW and of every Gram-family balancer (or of
  ``methods``) at T."""
  from jmtl import balancers
  from jmtl.models import MultiTaskModel
  tasks = task_specs(num_tasks, shape.num_labels)
  model = MultiTaskModel(encoder_config(shape), tasks, head_hidden=shape.head_hidden,
                         layout="same_input")
  batch = make_batch(tasks, shape, seed=num_tasks)
  warm_up_compiler()
  names = ["equal_weight"] + list(methods or [n for n in balancers.names()
                                              if balancers.info(n).needs == "gram"])
  seconds = {}
  for name in names:
    runner = Runner(model, name, "exact", batch)
    seconds[name] = runner.lower_seconds + runner.compile_seconds
    log(f"  gram compile T={num_tasks} {name:<14} {seconds[name]:6.2f} s")
  return [{"tasks": num_tasks, "balancer": name, "compile_seconds": seconds[name],
           "ratio_to_ew": seconds[name] / seconds["equal_weight"],
           "met": seconds[name] / seconds["equal_weight"] <= GRAM_COMPILE_LIMIT}
          for name in names[1:]]


def targets(rows):
  """Each target with the measured value and whether it was met."""
  out = []
  for variant, layout, num_tasks, limit in STEP_TARGETS:
    for row in rows:
      if (row["variant"], row["layout"]) == (variant, layout) and num_tasks in (None, row["tasks"]):
        out.append({"what": f"{variant} {layout} step / EW step", "tasks": row["tasks"],
                    "limit": limit, "value": row["ratio_to_ew"],
                    "met": row["ratio_to_ew"] <= limit})
  variant, layout, num_tasks, limit = COMPILE_TARGET
  for row in rows:
    if (row["variant"], row["layout"], row["tasks"]) == (variant, layout, num_tasks):
      out.append({"what": f"{variant} {layout} compile / EW compile", "tasks": num_tasks,
                  "limit": limit, "value": row["compile_ratio_to_ew"],
                  "met": row["compile_ratio_to_ew"] <= limit})
  return out


def tables(rows, target_rows) -> str:
  steps = _common.markdown_table(
      ["T", "layout", "variant", "family", "median ms", "ratio to EW", "paired ratio",
       "lower s", "compile s", "compile / EW", "XLA MB", "temp MB"],
      [[r["tasks"], r["layout"], r["variant"], r["family"],
        _common.format_ms(r["step_seconds"]["median"]),
        _common.format_ratio(r["ratio_to_ew"]), _common.format_ratio(r["median_of_paired_ratios"]),
        f"{r['lower_seconds']:.2f}", f"{r['compile_seconds']:.2f}",
        _common.format_ratio(r["compile_ratio_to_ew"]), f"{r['xla_total_mb']:.0f}",
        f"{r['xla_temp_mb']:.0f}"] for r in rows])
  goals = _common.markdown_table(
      ["target", "T", "limit", "measured", "met"],
      [[t["what"], t["tasks"], f"<= {t['limit']:.2f}x", _common.format_ratio(t["value"]),
        "yes" if t["met"] else "NO"] for t in target_rows])
  return steps + "\n\n" + goals


def growth_table(growth_rows) -> str:
  return _common.markdown_table(
      ["layout", "variant", "family", "T", "ms per added task", "exponent in T"],
      [[g["layout"], g["variant"], g["family"], ",".join(map(str, g["tasks"])),
        f"{g['ms_per_task']:.1f}", f"{g['exponent']:.2f}"] for g in growth_rows])


def gram_compile_table(compile_rows) -> str:
  return _common.markdown_table(
      ["balancer", "T", "compile s", "compile / EW", f"<= {GRAM_COMPILE_LIMIT:.1f}x"],
      [[c["balancer"], c["tasks"], f"{c['compile_seconds']:.2f}",
        _common.format_ratio(c["ratio_to_ew"]), "yes" if c["met"] else "NO"]
       for c in compile_rows])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tasks", default="3,8,16", help="comma-separated task counts T")
  parser.add_argument("--repeats", type=int, default=7, help="timed rounds over all variants")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin the process to this many CPUs (default: all allowed)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny model, T = 3, 2 rounds, no GradNorm or GradDrop: a smoke "
                      "test of the script")
  parser.add_argument("--out", type=pathlib.Path, default=_common.RESULTS,
                      help="directory for the results")
  parser.add_argument("--name", default="grad_engine", help="file stem of the results")
  parser.add_argument("--gram_compile", type=int, default=0,
                      help="also compile every Gram method at this T against EW (0 = no)")
  args = parser.parse_args(argv)
  cpus = _common.pin_threads(args.threads)  # before JAX starts its thread pool

  import jax

  shape, task_counts = FULL, [int(t) for t in args.tasks.split(",")]
  repeats, steps, warmup = args.repeats, args.steps, args.warmup
  variants = VARIANTS
  if args.quick:  # compilation dominates here: leave out GradNorm, the slowest to compile
    shape, task_counts, repeats, steps, warmup = QUICK, [3], 2, 1, 1
    variants = tuple(v for v in VARIANTS if v[0] not in ("gradnorm", "graddrop"))
  print(f"grad_engine: T={task_counts}, {shape}, {repeats} rounds x {steps} steps, "
        f"CPUs {cpus}, jax {jax.__version__}", flush=True)
  rows = run(shape, task_counts, repeats, steps, warmup, variants,
             log=lambda message: print(message, flush=True))
  target_rows = targets(rows)
  growth_rows = growth(rows)
  compile_rows = (gram_compile(shape, args.gram_compile,
                               log=lambda message: print(message, flush=True))
                  if args.gram_compile else [])
  report = tables(rows, target_rows)
  if growth_rows:
    report += "\n\nGrowth in T (from the step medians above):\n\n" + growth_table(growth_rows)
  if compile_rows:
    report += (f"\n\nCompile time of every Gram method at T = {args.gram_compile} (same "
               f"input) against EW's:\n\n" + gram_compile_table(compile_rows))
  print()
  print(report)
  payload = {
      "benchmark": "grad_engine",
      "note": "ratios to the equal-weight step of the same layout, measured in the same run on "
              "a shared, noisy machine; absolute times are indicative only",
      "shape": dataclasses.asdict(shape), "quick": args.quick,
      "multi_input_batch": f"{shape.batch_size} x {shape.length} per task (T batches)",
      "protocol": {"rounds": repeats, "steps_per_round": steps, "warmup_rounds": warmup,
                   "order": "round robin over variants", "summary": "median"},
      "machine": {**_common.machine_info(), "jax": jax.__version__, "cpus_used": cpus},
      "results": rows, "targets": target_rows, "growth": growth_rows,
      "gram_compile": compile_rows,
  }
  path = _common.write_json(args.out / f"{args.name}.json", payload)
  notes = (f"# Per-task gradient cost (jmtl train step)\n\n{payload['note']}.\n\n"
           f"Model/batch: `{dataclasses.asdict(shape)}`; multi-input: "
           f"{payload['multi_input_batch']}. Protocol: {repeats} rounds x {steps} steps, round "
           f"robin over variants after {warmup} warm-up round(s); medians. 'paired ratio': median "
           f"over samples taken in the same round. Compile: `jit(...).lower(...).compile()`, "
           f"trace+lower and XLA compile apart; the ratio is of their sum.\n\n")
  (args.out / f"{args.name}.md").write_text(notes + report + "\n")
  print(f"\nwrote {path} and {args.name}.md")


if __name__ == "__main__":
  main()

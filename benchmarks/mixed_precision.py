"""bfloat16 vs float32 compute on ud_tr: the loss gap and the step time ratio, side by side.

Two runs of ``configs/ud_tr.py`` (equal weighting by default; ``--balancer`` for another)
built by ``jmtl.train.loop.build_experiment``, identical but ``model.dtype``: same init
(float32 master weights in both), same batches, same dropout masks. They advance in lockstep,
one step of each per batch, the order alternating, every step timed on its own; the first
step of every batch shape (its compile) is left out. Reported:

* the loss gap: per task, ``|bf16 - f32| / f32`` of the mean loss over the last fifth of the
  steps, and the largest such gap of a 10-step moving average anywhere in the run;
* the step time ratio bf16/f32: median and quartiles over the paired steps, and the median
  of each of ``--blocks`` consecutive blocks (the repeats: how much it moves during the run);
* a matmul micro-benchmark at the model's MLP shape (tokens x width @ width x mlp_width), the
  same ratio for XLA:CPU's dot alone.

Which dtype where. This project's machine is an AMD EPYC (Zen 4) with ``avx512_bf16`` and
no AMX (its ``/proc/cpuinfo`` flags; ``cpu_bf16_flags`` reads them). XLA:CPU (jax 0.12)
lowers a bf16 dot to its YNNPACK fusion, which uses those instructions: a bf16 dot alone
at the ud_tr MLP shape (2048 x 128 @ 128 x 512) took 0.54x the CPU time of the float32
dot, measured on 2026-12-02 (the matmul line of the results repeats it). A train step is more than its dots
(elementwise ops, the float32 islands and the casts around them), so the step ratio in
``results/mixed_precision.md`` decides:

* CPU with ``avx512_bf16`` or AMX: ``model.dtype=bfloat16`` when the measured step ratio is
  below 1 for your model's shapes and the loss gap is acceptable (the benchmark reports both);
  otherwise, and on CPUs with neither flag (bf16 is then emulated), keep float32 (the default).
* TPUs and GPUs with bf16 matrix units (A100, H100): ``model.dtype=bfloat16`` with
  ``model.param_dtype=float32``: activations and matmuls in bf16 halve activation memory and
  use the matrix units; float32 master weights, losses, softmaxes, LayerNorm statistics and
  balancers keep training where the float32 run goes (``jmtl.models.precision``).
* ``model.param_dtype=bfloat16`` (params and Adam moments in bf16) only when memory forces
  it: an update smaller than half a bf16 ulp of its weight is lost.

Usage, from the repository root (builds ud_tr into ``$JMTL_DATA_DIR`` on first use)::

  python -m benchmarks.mixed_precision --steps 100        # writes results/mixed_precision.*
  python -m benchmarks.mixed_precision --steps 10 --out /tmp/mp   # smoke run
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "ud_tr.py"
DTYPES = ("float32", "bfloat16")


class Run:
  """One dtype's experiment: its compiled step and (donated, so replaced) state."""

  def __init__(self, dtype: str, args):
    import jax
    from jmtl.config import load_config
    from jmtl.train import loop
    from jmtl.train.parallel import make_train_step

    overrides = [f"model.dtype={dtype}", f"train.steps={args.steps}",
                 f"balancer.name={args.balancer}", f"data.data_dir={args.data_dir}"]
    self.config = load_config(str(CONFIG), overrides)
    experiment = loop.build_experiment(self.config)
    self.names = experiment.model.names
    self.iterator = loop.train_iterator(self.config, experiment.suite, experiment.tasks)
    self.state = jax.jit(experiment.create_state)()
    self.step = make_train_step(experiment.model, experiment.balancer, experiment.optimizer,
                                grad_mode=self.config.grad_mode, log_cosines=False)

  def batch(self):
    return next(self.iterator)

  def __call__(self, batch):
    import jax
    self.state, metrics = self.step(self.state, batch)
    return jax.device_get(jax.block_until_ready(metrics["losses"]))


def _shape_key(batch) -> tuple:
  import jax
  return tuple(sorted((jax.tree_util.keystr(k), v.shape)
                      for k, v in jax.tree_util.tree_flatten_with_path(batch)[0]))


def train_in_lockstep(runs: dict[str, Run], steps: int):
  """Per dtype: ``[steps, T]`` losses and the step times, ``(wall, process CPU)`` seconds
  (compile steps as None)."""
  losses = {d: [] for d in runs}
  times = {d: [] for d in runs}
  seen = set()
  for i in range(steps):
    batches = {d: run.batch() for d, run in runs.items()}  # same seed: the same batches
    key = _shape_key(batches[DTYPES[0]])
    first = key not in seen
    seen.add(key)
    order = list(runs) if i % 2 == 0 else list(reversed(runs))
    for d in order:
      start, cpu = time.perf_counter(), time.process_time()
      losses[d].append([float(x) for x in runs[d](batches[d])])
      wall, cpu = time.perf_counter() - start, time.process_time() - cpu
      times[d].append(None if first else (wall, cpu))
  return losses, times


def loss_gap(f32, bf16, names, window: int = 10) -> dict:
  import numpy as np
  f32, bf16 = np.asarray(f32), np.asarray(bf16)
  tail = max(1, len(f32) // 5)
  smooth = lambda x: np.stack([np.convolve(x[:, t], np.ones(window) / window, "valid")
                               for t in range(x.shape[1])], 1)
  moving = np.abs(smooth(bf16) - smooth(f32)) / np.abs(smooth(f32))
  end_f32, end_bf16 = f32[-tail:].mean(0), bf16[-tail:].mean(0)
  return {name: {"f32_tail_mean": float(end_f32[t]), "bf16_tail_mean": float(end_bf16[t]),
                 "tail_relative_gap": float(abs(end_bf16[t] - end_f32[t]) / abs(end_f32[t])),
                 "max_moving_relative_gap": float(moving[:, t].max())}
          for t, name in enumerate(names)}


def step_ratios(times: dict[str, list], blocks: int, clock: int) -> dict:
  """``clock`` 0: wall time; 1: the process's CPU time (with one pinned thread, the time
  the step computed, robust to other processes taking the core)."""
  pairs = [(b[clock], f[clock]) for b, f in zip(times["bfloat16"], times["float32"])
           if b is not None and f is not None]
  ratios = [b / f for b, f in pairs]
  size = max(1, len(ratios) // blocks)
  chunks = [ratios[i:i + size] for i in range(0, size * blocks, size) if ratios[i:i + size]]
  return {"paired_steps": len(ratios),
          "ratio": _common.summarize(ratios),
          "block_medians": [statistics.median(c) for c in chunks],
          "f32_step_s": _common.summarize([f for _, f in pairs]),
          "bf16_step_s": _common.summarize([b for b, _ in pairs])}


def matmul_ratio(tokens: int, width: int, mlp_width: int, rounds: int) -> dict:
  import jax
  import jax.numpy as jnp
  key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
  calls = {}
  for dtype in DTYPES:
    x = jax.random.normal(key_x, (tokens, width)).astype(dtype)
    w = jax.random.normal(key_w, (width, mlp_width)).astype(dtype)
    fn = jax.jit(jnp.dot)
    calls[dtype] = lambda fn=fn, x=x, w=w: jax.block_until_ready(fn(x, w))
  times = {d: [] for d in DTYPES}
  for d in DTYPES:
    calls[d]()
  for _ in range(rounds):  # process CPU time per call, round robin
    for d in DTYPES:
      start = time.process_time()
      for _ in range(5):
        calls[d]()
      times[d].append((time.process_time() - start) / 5)
  return {"shape": [tokens, width, mlp_width],
          "ratio": _common.median_of_ratios(times["bfloat16"], times["float32"]),
          "f32_s": _common.summarize(times["float32"])["median"],
          "bf16_s": _common.summarize(times["bfloat16"])["median"]}


def cpu_bf16_flags() -> list[str]:
  try:
    flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
  except OSError:
    return []
  return sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16")


def _markdown(payload: dict) -> str:
  gaps = payload["loss_gap"]
  gap_table = _common.markdown_table(
      ["task", "f32 tail loss", "bf16 tail loss", "tail gap", "max 10-step gap"],
      [[t, f"{g['f32_tail_mean']:.4f}", f"{g['bf16_tail_mean']:.4f}",
        f"{100 * g['tail_relative_gap']:.2f}%", f"{100 * g['max_moving_relative_gap']:.2f}%"]
       for t, g in gaps.items()])
  m = payload["matmul"]
  lines = []
  for key, what in (("step_cpu_time", "process CPU time"), ("step_time", "wall time")):
    s = payload[key]
    r = s["ratio"]
    lines.append(
        f"* {what}: bf16/f32 median {r['median']:.2f}x (quartiles {r['q1']:.2f}-"
        f"{r['q3']:.2f}) over {s['paired_steps']} paired steps; block medians "
        f"{', '.join(f'{b:.2f}' for b in s['block_medians'])}; median step f32 "
        f"{_common.format_ms(s['f32_step_s']['median'])} ms, bf16 "
        f"{_common.format_ms(s['bf16_step_s']['median'])} ms")
  return (
      f"# Mixed precision on ud_tr: bfloat16 vs float32\n\n"
      f"N = {payload['steps']} steps of configs/ud_tr.py ({payload['balancer']}), both dtypes "
      f"in lockstep on the same batches, {payload['threads']} pinned thread(s), under `nice`, "
      f"{payload['machine']['time']}, load average {payload['machine']['load_average_1_5_15']}."
      f" CPU: {payload['machine']['cpu_model']}; bf16 flags: "
      f"{', '.join(payload['cpu_bf16_flags']) or 'none'}.\n\n"
      f"## Loss gap (bf16 vs f32)\n\nTail: mean of the last fifth of the steps.\n\n"
      f"{gap_table}\n\n## Step time\n\n" + "\n".join(lines) +
      f"\n\nXLA:CPU dot alone at the MLP shape {' x '.join(map(str, m['shape']))} (process "
      f"CPU time): bf16/f32 {m['ratio']:.2f}x (f32 {_common.format_ms(m['f32_s'])} ms, bf16 "
      f"{_common.format_ms(m['bf16_s'])} ms).\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--balancer", default="equal_weight")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--blocks", type=int, default=5, help="repeats of the ratio")
  parser.add_argument("--data-dir", default=os.environ.get("JMTL_DATA_DIR", ""))
  parser.add_argument("--out", default=str(_common.RESULTS), help="folder for json and md")
  args = parser.parse_args(argv)
  _common.pin_threads(args.threads)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _common.xla_thread_flags(args.threads)).strip()
  runs = {dtype: Run(dtype, args) for dtype in DTYPES}
  losses, times = train_in_lockstep(runs, args.steps)
  model = runs["float32"].config.model
  tokens = runs["float32"].config.data.batch_size * max(runs["float32"].config.data.buckets)
  payload = {
      "machine": _common.machine_info(), "cpu_bf16_flags": cpu_bf16_flags(),
      "steps": args.steps, "balancer": args.balancer, "threads": args.threads,
      "loss_gap": loss_gap(losses["float32"], losses["bfloat16"], runs["float32"].names),
      "step_time": step_ratios(times, args.blocks, clock=0),
      "step_cpu_time": step_ratios(times, args.blocks, clock=1),
      "matmul": matmul_ratio(tokens, model.width, model.mlp_width, rounds=20),
      "losses": losses,
  }
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  _common.write_json(out / "mixed_precision.json", payload)
  markdown = _markdown(payload)
  (out / "mixed_precision.md").write_text(markdown)
  print(markdown)


if __name__ == "__main__":
  main()

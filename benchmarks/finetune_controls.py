"""What the fine-tuning controls cost: step time and XLA temporary memory of the train step.

Variants, each with equal weighting (one backward) and PCGrad (exact per-task gradients),
T tasks on one same-input batch, on the grad_engine benchmark's encoder:

* ``plain``: AdamW, the optimizer without controls (the baseline of each balancer);
* ``remat``: ``train.remat=True`` (``nn.remat`` around every encoder block);
* ``freeze``: ``optimizer.freeze=("embed",)`` and ``freeze_layers=1`` (multi_transform with
  set_to_zero: no Adam moments for frozen leaves; the step still computes their gradients);
* ``llrd``: ``optimizer.layer_decay=0.8`` and a head learning rate (one multiply per leaf).

Every variant is compiled ahead of time; XLA's ``temp_size_in_bytes`` is its own account of
the step's temporaries (what remat trades for time). Steps are timed round robin
(``_common.interleaved_times``); reported: median step and its ratio to ``plain`` with the
same balancer.

Usage, from the repository root::

  python -m benchmarks.finetune_controls            # writes results/finetune_controls.{json,md}
  python -m benchmarks.finetune_controls --quick --out /tmp/fc
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402
from benchmarks.grad_engine import FULL, QUICK, make_batch, task_specs  # noqa: E402

CONTROLS = {
    "plain": {},
    "remat": {"train.remat": True},
    "freeze": {"optimizer.freeze": ("embed",), "optimizer.freeze_layers": 1},
    "llrd": {"optimizer.layer_decay": 0.8, "optimizer.head_learning_rate": 3e-3},
}
BALANCERS = ("equal_weight", "pcgrad")


def _config(overrides):
  from jmtl.config import base_config
  config = base_config()
  config.optimizer.schedule = "constant"
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


class Variant:
  """One compiled step with its (donated, so replaced every call) state."""

  def __init__(self, shape, tasks, balancer_name: str, overrides):
    import jax

    from jmtl import balancers
    from jmtl.models import EncoderConfig, MultiTaskModel
    from jmtl.train.optim import build_optimizer
    from jmtl.train.parallel import make_train_step
    from jmtl.train.state import create_train_state

    config = _config(overrides)
    encoder = EncoderConfig(vocab_size=shape.vocab_size, width=shape.width, depth=shape.depth,
                            num_heads=shape.num_heads, mlp_width=shape.mlp_width,
                            max_length=shape.length, pooled_width=shape.width, dropout=0.0,
                            attention_dropout=0.0, remat=config.train.remat)
    model = MultiTaskModel(encoder, tasks, head_hidden=shape.head_hidden)
    balancer = balancers.get(balancer_name, len(tasks))
    optimizer = build_optimizer(config, 1000)
    self.batch = jax.device_put(make_batch(tasks, shape, seed=0))
    self.state = jax.jit(lambda: create_train_state(model, balancer, optimizer, self.batch, 0))()
    step = make_train_step(model, balancer, optimizer, dropout=False, log_cosines=False)
    self.compiled = step.jitted_for(self.batch).lower(self.state, self.batch).compile()
    self.temp_bytes = getattr(self.compiled.memory_analysis(), "temp_size_in_bytes", None)

  def __call__(self):
    import jax
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", type=int, default=3)
  parser.add_argument("--depth", type=int, default=4, help="encoder blocks")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="tiny model, 2 rounds (smoke test)")
  parser.add_argument("--out", default=str(_common.RESULTS), help="folder for json and md")
  args = parser.parse_args(argv)
  shape = dataclasses.replace(QUICK if args.quick else FULL, depth=args.depth)
  repeats = 2 if args.quick else args.repeats
  tasks = task_specs(args.tasks, shape.num_labels)
  variants = {(b, c): Variant(shape, tasks, b, o) for b in BALANCERS for c, o in CONTROLS.items()}
  times = _common.interleaved_times({f"{b}/{c}": v for (b, c), v in variants.items()},
                                    rounds=repeats, steps_per_round=args.steps)
  rows = []
  for (balancer, control), variant in variants.items():
    own, base = times[f"{balancer}/{control}"], times[f"{balancer}/plain"]
    rows.append({"balancer": balancer, "control": control,
                 "median_s": _common.summarize(own)["median"],
                 "ratio_to_plain": _common.median_of_ratios(own, base),
                 "xla_temp_mib": (variant.temp_bytes or 0) / 2**20})
  table = _common.markdown_table(
      ["balancer", "control", "step ms", "x plain", "XLA temp MiB"],
      [[r["balancer"], r["control"], _common.format_ms(r["median_s"]),
        _common.format_ratio(r["ratio_to_plain"]), f"{r['xla_temp_mib']:.1f}"] for r in rows])
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  _common.write_json(out / "finetune_controls.json",
                     {"machine": _common.machine_info(), "shape": dataclasses.asdict(shape),
                      "tasks": args.tasks, "repeats": repeats, "steps": args.steps, "rows": rows})
  (out / "finetune_controls.md").write_text(
      f"# Fine-tuning controls: step cost\n\nT={args.tasks}, encoder depth {shape.depth}, "
      f"batch {shape.batch_size} x {shape.length}, same input.\n\n{table}\n")
  print(table)


if __name__ == "__main__":
  main()

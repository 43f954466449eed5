"""Input pipeline throughput against the train step's consumption.

Measures, on a built-in suite (default ``en_mix``, max_len 64):

* tokenise: raw TFDS records -> WordPiece ids with tags aligned (examples/s);
* batch: a training iterator's fixed-shape batches from tokenized examples
  (rows/s), for the multi-input layout (every task, 32 rows each) and a
  32-row temperature mixture;
* train step: the project's jitted multi-task step (default model, equal
  weights, exact per-task gradients) on those batches, after compilation
  (rows/s consumed).

* loop wait (``--config FILE``, e.g. configs/minilm_en_mix.py at max_len 256): the time the
  training loop blocks in ``next()`` per step, with batches made on the loop's thread
  (``data.prefetch=0``) and two ahead on a background thread (the default), on the config's
  own model and batches, syncing to the host every ``train.log_every`` steps as the loop does.

The pipeline keeps up when tokenise + batch (one after the other, i.e.
1 / (1/tokenise + 1/batch)) is >= 10x the step's consumption. Tokenizing
happens once per suite and is cached, so the steady-state cost per step is
the batch figure alone; the combined figure is the worst case of an uncached
first epoch.

Usage: python benchmarks/input_pipeline.py [--suite en_mix] [--data_dir D]
           [--batch_size 32] [--steps 10] [--out results.json]
       python -m benchmarks.input_pipeline --config configs/minilm_en_mix.py \
           --override data.max_len=256 --override 'data.buckets=(64,128,256)' --steps 8
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jmtl import balancers, data
from jmtl.config import balancer_hparams, base_config
from jmtl.data import encode, store, tokenize
from jmtl.data.config import parse_suite
from jmtl.train import loop
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state


def _rate(count: int, fn) -> float:
  start = time.perf_counter()
  fn()
  return count / (time.perf_counter() - start)


def tokenise_rate(suite_name: str, data_dir, max_len: int, limit: int) -> dict[str, float]:
  """Examples/s of tokenizing raw records (per task, and over all tasks)."""
  data_dir = store.resolve(data_dir)
  manifest = store.read_manifest(data_dir / suite_name)
  parsed = parse_suite(manifest["config"])
  suite_dir = data_dir / suite_name
  read = encode.SplitReader()
  tokenizer = encode.tokenizer_for(suite_dir, parsed, manifest, vocab_size=8000, lowercase=True,
                                   read=read)
  wordpiece = tokenize.WordPiece(tokenizer, max_len)
  rates, total, seconds = {}, 0, 0.0
  for source, entry in zip(parsed.sources, manifest["sources"]):
    records = read(suite_dir, source, entry, "train")[:limit]
    start = time.perf_counter()
    encode.encode_records(records, source, wordpiece)
    elapsed = time.perf_counter() - start
    rates[",".join(t.name for t in source.tasks)] = len(records) / elapsed
    total, seconds = total + len(records), seconds + elapsed
  rates["all tasks"] = total / seconds
  return rates


def batch_rate(suite, batch_size: int, sampler: str, steps: int) -> float:
  """Rows/s of a training iterator (tokenized examples -> padded batches)."""
  iterator = suite.train_iterator(batch_size, sampler=sampler)
  first = next(iterator)
  rows = sum(b["input_ids"].shape[0] for b in first.values()) if sampler == "all" and \
      suite.layout == "multi_input" else first["input_ids"].shape[0]
  return _rate(rows * steps, lambda: [next(iterator) for _ in range(steps)])


def step_rate(suite, batch_size: int, sampler: str, steps: int) -> tuple[float, float]:
  """Rows/s the jitted train step consumes, and the seconds per step."""
  config = base_config()
  config.data.batch_size = batch_size
  tasks = suite.tasks
  model = loop.build_model(config, suite, tasks)
  balancer = balancers.get("equal_weight", len(tasks), **balancer_hparams(config))
  optimizer = loop.build_optimizer(config, 1000)
  step_fn = make_train_step(model, balancer, optimizer, grad_mode="exact")
  iterator = suite.train_iterator(batch_size, sampler=sampler)
  # Force the longest bucket: the figure is for batch x max_len.
  batches = [next(iterator) for _ in range(steps + 1)]
  batches = [b for b in batches if _length(b) == suite.max_len] or batches
  state = step_fn.place_state(jax.jit(lambda: create_train_state(
      model, balancer, optimizer, batches[0], 0))())
  state, metrics = step_fn(state, step_fn.place_batch(batches[0]))  # compile
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = step_fn(state, step_fn.place_batch(batches[i % len(batches)]))
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  rows = sum(b["input_ids"].shape[0] for b in batches[0].values()) if "input_ids" not in \
      batches[0] else batches[0]["input_ids"].shape[0]
  return rows / seconds, seconds


def loop_wait(config_path: str, overrides: list[str], steps: int, rounds: int,
              depths=(0, 2)) -> dict:
  """Per prefetch depth: ms per step the loop blocks in ``next()``, and ms per step in all.

  A first untimed pass over the same batches compiles every bucket shape they hold (each
  round starts a fresh iterator, so every round reads the same batches); rounds alternate
  the depths."""
  from jmtl.config import load_config
  from jmtl.data.feed.prefetch import Prefetch
  config = load_config(config_path, overrides)
  experiment = loop.build_experiment(config)
  step_fn = make_train_step(experiment.model, experiment.balancer, experiment.optimizer,
                            grad_mode=config.grad_mode, log_cosines=False)
  state = step_fn.place_state(jax.jit(experiment.create_state)())
  fresh = lambda: loop.train_iterator(config, experiment.suite, experiment.tasks)
  iterator = fresh()
  for _ in range(steps):  # compile
    state, metrics = step_fn(state, step_fn.place_batch(next(iterator)))
  jax.block_until_ready(metrics)
  iterator = fresh()
  make_start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  make_ms = (time.perf_counter() - make_start) / steps * 1e3
  waits = {d: [] for d in depths}
  totals = {d: [] for d in depths}
  for _ in range(rounds):
    for depth in depths:
      batches = Prefetch(fresh(), depth)
      time.sleep(0.5)  # a prefetching thread gets its head start, as during the loop's setup
      waited, start = 0.0, time.perf_counter()
      for i in range(steps):
        asked = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - asked
        state, metrics = step_fn(state, step_fn.place_batch(batch))
        if (i + 1) % config.train.log_every == 0:
          jax.device_get(metrics)
      jax.block_until_ready(metrics)
      totals[depth].append((time.perf_counter() - start) / steps * 1e3)
      waits[depth].append(waited / steps * 1e3)
      batches.close()
  median = lambda xs: float(np.median(xs))
  return {"config": config_path, "overrides": overrides, "steps": steps, "rounds": rounds,
          "make_batch_ms": make_ms,
          "depths": {str(d): {"wait_ms_per_step": median(waits[d]), "wait_ms_rounds": waits[d],
                              "step_ms": median(totals[d]), "step_ms_rounds": totals[d]}
                     for d in depths}}


def _length(batch) -> int:
  if "input_ids" in batch:
    return batch["input_ids"].shape[1]
  return next(iter(batch.values()))["input_ids"].shape[1]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", default="en_mix")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_len", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--tokenise_examples", type=int, default=4000)
  parser.add_argument("--out", default=None)
  parser.add_argument("--config", default=None,
                      help="measure the loop's wait on this config's model and batches instead")
  parser.add_argument("--override", action="append", default=[], help="KEY=VALUE (repeat)")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  if args.config:
    results = loop_wait(args.config, args.override, args.steps, args.rounds)
    print(f"{args.config} {' '.join(args.override)}: making one batch "
          f"{results['make_batch_ms']:.1f} ms")
    for depth, row in results["depths"].items():
      print(f"  prefetch {depth}: the loop waits {row['wait_ms_per_step']:.2f} ms per step "
            f"(rounds {', '.join(f'{w:.2f}' for w in row['wait_ms_rounds'])}) of "
            f"{row['step_ms']:.0f} ms")
    if args.out:
      with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    return results
  quiet = lambda line: None
  data.prepare(args.suite, args.data_dir, log=quiet)
  suite = data.load_suite(args.suite, args.data_dir, max_len=args.max_len,
                          buckets=(args.max_len,), log=quiet)
  tokenise = tokenise_rate(args.suite, args.data_dir, args.max_len, args.tokenise_examples)
  results = {"suite": args.suite, "batch_size": args.batch_size, "max_len": args.max_len,
             "devices": jax.device_count(), "platform": jax.default_backend(),
             "tokenise_examples_per_s": tokenise, "layouts": {}}
  print(f"tokenise ({args.suite}, max_len {args.max_len}): " + ", ".join(
      f"{k} {v:,.0f} ex/s" for k, v in tokenise.items()))
  samplers = ["all", "temperature"] if suite.layout == "multi_input" else ["all"]
  for sampler in samplers:
    batching = batch_rate(suite, args.batch_size, sampler, max(50, args.steps))
    consumed, seconds = step_rate(suite, args.batch_size, sampler, args.steps)
    combined = 1.0 / (1.0 / tokenise["all tasks"] + 1.0 / batching)
    layout = "multi-input (every task)" if sampler == "all" else "mixture (temperature 2)"
    results["layouts"][sampler] = {"batch_rows_per_s": batching,
                                   "tokenise_plus_batch_rows_per_s": combined,
                                   "step_rows_per_s": consumed, "step_seconds": seconds,
                                   "ratio_tokenise_plus_batch": combined / consumed,
                                   "ratio_batch_only": batching / consumed}
    print(f"{layout}: batch {batching:,.0f} rows/s; tokenise+batch {combined:,.0f} rows/s; "
          f"train step {consumed:,.0f} rows/s ({seconds * 1e3:.0f} ms/step) -> "
          f"{combined / consumed:.1f}x (cached: {batching / consumed:.1f}x)")
  if args.out:
    with open(args.out, "w") as handle:
      json.dump(results, handle, indent=1, default=float)
  return results


if __name__ == "__main__":
  main()

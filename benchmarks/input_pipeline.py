"""Input pipeline throughput against the train step's consumption.

Measures, on a built-in suite (default ``en_mix``, max_len 64):

* tokenise: raw TFDS records -> WordPiece ids with tags aligned (examples/s);
* batch: a training iterator's fixed-shape batches from tokenized examples
  (rows/s), for the multi-input layout (every task, 32 rows each) and a
  32-row temperature mixture;
* train step: the project's jitted multi-task step (default model, equal
  weights, exact per-task gradients) on those batches, after compilation
  (rows/s consumed).

The pipeline keeps up when tokenise + batch (one after the other, i.e.
1 / (1/tokenise + 1/batch)) is >= 10x the step's consumption. Tokenizing
happens once per suite and is cached, so the steady-state cost per step is
the batch figure alone; the combined figure is the worst case of an uncached
first epoch.

Usage: python benchmarks/input_pipeline.py [--suite en_mix] [--data_dir D]
           [--batch_size 32] [--steps 10] [--out results.json]
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
  tokenizer = encode.tokenizer_for(suite_dir, parsed, manifest, vocab_size=8000, lowercase=True)
  wordpiece = tokenize.WordPiece(tokenizer, max_len)
  rates, total, seconds = {}, 0, 0.0
  for source, entry in zip(parsed.sources, manifest["sources"]):
    records = encode.read_split(suite_dir, source, entry, "train")[:limit]
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
  args = parser.parse_args(argv)
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

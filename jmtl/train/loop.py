"""``train_and_evaluate(config, workdir)``: the main job, callable from Python.

Builds the suite, model, balancer and optimizer from the config; resumes from the newest
readable checkpoint in ``workdir``; trains with a progress bar, JSONL logs, periodic
evaluation and asynchronous Orbax checkpoints; prints a per-task table at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
import optax

from jmtl import data, interrupts, metrics as metrics_lib
from jmtl.config import ConfigError, batch_size_of, to_json
from jmtl.data.feed.prefetch import Prefetch
from jmtl.models import EncoderConfig, architectures, precision
from jmtl.pretrained import training as pretrained_training
from jmtl.train import checkpoint as ckpt_lib
from jmtl.train import diagnostics as diag_lib
from jmtl.train import distributed, optim, preflight, qa_eval, runs, transfer
from jmtl.train.balancer_setup import build_balancer
from jmtl.train.baselines import (delta_m, load_baselines, split_baselines,
                                  train_single_task_baselines)
from jmtl.train.evaluate import evaluate, make_eval_fn, selection_score
from jmtl.train.logging import MetricLogger
from jmtl.train.parallel import make_train_step
from jmtl.train.state import create_train_state


class NonFiniteLossError(FloatingPointError):
  """Raised with ``train.nan_policy='stop'``; the bad step never reached a checkpoint."""


def check_workdir(workdir: str) -> None:
  """A workdir is created only once the run's config and data are known good."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir!r} is a file, not a directory")


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  return optim.build_optimizer(config, total_steps)


def load_suite(config: ml_collections.ConfigDict):
  d = config.data
  vocab_file, lowercase = pretrained_training.tokenizer_settings(config)
  suite = data.load_suite(d.suite, d.data_dir or None, max_len=d.max_len, lowercase=lowercase,
                          vocab_size=d.vocab_size, vocab_file=vocab_file,
                          buckets=tuple(d.buckets))
  tasks = suite.tasks
  if d.tasks:
    known = {t.name: t for t in suite.tasks}
    unknown = [name for name in d.tasks if name not in known]
    if unknown:
      raise ConfigError(f"data.tasks names {unknown} not in suite {d.suite!r}; its tasks: "
                        f"{', '.join(known)}")
    tasks = tuple(known[name] for name in d.tasks)
  return suite, tasks


def build_model(config: ml_collections.ConfigDict, suite, tasks):
  m = config.model
  if pretrained_training.uses_bert(config):
    encoder = pretrained_training.bert_config(config, suite)
  else:
    encoder = EncoderConfig(vocab_size=suite.vocab_size, width=m.width, depth=m.depth,
                            num_heads=m.num_heads, mlp_width=m.mlp_width,
                            max_length=max(suite.buckets), dropout=m.dropout,
                            attention_dropout=m.attention_dropout, pooled_width=m.pooled_width,
                            remat=config.train.remat, **precision.from_config(m))
  # Declared, not guessed: a multi-input suite feeds one batch per task only with
  # data.sampler="all"; a mixture sampler draws one same-input batch of mixed rows.
  layout = suite.layout if config.data.sampler == "all" else "same_input"
  options = architectures.Options(**{f.name: m[f.name] for f in
                                     dataclasses.fields(architectures.Options)})
  try:
    return architectures.build(m.architecture, encoder, tasks, layout=layout,
                               head_hidden=m.head_hidden, options=options)
  except ValueError as e:  # a bad name or architecture hyperparameter
    raise ConfigError(f"model.architecture={m.architecture!r}: {e}") from None


def train_iterator(config: ml_collections.ConfigDict, suite, tasks):
  """The run's training batches. A multi-input suite draws only the run's tasks (a
  single-task baseline reads no other task's data, and a per-task batch size names only
  them); each task's stream is its own, so the batches equal those of the full suite."""
  d = config.data
  anneal = tuple(d.anneal) if d.sampler == "annealed" else None
  drawn = ([t.name for t in tasks] if suite.layout == "multi_input" and d.sampler == "all"
           else None)
  return suite.train_iterator(batch_size_of(config), sampler=d.sampler,
                              temperature=d.temperature, size_cap=d.size_cap or None,
                              anneal=anneal, seed=config.seed, tasks=drawn,
                              task_lengths=d.task_lengths)


class Experiment(NamedTuple):
  """What a config builds before any step runs; ``create_state()`` makes the initial
  TrainState (``jax.eval_shape(create_state)`` its shapes, to restore a checkpoint onto)."""
  suite: Any
  tasks: tuple
  model: Any  # any jmtl.models.protocol model (see model.architecture)
  balancer: Any
  optimizer: optax.GradientTransformation
  create_state: Callable[[], Any]


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  suite, tasks = load_suite(config)
  model = build_model(config, suite, tasks)
  optimizer = build_optimizer(config, config.train.steps)
  example = next(train_iterator(config, suite, tasks))
  balancer = build_balancer(config, model, example, suite.buckets)
  if config.grad_mode == "rep" and model.layout == "multi_input":
    raise preflight.rep_needs_one_input(suite.name)
  rep_shapes = None  # rep-grad balancers keep state shaped like the shared representation
  if config.grad_mode == "rep" and balancer.needs != "losses":
    rep_shapes = jax.eval_shape(lambda b: model.encode(
        model.init(jax.random.PRNGKey(0), b)[model.shared_key], b), example)
  create_state = lambda: create_train_state(model, balancer, optimizer, example, config.seed,
                                            balancer_params=rep_shapes)
  return Experiment(suite, tasks, model, balancer, optimizer, create_state)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Everything checkable before data is built or the workdir exists (``preflight``), and the
  optimizer, by building it."""
  preflight.validate(config)
  build_optimizer(config, config.train.steps)


def best_metric(name: str, tasks):
  """``(value_fn(score, results), mode)`` for ``train.best_metric``."""
  if name == "score":
    return (lambda score, results: score), "max"
  task, _, metric = name.partition("/")
  spec = next((t for t in tasks if t.name == task), None)
  if spec is None or metric not in (*spec.metrics, "loss"):
    valid = ["score"] + [f"{t.name}/{m}" for t in tasks for m in (*t.metrics, "loss")]
    raise ConfigError(f"train.best_metric {name!r}: valid values are {', '.join(valid)}")
  lower_is_better = metric in ("loss", "perplexity") or (
      metric == spec.main_metric and not spec.higher_is_better)
  return (lambda score, results: results[task][metric]), "min" if lower_is_better else "max"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       out=sys.stdout, allow_data_change: bool = False) -> dict[str, Any]:
  """Trains (or resumes) and evaluates; returns ``{"step", "validation", "test", ...}``.

  The config is checked whole, and against the run already in ``workdir``, before any data
  is built or the workdir is created; a resumed run's data must match the fingerprints its
  checkpoint was trained on unless ``allow_data_change`` (recorded in the workdir).
  """
  config = runs.resolve_paths(config)
  check_workdir(workdir)
  validate_config(config)
  runs.check_identity(workdir, config)
  if not distributed.is_primary():  # process 0 alone prints in a multi-process run
    out = open(os.devnull, "w")
  say = lambda msg: print(msg, file=out, flush=True)
  if config.single_task:
    _, tasks = load_suite(config)
    os.makedirs(workdir, exist_ok=True)
    runs.save_run(workdir, config, None)
    return train_single_task_baselines(config, workdir, tasks, train=train_and_evaluate,
                                       out=out)
  experiment = distributed.primary_first(lambda: build_experiment(config))
  suite, tasks, model = experiment.suite, experiment.tasks, experiment.model
  baselines = load_baselines(config, tasks)
  steps = config.train.steps
  iterator = train_iterator(config, suite, tasks)
  t = config.train
  abstract_state = jax.eval_shape(experiment.create_state)
  trainable = optim.trainable_mask(abstract_state.params, config)
  # Cosines (and per-task norms) come from the diagnostics at logging steps, for every
  # method alike; the step computes no G for the logs.
  step_fn = make_train_step(model, experiment.balancer, experiment.optimizer,
                            grad_mode=config.grad_mode, parallelism=t.parallelism,
                            num_devices=t.num_devices or None, log_cosines=False,
                            trainable=trainable)
  iterator.read_rows(step_fn.local_rows)  # a process's rows of the global batch
  diagnostics = diag_lib.from_config(config, step_fn, model, trainable)
  config_dict = json.loads(to_json(config))
  fingerprints = runs.run_fingerprints(suite, [tk.name for tk in tasks])
  best_value, best_mode = best_metric(t.best_metric, tasks)
  checkpoints = ckpt_lib.Checkpoints(workdir, keep=t.keep_checkpoints, best_mode=best_mode,
                                     best_metric="best" if t.keep_best else None)
  restored = checkpoints.restore(abstract_state, config_dict, warn=say)
  origin = None
  if restored is None:
    state = pretrained_training.with_pretrained_encoder(config, jax.jit(experiment.create_state)())
    start = 0
    if config.init_from:  # a fresh start only: a resumed run already holds these weights
      state, origin = transfer.init_from(config, state, experiment.optimizer, fingerprints,
                                         model, workdir=workdir,
                                         allow_data_change=allow_data_change, say=say)
      transfer.write_origin(workdir, origin)
      say(transfer.describe(origin))
  else:
    start, state, data_state = restored
    try:
      runs.check_data(checkpoints.fingerprints(start), fingerprints,
                      where=f"the checkpoint at step {start} in {workdir}", workdir=workdir,
                      allow_change=allow_data_change, say=say)
    except BaseException:
      checkpoints.close()
      raise
    iterator.set_state(data_state)
    say(f"resumed from step {start} in {workdir}")
  runs.save_run(workdir, config, fingerprints)
  runs.record_event(workdir, "resume" if restored else "start", step=start, steps=steps)
  state = step_fn.place_state(state)
  eval_fn = make_eval_fn(model)
  logger = MetricLogger(workdir, tensorboard=t.tensorboard, warn=say, resume_step=start,
                        final_step=steps)
  if origin is not None:
    # origin["step"] is the source's step; the record sits at step 0, so a resume keeps it.
    logger.write({"split": "init_from", **origin, "source_step": origin["step"], "step": 0})
  config_json = to_json(config)
  names = model.names

  def save(step_number, host_state):
    checkpoints.save(step_number, host_state, iterator.get_state(), config_json, fingerprints)

  def run_eval(step_number, split):
    host_state = step_fn.gather_state(state)
    results = evaluate(model, eval_fn, host_state.params,
                       suite.eval_batches(split, config.data.eval_batch_size))
    results = qa_eval.with_answer_scores(results, model, host_state.params, suite, split,
                                         config.data.eval_batch_size)
    score = selection_score(results, tasks, split_baselines(baselines, split, tasks))
    logger.write({"step": step_number, "split": split, "score": score, "tasks": results})
    return host_state, results, {"best": best_value(score, results)}

  iterator = Prefetch(iterator, config.data.prefetch)  # after the restore: none made ahead
  progress = _progress(t.progress and distributed.is_primary(), start, steps)
  timer = time.perf_counter()
  step_number = start
  try:
    while step_number < steps:
      interrupts.raise_if_requested()  # a signal whose KeyboardInterrupt was swallowed
      batch = step_fn.place_batch(next(iterator))
      affinity = diag_lib.due(t, step_number + 1, steps) if diagnostics else None
      if affinity is not None:  # before the step, which donates the state; not timed
        jax.block_until_ready(state)
        diag_start = time.perf_counter()
        diag = diagnostics(state, batch, affinity=affinity)
        timer += time.perf_counter() - diag_start
      state, step_metrics = step_fn(state, batch)
      step_number += 1
      if t.nan_policy == "stop" or step_number % t.log_every == 0 or step_number == steps:
        host = jax.device_get(step_fn.unreplicate_metrics(step_metrics))
        if not bool(host["finite"]) and t.nan_policy == "stop":
          raise NonFiniteLossError(
              f"non-finite loss or gradient at step {step_number} (losses "
              f"{dict(zip(names, np.asarray(host['losses']).tolist()))}); stopped with "
              f"nan_policy='stop'; the last checkpoint is step "
              f"{(checkpoints.steps() or ['none'])[-1]}")
        if step_number % t.log_every == 0 or step_number == steps:
          elapsed = time.perf_counter() - timer
          timer = time.perf_counter()
          record = _step_record(step_number, host, names, t.log_every / max(elapsed, 1e-9))
          record["nonfinite_steps"] = int(jax.device_get(step_fn.gather_state(state).nonfinite_steps))
          if affinity is not None:
            record.update(diag_lib.record_fields(diag, names))
          logger.write(record)
          progress.set_postfix({n: f"{record['losses'][n]:.3f}" for n in names}, refresh=False)
      progress.update(1)
      if t.eval_every and step_number % t.eval_every == 0 and step_number < steps:
        host_state, _, best = run_eval(step_number, "validation")
        checkpoints.save_best(step_number, host_state, iterator.get_state(), config_json, best,
                              fingerprints)
      if step_number % t.checkpoint_every == 0 or step_number == steps:
        save(step_number, step_fn.gather_state(state))
    progress.close()
    host_state, validation, best = run_eval(step_number, "validation")
    checkpoints.save_best(step_number, host_state, iterator.get_state(), config_json, best,
                              fingerprints)
    test = None
    if any("test" in suite.sizes[tk.name] for tk in tasks):
      _, test, _ = run_eval(step_number, "test")
  except KeyboardInterrupt:
    interrupts.clear()
    progress.close()
    checkpoints.wait()  # finish the in-flight save, so the next run resumes from it
    say(f"interrupted at step {step_number}; checkpoints: {checkpoints.steps()}; "
        "run the same command again to resume")
    raise
  finally:
    # Whatever stopped the run, saves already started complete: nothing saved is lost.
    iterator.close()
    checkpoints.close()
    logger.close()
  nonfinite = int(jax.device_get(host_state.nonfinite_steps))
  main = {tk.name: tk.main_metric for tk in tasks}
  delta = delta_m(validation, tasks, baselines, "validation")
  say(f"\nvalidation at step {step_number}:\n" + metrics_lib.summarize_results(validation, main, delta))
  if test:
    delta_test = delta_m(test, tasks, baselines, "test")
    say(f"\ntest at step {step_number}:\n" + metrics_lib.summarize_results(test, main, delta_test))
  if nonfinite:
    say(f"{nonfinite} step(s) were skipped for a non-finite loss or gradient")
  summary = diag_lib.run_summary(workdir, say)
  result = {"step": step_number, "validation": validation, "test": test,
            "delta_m": delta, "nonfinite_steps": nonfinite, "diagnostics": summary,
            # What a sweep report needs to rank methods and compute Δm from this file alone.
            "main_metrics": main,
            "higher_is_better": {tk.name: tk.higher_is_better for tk in tasks}}
  if distributed.is_primary():
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(result, f, indent=2, default=float)
  return result


def _step_record(step: int, host, names, steps_per_second: float) -> dict[str, Any]:
  record = {"step": step, "split": "train",
            "losses": dict(zip(names, np.asarray(host["losses"], float).tolist())),
            "grad_norm": float(host["grad_norm"]), "steps_per_second": steps_per_second}
  if "weights" in host:
    record["weights"] = dict(zip(names, np.asarray(host["weights"], float).tolist()))
  if "aux_loss" in host:  # the model's auxiliary losses (e.g. DSelect-k's entropy term)
    record["aux_loss"] = float(host["aux_loss"])
  return record


def _progress(enabled: bool, start: int, total: int):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
              file=sys.stderr)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        step: int | None = None, best: bool = False, split: str = "validation",
                        out=sys.stdout, allow_data_change: bool = False) -> dict[str, Any]:
  """Evaluates a saved checkpoint (newest, ``step``, or the best) on ``split``: the config
  must be the run's (``runs.load_run_config(workdir)`` gives it) and the data the
  checkpoint's (or ``allow_data_change``)."""
  if not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir!r} does not exist")
  config = runs.resolve_paths(config)
  validate_config(config)
  runs.check_identity(workdir, config)
  experiment = build_experiment(config)
  suite, tasks, model = experiment.suite, experiment.tasks, experiment.model
  abstract_state = jax.eval_shape(experiment.create_state)
  checkpoints = ckpt_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints,
                                     best_metric="best" if best else None, async_save=False)
  try:
    if best:
      step = checkpoints.best_step()
    restored = checkpoints.restore(abstract_state, json.loads(to_json(config)), step=step,
                                   best=best, warn=lambda m: print(m, file=out))
    if restored is None:
      raise ckpt_lib.CheckpointError(f"no checkpoint in {workdir}")
    step, state, _ = restored
    runs.check_data(checkpoints.fingerprints(step, best=best),
                    runs.run_fingerprints(suite, [tk.name for tk in tasks]),
                    where=f"the checkpoint at step {step} in {workdir}", workdir=workdir,
                    allow_change=allow_data_change, say=lambda m: print(m, file=out))
  finally:
    checkpoints.close()
  results = evaluate(model, make_eval_fn(model), state.params,
                     suite.eval_batches(split, config.data.eval_batch_size))
  results = qa_eval.with_answer_scores(results, model, state.params, suite, split,
                                       config.data.eval_batch_size)
  delta = delta_m(results, tasks, load_baselines(config, tasks), split)
  main = {tk.name: tk.main_metric for tk in tasks}
  print(f"{split} at step {step}:\n" + metrics_lib.summarize_results(results, main, delta),
        file=out, flush=True)
  return {"step": step, split: results, "delta_m": delta}

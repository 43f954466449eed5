"""Orbax checkpoints holding everything an exact resume needs.

Each checkpoint has four items: ``state`` (the TrainState: params, optimizer state, balancer
state, RNG, step and counters), ``data`` (the training iterator's position, JSON),
``config`` (the run's config, JSON) and ``fingerprints`` (of the data it was trained on, JSON;
absent in checkpoints written before jmtl recorded them). ``<workdir>/checkpoints`` keeps the last K steps;
``<workdir>/best`` keeps the best step by the chosen metric. Saves are asynchronous;
Orbax writes each step into a temporary folder and renames it when complete, so an
interrupted save never shadows the previous good step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Callable

import jax
import orbax.checkpoint as ocp

from jmtl.config import identity_mismatches
from jmtl.train.state import TrainState

class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used (or written) by this run; nothing has been overwritten."""


def _write_failure(error: Exception) -> str:
  """The OS reason of a failed write (tensorstore's message ends "[os_error_code='28']"),
  else the error itself, shortened."""
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if isinstance(error, OSError) and error.errno:
    return f"{os.strerror(error.errno)} (errno {error.errno})"
  if code:
    return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
  return f"{type(error).__name__}: {str(error)[:300]}"


class Checkpoints:
  """Last-K and best-by-metric checkpoints of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "max", async_save: bool = True):
    # Orbax refuses a relative checkpoint path when it writes (at the first save, well into
    # a run), so resolve it here, where a relative `--workdir runs/x` comes in.
    self.workdir = workdir = os.path.abspath(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._latest = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options)
    self.best_metric = best_metric
    self._best = None
    if best_metric:
      best_options = ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
          enable_async_checkpointing=async_save, create=True)
      self._best = ocp.CheckpointManager(os.path.join(workdir, "best"), options=best_options)

  @staticmethod
  def _save_args(state: TrainState, data_state: dict, config_json: str,
                 fingerprints: dict[str, str] | None):
    items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                 config=ocp.args.JsonSave(json.loads(config_json)))
    if fingerprints is not None:
      items["fingerprints"] = ocp.args.JsonSave(dict(fingerprints))
    return ocp.args.Composite(**items)

  def save(self, step: int, state: TrainState, data_state: dict, config_json: str,
           fingerprints: dict[str, str] | None = None) -> None:
    with self._reporting_write_errors(self._latest, step):
      self._latest.save(step, args=self._save_args(state, data_state, config_json, fingerprints))

  def save_best(self, step: int, state: TrainState, data_state: dict, config_json: str,
                metrics: dict[str, float], fingerprints: dict[str, str] | None = None) -> None:
    # A resumed run that had already finished evaluates its last step again: saved once.
    if (self._best is not None and self.best_metric in metrics
        and step not in self._best.all_steps()):
      with self._reporting_write_errors(self._best, step):
        self._best.save(step, args=self._save_args(state, data_state, config_json, fingerprints),
                        metrics={k: float(v) for k, v in metrics.items()})

  @contextlib.contextmanager
  def _reporting_write_errors(self, manager, step: int | None):
    """A failed write (a full disk, a lost mount) as one CheckpointError naming the folder.

    Orbax writes into ``<step>.orbax-checkpoint-tmp`` and renames it when complete; an
    asynchronous write's error surfaces at the next save or wait, so ``step`` may be the one
    after the failed write.
    """
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # Orbax reports I/O failures as ValueError/OSError from tensorstore
      kept = sorted(manager.all_steps())
      raise CheckpointError(
          f"could not write a checkpoint in {manager.directory}"
          + (f" (saving step {step})" if step is not None else "")
          + f": {_write_failure(e)}\nthe checkpoints already written are intact "
          f"(steps {kept or 'none'}); free space and run the same command to resume") from None

  def steps(self) -> list[int]:
    return sorted(self._latest.all_steps())

  def best_step(self) -> int | None:
    return None if self._best is None else self._best.best_step()

  def fingerprints(self, step: int, *, best: bool = False) -> dict[str, str] | None:
    """The data fingerprints checkpoint ``step`` was trained on (None if it predates them)."""
    manager = self._best if best else self._latest
    try:
      return manager.restore(step, args=ocp.args.Composite(
          fingerprints=ocp.args.JsonRestore()))["fingerprints"]
    except KeyError:  # Orbax: 'Item "fingerprints" was not found in the checkpoint'
      return None

  def saved_config(self, step: int, *, best: bool = False) -> dict:
    manager = self._best if best else self._latest
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def restore(self, abstract_state: TrainState, current_config: dict, *,
              step: int | None = None, best: bool = False,
              warn: Callable[[str], None] = print) -> tuple[int, TrainState, dict] | None:
    """The newest readable checkpoint (or ``step``), or None when there is none.

    An unreadable step is reported and the previous one tried. A config whose identity
    keys differ from the checkpoint's raises ``CheckpointError``.
    """
    manager = self._best if best else self._latest
    if manager is None:
      raise CheckpointError("no best-checkpoint metric is configured for this run")
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {manager.directory}; "
                              f"available: {sorted(steps) or 'none'}")
      steps = [step]
    failures = []
    for candidate in steps:
      try:
        saved_config = manager.restore(
            candidate, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
      except Exception as e:  # unreadable metadata: fall back to an older step
        failures.append(f"step {candidate}: {type(e).__name__}: {str(e)[:200]}")
        warn(f"checkpoint step {candidate} is unreadable ({failures[-1]}); trying an older one")
        continue
      mismatches = identity_mismatches(saved_config, current_config)
      if mismatches:
        raise CheckpointError(
            f"the checkpoint in {manager.directory} (step {candidate}) was written with another "
            "config; refusing to resume (use a new --workdir):\n  " + "\n  ".join(mismatches))
      # Onto one device: the caller's CompiledStep.place_state lays it out for any device
      # count, so a checkpoint written from N devices restores onto M.
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            abstract_state)
      try:
        restored = manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
      except Exception as e:
        failures.append(f"step {candidate}: {type(e).__name__}: {str(e)[:200]}")
        warn(f"checkpoint step {candidate} is unreadable ({failures[-1]}); trying an older one")
        continue
      if failures:
        warn(f"resumed from step {candidate}, the newest readable checkpoint")
      return candidate, restored["state"], restored["data"]
    if failures:
      raise CheckpointError("no readable checkpoint in " f"{manager.directory}:\n  " + "\n  ".join(failures))
    return None

  def wait(self) -> None:
    for manager in (self._latest, self._best):
      if manager is not None:
        with self._reporting_write_errors(manager, None):
          manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      for manager in (self._latest, self._best):
        if manager is not None:
          with contextlib.suppress(Exception):  # a failed write was reported by wait()
            manager.close()


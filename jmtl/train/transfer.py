"""Starting a run from another run's checkpoint: ``config.init_from = "WORKDIR[:STEP|:best]"``.

Pretrain, fine-tune, fuse: train on task A then fine-tune on B, multi-task pre-finetuning then
single-task fine-tuning (MT-DNN), adding a task to a trained model. The shared parameters
(the encoder for hard sharing; ``params["shared"]`` for the other architectures, which must be
the source's) must match exactly (the same paths and shapes, and the same tokenizer, or token
ids would mean other words); each head (task tower) whose task name and shapes match is
loaded, every other task gets a fresh one; the optimizer and balancer start fresh. Where the
run came from is written to ``<workdir>/init_from.json`` and to ``metrics.jsonl``.

``read_checkpoint`` reads the parameters, saved config and data fingerprints of any run
(also used by ``jmtl.predict``) without building that run's model or data: shapes come from
the checkpoint's own metadata, and only ``params`` is restored. ``check_tokenizer`` compares
the checkpoint's tokenizer fingerprint with the data about to be read: token ids from another
vocabulary would mean other words (new tasks are fine, so only the tokenizer is compared).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jmtl.config import ConfigError
from jmtl.train import distributed, runs
from jmtl.train.checkpoint import CheckpointError, Checkpoints
from jmtl.train.optim import param_paths

PyTree = Any
ORIGIN_FILE = "init_from.json"


class SavedRun(NamedTuple):
  """A checkpoint's parameters (on one device), the config it was trained with and the
  fingerprints of its data (None for checkpoints that predate them)."""
  workdir: str
  step: int
  best: bool
  config: dict
  params: PyTree
  fingerprints: dict[str, str] | None = None


def _saved_steps(directory: str) -> list[int]:
  """Finished steps only: Orbax writes ``N.orbax-checkpoint-tmp-*`` and renames it to ``N``."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()
                and os.path.isdir(os.path.join(directory, name, "state")))


def read_checkpoint(workdir: str, step: int | None = None, best: bool = False) -> SavedRun:
  """The params and config of ``workdir``'s newest (or ``step``'s, or best) checkpoint.

  Reads only; a missing workdir, checkpoint or step raises ``CheckpointError`` naming it.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise CheckpointError(f"workdir {workdir} does not exist")
  directory = os.path.join(workdir, "best" if best else "checkpoints")
  steps = _saved_steps(directory)
  if not steps:
    kind = "best checkpoint" if best else "checkpoint"
    raise CheckpointError(f"no {kind} in {workdir} (nothing under {directory}); "
                          "train it first, or check the path")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f"no checkpoint at step {step} in {directory}; available: {steps}")
  path = os.path.join(directory, str(step))
  try:
    with open(os.path.join(path, "config", "metadata")) as f:
      config = json.load(f)
    state_path = os.path.join(path, "state")
    # The handler's own metadata read: the Checkpointer's also looks for a step-level
    # metadata file these items lack, and logs a warning for it.
    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_path)).tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata["params"])
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    restored = ocp.PyTreeCheckpointer().restore(state_path, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args}, partial_restore=True))
    checkpoints = Checkpoints(workdir, best_metric="best" if best else None, async_save=False)
    try:
      fingerprints = checkpoints.fingerprints(step, best=best)
    finally:
      checkpoints.close()
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"checkpoint {path} is unreadable: {type(e).__name__}: "
                          f"{str(e)[:300]}") from None
  return SavedRun(workdir, step, best, config, restored["params"], fingerprints)


def check_tokenizer(saved: SavedRun, current: Mapping[str, str], *, where: str,
                    workdir: str | None = None, allow_change: bool = False, say=print) -> None:
  """Refuses data (``runs.run_fingerprints``) tokenized otherwise than ``saved``'s checkpoint
  was: ``DataMismatchError`` unless ``allow_change`` (then recorded in ``workdir``)."""
  if saved.fingerprints is None:
    return
  runs.check_data({"tokenizer": saved.fingerprints.get("tokenizer")},
                  {"tokenizer": current.get("tokenizer")}, where=where, workdir=workdir,
                  allow_change=allow_change, say=say)


def parse_init_from(value: str) -> tuple[str, int | None, bool]:
  """``"W"``, ``"W:STEP"`` or ``"W:best"`` -> (workdir, step or None, best)."""
  workdir, sep, suffix = value.rpartition(":")
  if not sep or os.path.isdir(value):
    return value, None, False
  if suffix == "best":
    return workdir, None, True
  if suffix.isdigit():
    return workdir, int(suffix), False
  raise ConfigError(f"init_from {value!r}: expected WORKDIR, WORKDIR:STEP or WORKDIR:best "
                    f"({suffix!r} is not a step number)")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return dict(zip(jax.tree.leaves(param_paths(tree)), (tuple(np.shape(x)) for x in
                                                       jax.tree.leaves(tree))))


def shape_mismatches(source, target) -> list[str]:
  """One line per parameter path that is missing on either side or shaped differently."""
  have, want = _shapes(source), _shapes(target)
  lines = [f"{p}: checkpoint {have[p]}, this model {want[p]}"
           for p in sorted(have.keys() & want.keys()) if have[p] != want[p]]
  lines += [f"{p}: not in the checkpoint" for p in sorted(want.keys() - have.keys())]
  lines += [f"{p}: in the checkpoint, not in this model" for p in sorted(have.keys() - want.keys())]
  return lines


def transfer_params(source: SavedRun, params: PyTree, what: str, *, shared_key: str,
                    task_key: str, architecture: str) -> tuple[PyTree, dict]:
  """``params`` with the source's shared subtree and every matching task subtree; a report.

  ``shared_key`` / ``task_key`` are the model's (``jmtl.models.protocol``): ``encoder`` /
  ``heads`` for hard sharing, ``shared`` / ``tasks`` for the other architectures. The
  source must have been trained with the same ``architecture``.
  """
  # A checkpoint saved before model.architecture existed is hard sharing.
  source_architecture = source.config.get("model", {}).get("architecture", "hard")
  if source_architecture != architecture:
    raise CheckpointError(
        f"{what}: {source.workdir} (step {source.step}) was trained with "
        f"model.architecture={source_architecture!r}, this run builds {architecture!r}: "
        "their shared parameters do not correspond")
  if shared_key not in source.params or task_key not in source.params:
    raise CheckpointError(f"{what}: the checkpoint of {source.workdir} (step {source.step}) "
                          f"has no {shared_key!r} / {task_key!r} parameters; it has "
                          f"{sorted(source.params)}")
  shared = shape_mismatches(source.params[shared_key], params[shared_key])
  if shared:
    shown = [f"{shared_key}/{line}" for line in shared[:20]]
    shown += [f"... and {len(shared) - 20} more"] if len(shared) > 20 else []
    raise CheckpointError(
        f"{what}: the {shared_key} in {source.workdir} (step {source.step}) has another "
        "shape; mismatched parameters:\n  " + "\n  ".join(shown))
  cast = lambda new, old: jax.tree.map(lambda n, o: np.asarray(n, np.asarray(o).dtype), new, old)
  heads, loaded, fresh = {}, [], {}
  source_heads = source.params.get(task_key, {})
  for name, head in params[task_key].items():
    if name not in source_heads:
      heads[name], fresh[name] = head, "new task"
      continue
    mismatched = shape_mismatches(source_heads[name], head)
    if mismatched:
      heads[name], fresh[name] = head, "shape differs: " + "; ".join(mismatched)
    else:
      heads[name] = cast(source_heads[name], head)
      loaded.append(name)
  report = {"workdir": source.workdir, "step": source.step, "best": source.best,
            "loaded": [shared_key] + [f"{task_key}/{n}" for n in loaded],
            "fresh_heads": fresh,
            "unused_heads": sorted(set(source_heads) - set(params[task_key])),
            "source_tasks": sorted(source_heads),
            "source_init_from": source.config.get("init_from", "")}
  return {shared_key: cast(source.params[shared_key], params[shared_key]),
          task_key: heads}, report


def init_from(config: ml_collections.ConfigDict, state, optimizer,
              fingerprints: Mapping[str, str], model, *, workdir: str | None = None,
              allow_data_change: bool = False, say=print) -> tuple[Any, dict]:
  """The fresh ``state`` of ``model`` (a ``MultiTaskProtocol``: its ``shared_key`` and
  ``task_key`` say which subtrees are shared and per task) with params from
  ``config.init_from``; a fresh optimizer state.

  ``fingerprints`` are this run's data's (``runs.run_fingerprints``): the source checkpoint
  must have been trained with the same tokenizer.
  """
  source_dir, step, best = parse_init_from(config.init_from)
  source = read_checkpoint(source_dir, step, best)
  check_tokenizer(source, fingerprints, where=f"init_from {config.init_from!r} (step "
                  f"{source.step} of {source.workdir})", workdir=workdir,
                  allow_change=allow_data_change, say=say)
  params, report = transfer_params(source, jax.device_get(state.params),
                                   f"init_from {config.init_from!r}", shared_key=model.shared_key,
                                   task_key=model.task_key,
                                   architecture=config.model.architecture)
  params = jax.device_put(params)
  return state.replace(params=params, opt_state=optimizer.init(params)), report


def describe(report: dict) -> str:
  fresh = ", ".join(f"{name} ({why})" for name, why in report["fresh_heads"].items())
  return (f"initialised from {report['workdir']} step {report['step']}"
          f"{' (best)' if report['best'] else ''}: loaded {', '.join(report['loaded'])}"
          + (f"; fresh heads: {fresh}" if fresh else "")
          + (f"; unused heads: {', '.join(report['unused_heads'])}"
             if report["unused_heads"] else ""))


def write_origin(workdir: str, report: dict) -> None:
  if not distributed.is_primary():  # once per run
    return
  with open(os.path.join(workdir, ORIGIN_FILE), "w") as f:
    json.dump(report, f, indent=2)

"""Single-task baselines: one run per task, their main metrics saved for Δm, read back,
and Δm% computed against them.

The training function comes in as an argument (``loop.train_and_evaluate`` dispatches here
when ``config.single_task`` is set), so this module does not import the loop that calls it.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from jmtl.config import ConfigError, batch_size_of
from jmtl.tasks import TaskSpec
from jmtl.train.evaluate import selection_score
from jmtl.train.runs import read_json


def train_single_task_baselines(config: ml_collections.ConfigDict, workdir: str,
                                tasks: Sequence[TaskSpec], *,
                                train: Callable[..., dict], out=sys.stdout) -> dict:
  """Trains each task alone with ``train(config, workdir, out=out)`` in ``<workdir>/<task>``;
  writes ``<workdir>/baselines.json``: ``{split: {task: main metric}}`` for validation and
  test."""
  baselines, runs = {"validation": {}, "test": {}}, {}
  for spec in tasks:
    name = spec.name
    task_config = copy.deepcopy(config)
    with task_config.unlocked():
      task_config.single_task = False
      task_config.data.tasks = (name,)
      if isinstance(sizes := batch_size_of(config), dict):  # each task keeps its own size
        task_config.data.batch_size = {name: sizes[name]}
      task_config.baselines = ""
    print(f"\n== single-task baseline: {name} ==", file=out, flush=True)
    result = train(task_config, os.path.join(workdir, name), out=out)
    for split in ("validation", "test"):
      if result.get(split):
        baselines[split][name] = result[split][name][spec.main_metric]
    runs[name] = result
  path = os.path.join(workdir, "baselines.json")
  with open(path, "w") as f:
    json.dump(baselines, f, indent=2)
  print(f"\nvalidation baselines ({path}): " + ", ".join(
      f"{k}={v:.4f}" for k, v in baselines["validation"].items()), file=out, flush=True)
  return {"baselines": baselines, "runs": runs}


def load_baselines(config: ml_collections.ConfigDict, tasks) -> dict[str, dict[str, float]] | None:
  """``{split: {task: baseline main metric}}`` from ``config.baselines``; a flat
  ``{task: value}`` file holds validation baselines."""
  path = config.baselines
  if not path:
    return None
  raw = read_json(path, "baselines file", hint=" (train the single-task config first)")
  if not isinstance(raw, dict) or not raw:
    raise ConfigError(f"baselines file {path!r}: expected {{split: {{task: value}}}}")
  by_split = raw if all(isinstance(v, dict) for v in raw.values()) else {"validation": raw}
  validation = by_split.get("validation", {})
  missing = [t.name for t in tasks if t.name not in validation]
  if missing:
    raise ConfigError(f"baselines file {path!r} has no validation entry for tasks {missing}")
  zero = [t.name for t in tasks if not validation[t.name]]
  if zero:
    print(f"baselines file {path!r}: tasks {zero} have a zero baseline, so Δm% (a relative "
          "change) is undefined and not reported; train the baselines longer", file=sys.stderr)
  return {split: {t.name: float(values[t.name]) for t in tasks if t.name in values}
          for split, values in by_split.items()}


def split_baselines(baselines, split, tasks):
  """The split's baselines when every task has a usable one (else None: no Δm)."""
  values = (baselines or {}).get(split, {})
  usable = all(t.name in values and values[t.name] != 0 and np.isfinite(values[t.name])
               for t in tasks)
  return values if values and usable else None


def delta_m(results, tasks, baselines, split):
  """Δm% of ``results`` against the split's baselines (None without usable ones)."""
  values = split_baselines(baselines, split, tasks)
  return selection_score(results, tasks, values) if values else None

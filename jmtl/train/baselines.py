"""Single-task baselines: one run per task, their main metrics saved for Δm.

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

from jmtl.config import batch_size_of
from jmtl.tasks import TaskSpec


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

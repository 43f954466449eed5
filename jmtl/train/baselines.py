"""Single-task baselines: one run per task, their main metrics saved for Δm."""

from __future__ import annotations

import copy
import json
import os
import sys

import ml_collections

from jmtl.train import loop


def train_single_task_baselines(config: ml_collections.ConfigDict, workdir: str, *,
                                out=sys.stdout) -> dict:
  """Trains each task of the suite alone in ``<workdir>/<task>``; writes
  ``<workdir>/baselines.json``: ``{split: {task: main metric}}`` for validation and test."""
  suite, tasks = loop.load_suite(config)
  baselines, runs = {"validation": {}, "test": {}}, {}
  for spec in tasks:
    task_config = copy.deepcopy(config)
    with task_config.unlocked():
      task_config.single_task = False
      task_config.data.tasks = (spec.name,)
      task_config.baselines = ""
    print(f"\n== single-task baseline: {spec.name} ==", file=out, flush=True)
    result = loop.train_and_evaluate(task_config, os.path.join(workdir, spec.name), out=out)
    for split in ("validation", "test"):
      if result.get(split):
        baselines[split][spec.name] = result[split][spec.name][spec.main_metric]
    runs[spec.name] = result
  path = os.path.join(workdir, "baselines.json")
  with open(path, "w") as f:
    json.dump(baselines, f, indent=2)
  print(f"\nvalidation baselines ({path}): " + ", ".join(
      f"{k}={v:.4f}" for k, v in baselines["validation"].items()), file=out, flush=True)
  return {"baselines": baselines, "runs": runs}

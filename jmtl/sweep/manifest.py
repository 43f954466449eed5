"""``sweep.json``: the grid(s) a sweep directory was made for and every run's status.

The manifest is what makes a sweep resumable and its directory safe to reuse: a different
grid is refused unless extended on purpose, a run's settings cannot silently change under
the same name, and a run counts as done only when its result file exists (so a sweep killed
at any moment, even between a run's end and the manifest's update, re-runs the right runs).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from typing import Any

from jmtl.config import ConfigError
from jmtl.sweep.grid import Grid, Run

MANIFEST = "sweep.json"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


class Manifest:
  """The parent sweep process is its only writer; every change is saved atomically."""

  def __init__(self, sweep_dir: str, data: dict[str, Any]):
    self.sweep_dir = os.path.abspath(sweep_dir)
    self.data = data

  @property
  def runs(self) -> dict[str, dict[str, Any]]:
    return self.data["runs"]

  @classmethod
  def read(cls, sweep_dir: str) -> "Manifest":
    path = os.path.join(sweep_dir, MANIFEST)
    if not os.path.isfile(path):
      raise ConfigError(f"{sweep_dir!r} is not a sweep directory (no {MANIFEST})")
    with open(path) as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
      raise ConfigError(f"{path}: not a jmtl sweep manifest (no 'runs' mapping)")
    return cls(sweep_dir, data)

  @classmethod
  def open(cls, sweep_dir: str, grid: Grid, runs: list[Run], *, extend: bool) -> "Manifest":
    """The manifest for ``grid``: new, or the existing one (refused when made by another
    grid, unless ``extend``), with the statuses re-read from the runs' result files."""
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
      raise ConfigError(f"sweep directory {sweep_dir!r} is a file")
    grid_json = json.loads(json.dumps(grid.to_json()))
    if os.path.isfile(os.path.join(sweep_dir, MANIFEST)):
      manifest = cls.read(sweep_dir)
      grids = manifest.data.setdefault("grids", [])
      if grid_json not in grids:
        if not extend:
          raise ConfigError(
              f"sweep directory {sweep_dir!r} was made by a different grid "
              f"({_difference(grids[-1] if grids else {}, grid_json)}); pass --extend to add "
              "this grid's runs to it, or use a new directory")
        grids.append(grid_json)
    else:
      os.makedirs(sweep_dir, exist_ok=True)
      manifest = cls(sweep_dir, {"version": 1, "grids": [grid_json], "runs": {}})
    for run in runs:
      record = dataclasses.asdict(run) | {"overrides": list(run.overrides)}
      old = manifest.runs.get(run.run_id)
      if old is not None and old.get("overrides") != record["overrides"]:
        raise ConfigError(
            f"sweep directory {sweep_dir!r}: run {run.run_id} exists with other settings "
            f"({sorted(set(old.get('overrides', [])) ^ set(record['overrides']))} differ); "
            "use a new directory")
      manifest.runs[run.run_id] = (old or {"status": PENDING}) | record
    for run_id, record in manifest.runs.items():
      workdir = os.path.join(manifest.sweep_dir, "runs", *run_id.split("/"))
      result = "baselines.json" if record["method"] == "baselines" else "results.json"
      if os.path.isfile(os.path.join(workdir, result)):
        record["status"] = DONE
      elif record["status"] in (DONE, RUNNING):  # killed mid-run, or its result was deleted
        record["status"] = PENDING
    manifest.save()
    return manifest

  def status(self, run_id: str) -> str:
    return self.runs[run_id]["status"]

  def update(self, run_id: str, **fields) -> None:
    self.runs[run_id].update(fields)
    self.save()

  def counts(self, run_ids) -> dict[str, int]:
    counts = dict.fromkeys((DONE, RUNNING, FAILED, PENDING), 0)
    for run_id in run_ids:
      counts[self.status(run_id)] += 1
    return counts

  def save(self) -> None:
    path = os.path.join(self.sweep_dir, MANIFEST)
    with open(path + ".tmp", "w") as f:
      json.dump(self.data, f, indent=1)
    os.replace(path + ".tmp", path)


def _difference(old: dict, new: dict) -> str:
  changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in new
             if old.get(key) != new.get(key)]
  return "; ".join(changed) or "unknown difference"


def lock(sweep_dir: str):
  """An exclusive lock on the sweep directory for this process's lifetime: two sweeps
  writing the same runs would corrupt their checkpoints."""
  handle = open(os.path.join(sweep_dir, ".sweep.lock"), "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise ConfigError(f"another jmtl sweep is running in {sweep_dir!r}") from None
  return handle

"""A run's identity, kept in its workdir, so every command that reads the workdir checks it.

``<workdir>/run.json`` holds the config the run was last started with (file paths resolved to
absolute ones), the suite file's sha256 and task names, and the data fingerprints it trained
on. It makes a run self-describing: ``jmtl eval``, ``jmtl predict`` and a resumed ``jmtl
train`` start from this config (``load_run_config``), and a config given on top of it may
change only ``jmtl.config.MUTABLE_KEYS``. ``<workdir>/events.jsonl`` records each start and
resume, and every data change a user accepted with ``--allow-data-change``.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from jmtl import data
from jmtl.config import (ConfigError, config_from_dict, identity_mismatches, load_config,
                         to_json, with_overrides)
from jmtl.data.sources.packages import sha256_file
from jmtl.data.spec import is_suite_file, validate_suite_spec
from jmtl.train import distributed
from jmtl.train.checkpoint import CheckpointError

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"


def read_json(path: str, what: str, hint: str = ""):
  """The JSON in ``path``; a missing file or bad JSON is a ConfigError naming ``what``."""
  if not os.path.isfile(path):
    raise ConfigError(f"{what} {path!r} does not exist{hint}")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{what} {path!r}: invalid JSON at line {e.lineno}: {e.msg}") from None


def resolve_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy whose file paths are absolute, so the same file named from another folder (or
  relatively) is the same run input."""
  config = copy.deepcopy(config)
  absolute = lambda p: os.path.abspath(os.path.expanduser(p)) if p else p
  with config.unlocked():
    if is_suite_file(config.data.suite):
      config.data.suite = absolute(config.data.suite)
    config.data.vocab_file = absolute(config.data.vocab_file)
    config.data.data_dir = absolute(config.data.data_dir)
    config.baselines = absolute(config.baselines)
  return config


def suite_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What identifies the config's suite: its name, or its file's path, sha256 and tasks."""
  suite = config.data.suite
  if not is_suite_file(suite):
    return {"name": suite}
  return {"path": suite, "sha256": sha256_file(suite), "tasks": list(validate_suite_spec(suite))}


def read_run(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.isfile(path):
    return None
  record = read_json(path, "run record")
  if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
    raise ConfigError(f"run record {path!r}: expected {{\"config\": {{...}}, ...}}")
  return record


def load_run_config(workdir: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config ``workdir``'s run was last started with, with ``KEY=VALUE`` overrides applied
  (checked against the run's identity when the config is used)."""
  if not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir!r} does not exist")
  record = read_run(workdir)
  if record is None:
    raise ConfigError(f"workdir {workdir!r} has no saved run config ({RUN_FILE}; runs started "
                      "before jmtl saved one have none): pass --config")
  return with_overrides(config_from_dict(record["config"]), overrides)


def config_for_workdir(workdir: str, config_file: str | None,
                       overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """``config_file`` with overrides when given, else the workdir's saved config with them."""
  if config_file:
    return load_config(config_file, overrides)
  if not os.path.exists(os.path.join(workdir, RUN_FILE)) and not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir!r} does not exist yet: pass --config to start a run")
  return load_run_config(workdir, overrides)


def check_identity(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """Refuses ``config`` (paths resolved) when it changes an identity key of the run saved in
  ``workdir``, or when the run's suite file has changed; returns the saved record."""
  record = read_run(workdir)
  if record is None:
    return None
  problems = identity_mismatches(record["config"], json.loads(to_json(config)))
  saved_suite, suite = record.get("suite", {}), suite_record(config)
  if (not problems and saved_suite.get("sha256") and suite.get("sha256")
      and saved_suite["sha256"] != suite["sha256"]):
    detail = f"sha256 {saved_suite['sha256'][:12]}… -> {suite['sha256'][:12]}…"
    if saved_suite.get("tasks") != suite.get("tasks"):
      detail += f"; tasks {saved_suite.get('tasks')} -> {suite.get('tasks')}"
    problems.append(f"data.suite: the suite file {suite['path']} changed since the run "
                    f"started ({detail})")
  if problems:
    raise CheckpointError(
        f"this config is not the run saved in {workdir} ({RUN_FILE}); identity keys differ:\n  "
        + "\n  ".join(problems) + "\nchange only keys that may change (train.steps, logging, "
        "evaluation, data.data_dir), or start a new run with a new --workdir")
  return record


def _write_atomically(path: str, text: str) -> None:
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), suffix=".tmp",
                                   delete=False) as f:
    f.write(text)
  os.replace(f.name, path)


def save_run(workdir: str, config: ml_collections.ConfigDict,
             fingerprints: Mapping[str, str] | None) -> None:
  """Writes ``run.json`` for ``config`` (paths resolved) and the data it trains on (process 0
  of a multi-process run alone writes)."""
  if not distributed.is_primary():
    return
  record = {"config": json.loads(to_json(config)), "suite": suite_record(config),
            "fingerprints": dict(fingerprints) if fingerprints is not None else None}
  _write_atomically(os.path.join(workdir, RUN_FILE), json.dumps(record, indent=1))


def record_event(workdir: str, event: str, **fields: Any) -> None:
  """Appends ``{"time", "event", **fields}`` to ``<workdir>/events.jsonl`` (once per run:
  process 0 alone writes)."""
  if not distributed.is_primary():
    return
  entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "event": event, **fields}
  with open(os.path.join(workdir, EVENTS_FILE), "a") as f:
    f.write(json.dumps(entry, default=str) + "\n")


def run_fingerprints(suite, task_names: Sequence[str]) -> dict[str, str]:
  """The fingerprints of the data a run on ``task_names`` reads: its tasks and tokenizer."""
  return {k: v for k, v in suite.fingerprints.items() if k == "tokenizer" or k in task_names}


def check_data(saved: Mapping[str, str] | None, current: Mapping[str, str], *, where: str,
               workdir: str | None = None, allow_change: bool = False, say=print) -> None:
  """Refuses data whose fingerprints differ from those a checkpoint was trained on.

  Resume, eval, predict and init_from call this with the checkpoint's fingerprints
  (``Checkpoints.fingerprints(step)``; None for checkpoints that predate them: nothing to
  check) and ``run_fingerprints(suite, task_names)``. A task set that differs is always
  refused (the model's heads would not match); other changes pass with ``allow_change``
  (``--allow-data-change``), recorded in ``<workdir>/events.jsonl``.

  Raises:
    CheckpointError: the tasks differ.
    DataMismatchError: the data differ and ``allow_change`` is False.
  """
  if saved is None:
    return
  saved_tasks, tasks = sorted(set(saved) - {"tokenizer"}), sorted(set(current) - {"tokenizer"})
  if saved_tasks != tasks:
    raise CheckpointError(
        f"{where} was trained on tasks {saved_tasks}, but the data now has tasks {tasks}: the "
        "model's task heads do not match; select the same tasks (data.tasks) or start a new "
        "run with a new --workdir")
  try:
    data.compare_fingerprints(saved, current, accept_with="--allow-data-change")
  except data.DataMismatchError as e:
    if not allow_change:
      raise data.DataMismatchError(f"{where}: {e}") from None
    say(f"warning: {where}: going on with other data (--allow-data-change): {e}")
    if workdir is not None:
      record_event(workdir, "data_change_allowed", where=where, change=str(e),
                   saved=dict(saved), current=dict(current))

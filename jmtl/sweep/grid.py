"""Sweep grids: which runs a sweep makes, each named from its grid point, all checked first.

A grid comes from a sweep config file (``get_config()`` with ``config``, ``balancers``,
``seeds``, ``suites``, ``baselines``, ``overrides``) and/or ``--config.KEY=V1,V2`` flags: a
value list split at top-level commas is an axis, a single value a fixed override (write a
tuple with parentheses: ``--config.data.buckets=(16,)``). ``seed``, ``data.suite`` and
``balancer.*`` flags replace the file's seeds, suites and balancers. Every run is one
``jmtl train`` command line whose workdir is named from its grid point, so a re-run of the
sweep finds (and resumes or skips) it. Bad grids are refused here, before any run starts.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from jmtl.config import ConfigError, balancer_hparams, load_config

SWEEP_KEYS = ("config", "balancers", "seeds", "suites", "baselines", "overrides")
BASELINES = "baselines"  # the method label of single-task baseline runs
_DUMMY_TASK_COUNTS = (2, 3, 4, 8)  # hyperparameter values may only suit some task counts


@dataclasses.dataclass(frozen=True)
class Run:
  """One ``jmtl train`` run of the sweep."""
  run_id: str  # "SUITE/METHOD[,KEY=V...]/seedN": also its workdir under <sweep>/runs
  suite: str
  method: str  # label such as "cagrad(c=0.4)", or "baselines"
  seed: int
  point: str  # the other axes' values, "" when there are none
  overrides: tuple[str, ...]  # KEY=VALUE, without the sweep-dependent baselines path
  baselines_run: str | None = None  # run_id whose baselines.json this run's Δm uses

  @property
  def single_task(self) -> bool:
    return self.method == BASELINES

  @property
  def result_file(self) -> str:
    return "baselines.json" if self.single_task else "results.json"

  @property
  def group(self) -> str:
    """The report row: method plus the other axes' values."""
    return f"{self.method} {self.point}".strip()

  def workdir(self, sweep_dir: str) -> str:
    return os.path.join(os.path.abspath(sweep_dir), "runs", *self.run_id.split("/"))

  def command(self, sweep_dir: str, config_path: str) -> list[str]:
    overrides = list(self.overrides)
    if self.baselines_run:
      path = os.path.join(os.path.abspath(sweep_dir), "runs", *self.baselines_run.split("/"),
                          "baselines.json")
      overrides.append(f"baselines={path}")
    return [sys.executable, "-m", "jmtl.cli", "train", "--config", config_path,
            "--workdir", self.workdir(sweep_dir), "--config.train.progress=False",
            *(f"--config.{o}" for o in overrides)]


@dataclasses.dataclass(frozen=True)
class Grid:
  """What a sweep runs; ``to_json()`` is what ``sweep.json`` records and compares."""
  config: str  # the training config file
  methods: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (name, sorted hparams)
  seeds: tuple[int, ...]
  suites: tuple[str, ...]
  baselines: bool
  fixed: tuple[str, ...]  # KEY=VALUE for every run
  axes: tuple[tuple[str, tuple[str, ...]], ...]  # (KEY, values) crossed with the rest

  def to_json(self) -> dict[str, Any]:
    return {"config": self.config, "methods": [[n, dict(h)] for n, h in self.methods],
            "seeds": list(self.seeds), "suites": list(self.suites),
            "baselines": self.baselines, "fixed": list(self.fixed),
            "axes": {k: list(v) for k, v in self.axes}}

  def runs(self) -> list[Run]:
    """Baseline runs first (multi-task runs read their baselines.json)."""
    runs = []
    points = [tuple(zip([k for k, _ in self.axes], values))
              for values in itertools.product(*(v for _, v in self.axes))]
    for suite, point, seed in itertools.product(self.suites, points, self.seeds):
      common = (*self.fixed, f"data.suite={suite}", f"seed={seed}",
                *(f"{k}={v}" for k, v in point))
      point_label = ",".join(f"{k}={v}" for k, v in point)
      baselines_id = None
      if self.baselines:
        baselines_id = run_id(suite, BASELINES, point_label, seed)
        runs.append(Run(baselines_id, suite_label(suite), BASELINES, seed, point_label,
                        (*(o for o in common if not o.startswith("balancer.")),
                         "single_task=True", "balancer.name=equal_weight")))
      for name, hparams in self.methods:
        method = method_label(name, hparams)
        runs.append(Run(run_id(suite, method, point_label, seed), suite_label(suite), method,
                        seed, point_label,
                        (*common, f"balancer.name={name}",
                         *(f"balancer.{k}={v!r}" for k, v in hparams)), baselines_id))
    return sorted(runs, key=lambda r: not r.single_task)


def suite_label(suite: str) -> str:
  """A suite's short name: a suite file's name without ``.json``."""
  return os.path.splitext(os.path.basename(suite))[0] if suite.endswith(".json") else suite


def method_label(name: str, hparams) -> str:
  return name if not hparams else f"{name}({','.join(f'{k}={v}' for k, v in hparams)})"


def run_id(suite: str, method: str, point: str, seed: int) -> str:
  safe = lambda text: re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"
  return "/".join((safe(suite_label(suite)), safe(f"{method},{point}" if point else method),
                   f"seed{seed}"))


def split_values(text: str) -> list[str]:
  """``"a,(1,2),'x,y'"`` -> ``["a", "(1,2)", "'x,y'"]``: commas inside brackets or quotes
  belong to one value."""
  values, depth, quote, current = [], 0, None, ""
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      values.append(current.strip())
      current = ""
      continue
    current += char
  values.append(current.strip())
  return values


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load_sweep_file(path: str) -> dict[str, Any]:
  config = load_config(path).to_dict()
  unknown = sorted(set(config) - set(SWEEP_KEYS))
  if unknown:
    raise ConfigError(f"sweep config {path!r}: unknown keys {unknown}; valid keys: "
                      f"{', '.join(SWEEP_KEYS)}")
  return config


def build_grid(sweep_file: str | None, config_path: str | None,
               flags: Sequence[str]) -> Grid:
  """The grid from a sweep file and ``KEY=V1,V2`` flags (flags win); checked, see
  ``check_grid``."""
  spec = load_sweep_file(sweep_file) if sweep_file else {}
  where = f"sweep config {sweep_file!r}" if sweep_file else "sweep"
  config_path = config_path or spec.get("config")
  if not config_path:
    raise ConfigError(f"{where}: no training config: pass --config FILE or set `config` in "
                      "the sweep config file")
  config_path = os.path.abspath(config_path)
  base = load_config(config_path)
  file_overrides = spec.get("overrides", ())
  if isinstance(file_overrides, str):
    file_overrides = (file_overrides,)
  parsed = []
  for flag in [*file_overrides, *flags]:
    if "=" not in flag:
      raise ConfigError(f"{where}: override {flag!r} is not KEY=VALUE or KEY=V1,V2")
    key, text = flag.split("=", 1)
    parsed.append((key, split_values(text)))
  by_key = dict(parsed)  # a later flag replaces an earlier one for the same key

  def take(key):
    return by_key.pop(key, None)

  seeds = take("seed")
  seeds = tuple(_int_seed(v, where) for v in seeds) if seeds else tuple(
      spec.get("seeds") or (base.seed,))
  suites = take("data.suite") or tuple(spec.get("suites") or (base.data.suite,))
  names = take("balancer.name")
  hparam_axes = {key[len("balancer."):]: by_key.pop(key)
                 for key in [k for k in by_key if k.startswith("balancer.")]}
  if names:
    methods = [(n, {}) for n in names]
  elif spec.get("balancers"):
    methods = [_method_entry(entry, i, where) for i, entry in enumerate(spec["balancers"])]
  else:
    methods = [(base.balancer.name, balancer_hparams(base))]
  expanded = []
  for name, hparams in methods:
    for values in itertools.product(*hparam_axes.values()):
      merged = {**hparams, **{k: _literal(v) for k, v in zip(hparam_axes, values)}}
      # Lists become tuples: a method must be hashable, and --config.balancer.K=(..) is one.
      expanded.append((name, tuple(sorted(
          (k, tuple(v) if isinstance(v, list) else v) for k, v in merged.items()))))
  grid = Grid(config=config_path, methods=tuple(dict.fromkeys(expanded)),
              seeds=tuple(dict.fromkeys(seeds)), suites=tuple(dict.fromkeys(map(str, suites))),
              baselines=bool(spec.get("baselines", False)),
              fixed=tuple(f"{k}={v[0]}" for k, v in by_key.items() if len(v) == 1),
              axes=tuple((k, tuple(v)) for k, v in by_key.items() if len(v) > 1))
  check_grid(grid, where)
  return grid


def _int_seed(text: str, where: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise ConfigError(f"{where}: seed {text!r} is not an integer") from None


def _method_entry(entry, index: int, where: str) -> tuple[str, dict]:
  if isinstance(entry, str):
    return entry, {}
  if (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
      and isinstance(entry[1], dict)):
    return entry[0], dict(entry[1])
  raise ConfigError(f"{where}: balancers[{index}] is {entry!r}; write a name or "
                    "(name, {hyperparameter: value})")


def check_grid(grid: Grid, where: str) -> None:
  """Refuses unknown balancers, hyperparameters and config keys before any run starts."""
  for name, hparams in grid.methods:
    _check_balancer(name, dict(hparams), where)
  seen = set()
  for run in grid.runs():
    key = tuple(o for o in run.overrides if not o.startswith(("seed=", "data.suite=")))
    if key in seen:
      continue
    seen.add(key)
    try:
      load_config(grid.config, run.overrides)
    except ConfigError as e:
      raise ConfigError(f"{where}: run {run.run_id}: {e}") from None
  for suite in grid.suites:
    if suite.endswith(".json") and not os.path.isfile(suite):
      raise ConfigError(f"{where}: suite file {suite!r} does not exist")


def _check_balancer(name: str, hparams: dict, where: str) -> None:
  """Builds the method for a few dummy task counts: an unknown name or hyperparameter fails
  for every count; a value (e.g. per-task weights) may only fit the suite's count."""
  from jmtl import balancers
  label = method_label(name, tuple(sorted(hparams.items())))
  first_error = None
  for num_tasks in _DUMMY_TASK_COUNTS:
    try:
      balancers.get(name, num_tasks, **hparams)
      return
    except KeyError as e:
      raise ConfigError(f"{where}: balancer {label}: {e.args[0] if e.args else e}") from None
    except TypeError as e:
      raise ConfigError(f"{where}: balancer {label}: {e}") from None
    except ValueError as e:
      first_error = first_error or e
  raise ConfigError(f"{where}: balancer {label}: {first_error}")

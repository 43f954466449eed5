"""Sweep report: per suite, each method's per-task main metrics, Δm%, mean rank, step time
and peak memory as mean ± standard error over seeds, from the runs' own files.

The numbers are computed here from ``results.json`` (main metrics and their directions),
the baselines' ``baselines.json`` and ``metrics.jsonl``, so a report can be rebuilt from a
sweep directory at any time, on either split. Rules (also written into the report):

- standard error: sample standard deviation (ddof=1) / sqrt(number of seeds); none for one.
- Δm% (Maninis et al. 2019): each run against the single-task baselines of its own suite,
  seed and grid point, on the report's split; positive is better.
- mean rank: per task, methods ranked by their mean main metric (1 = best, direction
  respected, ties share the average rank), then averaged over tasks.
- step time: 1000 / median of the run's logged ``steps_per_second``, leaving out the first
  record (it includes compilation); peak memory: the run process's peak resident memory.
- conflict %: the percentage of a run's logged steps where two tasks' gradients of the
  shared parameters have a negative cosine (``results.json`` ``diagnostics``).
- within noise: |Δm(method) - Δm(reference)| < 2 * sqrt(se(method)^2 + se(reference)^2).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from jmtl import metrics as metrics_lib
from jmtl.config import ConfigError
from jmtl.sweep.grid import BASELINES, method_label
from jmtl.sweep.manifest import DONE, Manifest

NOISE_RULE = ("within noise: |Δm - Δm(reference)| < 2 * sqrt(se^2 + se_reference^2) "
              "(se: standard error over seeds)")


def mean_se(values) -> dict[str, float | int | None]:
  """``{"mean", "se", "n"}`` over the finite values; se is None with fewer than two."""
  values = [float(v) for v in values if v is not None and math.isfinite(v)]
  if not values:
    return {"mean": None, "se": None, "n": 0}
  se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
  return {"mean": float(np.mean(values)), "se": se, "n": len(values)}


def mean_ranks(means: dict[str, dict[str, float]], higher_is_better: dict[str, bool]
               ) -> dict[str, float]:
  """``{method: mean over tasks of its rank}`` from ``{method: {task: mean metric}}``."""
  ranks = defaultdict(list)
  for task, higher in higher_is_better.items():
    scored = {m: v[task] for m, v in means.items() if v.get(task) is not None}
    for method, value in scored.items():
      better = sum(1 for o in scored.values() if (o > value if higher else o < value))
      ties = sum(1 for o in scored.values() if o == value)  # includes itself
      ranks[method].append(better + (ties + 1) / 2)
  return {method: float(np.mean(r)) for method, r in ranks.items()}


def step_ms(metrics_path: str) -> float | None:
  if not os.path.isfile(metrics_path):
    return None
  from jmtl.train.logging import read_jsonl
  rates = [r["steps_per_second"] for r in read_jsonl(metrics_path)
           if r.get("split") == "train" and r.get("steps_per_second")]
  rates = rates[1:] if len(rates) > 1 else rates
  return 1000.0 / float(np.median(rates)) if rates else None


def _read_json(path: str, what: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"{what} {path!r} does not exist") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"{what} {path!r}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _baselines_path(sweep_dir: str, record: dict) -> str | None:
  if record.get("baselines_run"):
    return os.path.join(sweep_dir, "runs", *record["baselines_run"].split("/"), "baselines.json")
  given = [o.split("=", 1)[1] for o in record.get("overrides", []) if o.startswith("baselines=")]
  return given[-1] if given and given[-1] else None


def _run_values(sweep_dir: str, record: dict, split: str) -> dict[str, Any]:
  workdir = os.path.join(sweep_dir, "runs", *record["run_id"].split("/"))
  path = os.path.join(workdir, "results.json")
  result = _read_json(path, "results file")
  if "main_metrics" not in result or "higher_is_better" not in result:
    raise ConfigError(f"results file {path!r} has no main_metrics/higher_is_better (written "
                      "by an older jmtl): re-run that run to rewrite it")
  table = result.get(split) or {}
  main = {t: table[t][m] for t, m in result["main_metrics"].items() if m in table.get(t, {})}
  delta = None
  baselines_path = _baselines_path(sweep_dir, record)
  if baselines_path and main:
    raw = _read_json(baselines_path, "baselines file")
    by_split = raw if all(isinstance(v, dict) for v in raw.values()) else {"validation": raw}
    try:
      delta = metrics_lib.delta_m(main, by_split.get(split, {}), result["higher_is_better"])
    except ValueError:
      delta = None  # a missing or zero baseline: Δm undefined for this run
  return {"run_id": record["run_id"], "seed": record["seed"], "main": main, "delta_m": delta,
          "main_metrics": result["main_metrics"], "higher_is_better": result["higher_is_better"],
          "step_ms": step_ms(os.path.join(workdir, "metrics.jsonl")),
          "peak_rss_mb": record.get("peak_rss_mb"),
          "conflict_pct": _percent((result.get("diagnostics") or {}).get("conflict_fraction"))}


def _percent(fraction: float | None) -> float | None:
  return None if fraction is None else 100.0 * fraction


def _has_split(sweep_dir: str, record: dict, split: str) -> bool:
  path = os.path.join(sweep_dir, "runs", *record["run_id"].split("/"), "results.json")
  return bool(_read_json(path, "results file").get(split))


def build_report(sweep_dir: str, *, split: str | None = None,
                 reference: str = "equal_weight") -> dict[str, Any]:
  manifest = Manifest.read(sweep_dir)
  records = [r for r in manifest.runs.values()
             if r["method"] != BASELINES and r["status"] == DONE]
  if not records:
    raise ConfigError(f"sweep {sweep_dir!r} has no finished multi-task run to report yet")
  if split is None:
    split = "test" if all(_has_split(sweep_dir, r, "test") for r in records) else "validation"
  suites: dict[str, Any] = {}
  for record in sorted(records, key=lambda r: r["suite"]):  # stable: the grid's method order
    suite = suites.setdefault(record["suite"], {"groups": {}, "tasks": {}})
    values = _run_values(sweep_dir, record, split)
    for task, metric in values["main_metrics"].items():
      suite["tasks"].setdefault(task, {"metric": metric,
                                       "higher_is_better": values["higher_is_better"][task]})
    group = f"{record['method']} {record['point']}".strip()
    entry = suite["groups"].setdefault(group, {"method": record["method"],
                                               "point": record["point"], "runs": []})
    entry["runs"].append(values)
  for suite in suites.values():
    _summarize_suite(suite, reference)
  counts = manifest.counts(manifest.runs)
  return {"split": split, "reference": reference, "noise_rule": NOISE_RULE,
          "runs": counts, "suites": suites}


def _summarize_suite(suite: dict, reference: str) -> None:
  tasks = suite["tasks"]
  for entry in suite["groups"].values():
    runs = entry["runs"]
    entry["seeds"] = sorted(r["seed"] for r in runs)
    entry["metrics"] = {t: mean_se(r["main"].get(t) for r in runs) for t in tasks}
    entry["delta_m"] = mean_se(r["delta_m"] for r in runs)
    entry["step_ms"] = mean_se(r["step_ms"] for r in runs)
    entry["peak_rss_mb"] = mean_se(r["peak_rss_mb"] for r in runs)
    entry["conflict_pct"] = mean_se(r["conflict_pct"] for r in runs)
  ranks = mean_ranks({g: {t: m["mean"] for t, m in e["metrics"].items()}
                      for g, e in suite["groups"].items()},
                     {t: spec["higher_is_better"] for t, spec in tasks.items()})
  for group, entry in suite["groups"].items():
    entry["mean_rank"] = ranks.get(group)
    reference_group = f"{method_label(reference, ())} {entry['point']}".strip()
    entry["vs_reference"] = _versus(entry, suite["groups"].get(reference_group),
                                    group == reference_group)


def _versus(entry: dict, reference: dict | None, is_reference: bool) -> str:
  """"reference", "better", "worse", "within noise", or "n/a" (no Δm or fewer than two
  seeds on either side)."""
  if is_reference:
    return "reference"
  mine, theirs = entry["delta_m"], (reference or {}).get("delta_m") or {}
  if mine["se"] is None or theirs.get("se") is None:
    return "n/a"
  difference = mine["mean"] - theirs["mean"]
  if abs(difference) < 2 * math.hypot(mine["se"], theirs["se"]):
    return "within noise"
  return "better" if difference > 0 else "worse"


def _cell(stat: dict, digits: int = 4) -> str:
  if stat["mean"] is None:
    return "-"
  if stat["se"] is None:
    return f"{stat['mean']:.{digits}f}"
  return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def to_markdown(report: dict) -> str:
  lines = [f"# Sweep report ({report['split']} split)", "",
           f"Runs: {', '.join(f'{k} {v}' for k, v in report['runs'].items())}. Values are "
           f"mean ± standard error over seeds; ↑/↓: higher/lower is better. "
           f"vs {report['reference']}: {report['noise_rule']}.", ""]
  for name, suite in report["suites"].items():
    tasks = suite["tasks"]
    header = ["method", "seeds",
              *(f"{t} {s['metric']} {'↑' if s['higher_is_better'] else '↓'}"
                for t, s in tasks.items()),
              "Δm% ↑", "mean rank ↓", "ms/step", "peak RSS MB", "conflict %", f"vs {report['reference']}"]
    lines += [f"## {name}", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for group, e in suite["groups"].items():
      rank = "-" if e["mean_rank"] is None else f"{e['mean_rank']:.2f}"
      cells = [group, str(len(e["seeds"])), *(_cell(e["metrics"][t]) for t in tasks),
               _cell(e["delta_m"], 2), rank, _cell(e["step_ms"], 1),
               _cell(e["peak_rss_mb"], 0), _cell(e["conflict_pct"], 1), e["vs_reference"]]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def to_rows(report: dict) -> list[dict[str, Any]]:
  rows = []
  for name, suite in report["suites"].items():
    for group, e in suite["groups"].items():
      row = {"suite": name, "method": group, "seeds": len(e["seeds"])}
      for task, spec in suite["tasks"].items():
        key = f"{task}/{spec['metric']}"
        row[f"{key}_mean"], row[f"{key}_se"] = e["metrics"][task]["mean"], e["metrics"][task]["se"]
      for field in ("delta_m", "step_ms", "peak_rss_mb", "conflict_pct"):
        row[f"{field}_mean"], row[f"{field}_se"] = e[field]["mean"], e[field]["se"]
      row["mean_rank"] = e["mean_rank"]
      row[f"vs_{report['reference']}"] = e["vs_reference"]
      rows.append(row)
  return rows


def write_report(report: dict, sweep_dir: str) -> list[str]:
  """``report.md``, ``report.csv`` and ``report.json`` in the sweep directory."""
  paths = [os.path.join(sweep_dir, f"report.{ext}") for ext in ("md", "csv", "json")]
  with open(paths[0], "w") as f:
    f.write(to_markdown(report) + "\n")
  rows = to_rows(report)
  fields = list(dict.fromkeys(key for row in rows for key in row))
  with open(paths[1], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  with open(paths[2], "w") as f:
    json.dump(report, f, indent=1)
  return paths

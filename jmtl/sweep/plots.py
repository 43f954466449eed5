"""PNG plots (matplotlib, Agg backend: no display needed).

- ``plot_pareto``: per suite, two tasks' main metrics, one small point per run, one large
  point per method (its mean over seeds), and the non-dominated front of the method means;
  with more than two tasks, one panel per pair.
- ``plot_curves``: a run's training curves from ``metrics.jsonl``: per-task loss, task
  weights, gradient norm, per-task gradient norms and pairwise gradient cosines over steps
  (the last two for every method: ``jmtl.train.diagnostics``).
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

from jmtl.config import ConfigError


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def non_dominated(points: dict[str, tuple[float, float]], higher: tuple[bool, bool]
                  ) -> list[str]:
  """Names of the points no other point dominates (at least as good on both axes and
  better on one, with each axis's direction)."""
  def at_least(a, b, up):
    return a >= b if up else a <= b

  front = []
  for name, p in points.items():
    dominated = any(
        all(at_least(q[i], p[i], higher[i]) for i in (0, 1)) and q != p
        for other, q in points.items() if other != name)
    if not dominated:
      front.append(name)
  return front


def plot_pareto(report: dict[str, Any], out_dir: str, tasks: tuple[str, ...] = ()) -> list[str]:
  """One ``pareto_<suite>.png`` per suite with at least two tasks; returns the paths."""
  plt = _pyplot()
  paths = []
  for suite_name, suite in report["suites"].items():
    names = list(tasks) or list(suite["tasks"])
    unknown = [t for t in names if t not in suite["tasks"]]
    if unknown or len(names) < 2:
      if tasks:
        raise ConfigError(f"--tasks {','.join(tasks)}: suite {suite_name!r} has tasks "
                          f"{', '.join(suite['tasks'])}; name two or more of them")
      continue
    pairs = list(itertools.combinations(names, 2))
    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.2 * rows),
                                squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
      _pareto_panel(ax, suite, pair)
    for ax in list(axes.flat)[len(pairs):]:
      ax.axis("off")
    figure.suptitle(f"{suite_name}: {report['split']} main metrics", fontsize=11)
    figure.tight_layout()
    path = os.path.join(out_dir, f"pareto_{suite_name}.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    paths.append(path)
  return paths


MARKERS = ("o", "s", "^", "D", "v", "P")


def method_styles(groups) -> dict[str, tuple[str, str]]:
  """(colour, marker) per group, all distinct: the ten default colours, then the next marker
  (an eleven-method sweep drew its first and last method alike)."""
  return {group: (f"C{i % 10}", MARKERS[(i // 10) % len(MARKERS)])
          for i, group in enumerate(groups)}


def _pareto_panel(ax, suite: dict, pair: tuple[str, str]) -> None:
  specs = [suite["tasks"][t] for t in pair]
  means = {}
  for group, (color, marker) in method_styles(suite["groups"]).items():
    entry = suite["groups"][group]
    runs = [r for r in entry["runs"] if all(t in r["main"] for t in pair)]
    ax.scatter([r["main"][pair[0]] for r in runs], [r["main"][pair[1]] for r in runs],
               s=14, alpha=0.45, color=color, marker=marker)
    mean = tuple(entry["metrics"][t]["mean"] for t in pair)
    if None not in mean:
      means[group] = mean
      ax.scatter(*mean, s=70, color=color, marker=marker, edgecolor="black", label=group,
                 zorder=3)
  front = sorted((means[g] for g in non_dominated(means, tuple(s["higher_is_better"]
                                                                for s in specs))))
  if front:
    ax.plot(*zip(*front), color="black", linestyle="--", linewidth=1, marker="o",
            markerfacecolor="none", markersize=13, label="non-dominated means", zorder=2)
  for axis, task, spec in (("x", pair[0], specs[0]), ("y", pair[1], specs[1])):
    arrow = "↑" if spec["higher_is_better"] else "↓"
    getattr(ax, f"set_{axis}label")(f"{task} {spec['metric']} {arrow}")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)


def plot_curves(workdir: str, out: str | None = None) -> list[str]:
  """Training curves of the run in ``workdir``, or of every run of a sweep directory."""
  from jmtl.sweep.manifest import MANIFEST, Manifest
  if os.path.isfile(os.path.join(workdir, MANIFEST)):
    if out:
      raise ConfigError("--out names one file; a sweep directory gets one curves.png per run")
    manifest = Manifest.read(workdir)
    run_dirs = [os.path.join(workdir, "runs", *run_id.split("/")) for run_id in manifest.runs]
    return [_plot_run(d, os.path.join(d, "curves.png")) for d in run_dirs
            if os.path.isfile(os.path.join(d, "metrics.jsonl"))]
  return [_plot_run(workdir, out or os.path.join(workdir, "curves.png"))]


def _plot_run(workdir: str, out: str) -> str:
  from jmtl.train.logging import read_jsonl
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise ConfigError(f"{workdir!r} has no metrics.jsonl (not a jmtl training workdir, or "
                      "no step logged yet)")
  records = sorted({r["step"]: r for r in read_jsonl(path) if r.get("split") == "train"}
                   .values(), key=lambda r: r["step"])  # a resumed run logs steps again
  if not records:
    raise ConfigError(f"{path}: no training records yet")
  panels = [(key, title) for key, title in (
      ("losses", "per-task loss"), ("weights", "task weights"), ("grad_norm", "gradient norm"),
      ("task_grad_norms", "per-task gradient norm (shared params)"),
      ("cosines", "pairwise gradient cosine")) if any(key in r for r in records)]
  plt = _pyplot()
  figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
  for ax, (key, title) in zip(axes.flat, panels):
    rows = [r for r in records if r.get(key) is not None]
    steps = [r["step"] for r in rows]
    if isinstance(rows[0][key], dict):
      for name in rows[0][key]:
        ax.plot(steps, [r[key].get(name) for r in rows], label=name)
      ax.legend(fontsize=7)
    else:
      ax.plot(steps, [r[key] for r in rows])
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if key == "cosines":
      ax.axhline(0, color="black", linewidth=0.8)
  figure.suptitle("/".join(os.path.normpath(workdir).split(os.sep)[-3:]))
  figure.tight_layout()
  figure.savefig(out, dpi=110)
  plt.close(figure)
  return out

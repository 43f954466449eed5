"""Ratios, targets, the Markdown report, the JSON and the plot of the peer comparison."""

from __future__ import annotations

import pathlib
from typing import Any

from benchmarks import _common

METHODS = ("ew", "pcgrad", "mgda", "cagrad", "upgrad", "rep_pcgrad")
LIBRARIES = ("jmtl", "libmtl", "torchjd", "pytorch")
BALANCED = ("pcgrad", "mgda", "cagrad", "upgrad")
COLORS = {"jmtl": "C0", "libmtl": "C1", "torchjd": "C2", "pytorch": "C3"}  # same in every panel


def _key(library: str, method: str) -> str | None:
  """The timing key of (library, method), or None where that library has no such variant."""
  if library == "jmtl":
    return f"jmtl/{method}"
  if library == "pytorch":  # plain PyTorch: EW, and rep-grad (torchjd's weighting on rep grads)
    return f"torch/{method}" if method in ("ew", "rep_pcgrad") else None
  return f"torch/{library}_{method}" if method in BALANCED else None


def step_rows(run: dict) -> list[dict]:
  """One row per (library, method) timed in ``run``, with its ratio to its framework's EW."""
  medians = {key: summary["median"] for key, summary in run["steps"].items()}
  rows = []
  for method in METHODS:
    for library in LIBRARIES:
      key = _key(library, method)
      if key is None or key not in medians:
        continue
      baseline = medians.get("jmtl/ew" if library == "jmtl" else "torch/ew")
      rows.append({"tasks": run["tasks"], "layout": run["layout"], "method": method,
                   "library": library, "median_seconds": medians[key],
                   "ratio_to_own_ew": None if baseline is None else medians[key] / baseline})
  return rows


def targets(runs: list[dict], rows: list[dict]) -> list[dict]:
  medians = {(r["tasks"], r["layout"], r["library"], r["method"]): r for r in rows}
  out = []
  jmtl = medians.get((8, "same_input", "jmtl", "pcgrad"))
  libmtl = medians.get((8, "same_input", "libmtl", "pcgrad"))
  if jmtl and libmtl:
    value = jmtl["median_seconds"] / libmtl["median_seconds"]
    out.append({"what": "jmtl exact PCGrad step / LibMTL PCGrad step", "tasks": 8,
                "layout": "same_input", "limit": "<= 0.45", "value": value, "met": value <= 0.45})
  for run in runs:
    t, layout = run["tasks"], run["layout"]
    ours, theirs = medians.get((t, layout, "jmtl", "ew")), medians.get((t, layout, "pytorch", "ew"))
    if ours and theirs:
      value = ours["median_seconds"] / theirs["median_seconds"]
      out.append({"what": "jmtl EW step / PyTorch EW step", "tasks": t, "layout": layout,
                  "limit": "<= 0.9", "value": value, "met": value <= 0.9})
    for method in BALANCED:
      ours = medians.get((t, layout, "jmtl", method))
      peers = [medians.get((t, layout, lib, method)) for lib in ("libmtl", "torchjd")]
      peers = [p for p in peers if p and p["ratio_to_own_ew"] is not None]
      if ours and peers:
        best = min(p["ratio_to_own_ew"] for p in peers)
        out.append({"what": f"jmtl {method}/EW ratio below every peer's "
                            f"({', '.join(p['library'] for p in peers)})",
                    "tasks": t, "layout": layout, "limit": f"< {best:.2f}",
                    "value": ours["ratio_to_own_ew"], "met": ours["ratio_to_own_ew"] < best})
  return out


def build_payload(runs, memory_rows, agreement, meta) -> dict[str, Any]:
  rows = [row for run in runs for row in step_rows(run)]
  return {"benchmark": "peers", "meta": meta, "agreement": agreement, "steps": rows,
          "targets": targets(runs, rows), "memory": memory_rows,
          "compile": [{"tasks": run["tasks"], "layout": run["layout"], "variant": name, **info}
                      for run in runs for name, info in run["jmtl_compile"].items()],
          "first_losses": [{"tasks": run["tasks"], "layout": run["layout"], **run["first_losses"]}
                           for run in runs],
          "skipped": [{"tasks": run["tasks"], "layout": run["layout"], "variant": k, "why": v}
                      for run in runs for k, v in run["skipped"].items()],
          "raw": [{"tasks": run["tasks"], "layout": run["layout"], "steps": run["steps"],
                   "samples": run["samples"]} for run in runs]}


PROTOCOL = """\
Both frameworks train the same model from the same initial weights (exported from jmtl,
loaded into PyTorch) on the same batches. Each side runs in its own process with the same
intra-op thread count. jmtl's steps are compiled ahead of time; its
compile time is reported apart. After one untimed round per side, timed rounds alternate
between the two processes (only one runs at a time; the side that goes first alternates),
each round timing every variant of that side in turn. Medians; ratios are ratios of medians
from the same run. The machine is small (2 cores) and shared with other work while these
ran: compare ratios, not absolute times. Peak memory: each variant alone in a fresh
process (peak RSS, VmHWM, after setup, jmtl's compilation included, and 3 steps)."""


def markdown(payload: dict) -> str:
  meta = payload["meta"]
  parts = ["# jmtl vs LibMTL 1.1.5 and torchjd 0.18", "", PROTOCOL, "",
           f"Threads: {meta['threads']} (CPUs {meta['cpus']}); XLA_FLAGS `{meta['xla_flags']}`; "
           f"PyTorch `{meta['torch_threads']}`. Rounds: {meta['rounds']} x {meta['steps_per_round']} "
           f"steps per variant after {meta['warmup_rounds']} warm-up round(s), each round "
           f"starting every variant with {meta.get('settle_steps_per_round', 0)} untimed "
           f"step(s) on both sides. LD_PRELOAD: "
           f"{meta.get('ld_preload') or 'none (glibc malloc)'}, both processes. "
           f"{_common.malloc_sentence(meta.get('malloc'))} Model/batch: "
           f"`{meta['shape']}`; multi-input: T batches of that size, one per task.", ""]
  for key, label in (("timings_from", "Step times"), ("memory_from", "Peak memory")):
    if key in meta:
      parts += [f"{label}: {meta[key]}.", ""]
  parts += ["## Step time (median ms) and ratio to the same framework's EW step", "",
            _common.markdown_table(
                ["T", "layout", "method", "library", "median ms", "ratio to own EW"],
                [[r["tasks"], r["layout"], r["method"], r["library"],
                  _common.format_ms(r["median_seconds"]), _common.format_ratio(r["ratio_to_own_ew"])]
                 for r in payload["steps"]]), ""]
  parts += ["## Targets", "", _common.markdown_table(
      ["target", "T", "layout", "limit", "measured", "met"],
      [[t["what"], t["tasks"], t["layout"], t["limit"], f"{t['value']:.2f}",
        "yes" if t["met"] else "NO"] for t in payload["targets"]]), ""]
  parts += ["## jmtl compile time (apart from step time)", "", _common.markdown_table(
      ["T", "layout", "variant", "trace+lower s", "XLA compile s", "XLA temp MiB"],
      [[c["tasks"], c["layout"], c["variant"], f"{c['lower_seconds']:.2f}",
        f"{c['compile_seconds']:.2f}",
        "n/a" if c["xla_temp_bytes"] is None else f"{c['xla_temp_bytes'] / 2**20:.0f}"]
       for c in payload["compile"]]), ""]
  if payload["memory"]:
    parts += ["## Peak memory (each variant alone in a fresh process)", "", _common.markdown_table(
        ["T", "layout", "library", "variant", "peak RSS MiB"],
        [[m["tasks"], m["layout"], m["library"], m["variant"],
          m.get("skipped") or f"{m['peak_rss_mib']:.0f}"] for m in payload["memory"]]), ""]
  agreement = payload["agreement"]
  parts += ["## Numerical agreement", "", f"{agreement['method']} (T={agreement['num_tasks']}, "
            f"d={agreement['dimension']}); tolerance {agreement['tolerance']:g} relative "
            f"(L2 of the difference over L2 of the reference); within tolerance: "
            f"{agreement['within_tolerance']}. LibMTL's extra visit of j = i changes the result "
            f"on this Jacobian: {agreement['libmtl_self_visit_changes_result']}.", "",
            _common.markdown_table(["pair", "relative error"],
                                   [[k, f"{v:.2e}"] for k, v in agreement["relative_errors"].items()]),
            ""]
  parts += ["## First-step losses (same weights, same batch)", "", _common.markdown_table(
      ["T", "layout", "max relative difference jmtl vs PyTorch"],
      [[f["tasks"], f["layout"], "n/a" if f["max_relative_difference"] is None
        else f"{f['max_relative_difference']:.1e}"] for f in payload["first_losses"]]), ""]
  if payload["skipped"]:
    parts += ["## Not run", "", _common.markdown_table(
        ["T", "layout", "variant", "why"],
        [[s["tasks"], s["layout"], s["variant"], s["why"]] for s in payload["skipped"]]), ""]
  if payload.get("analysis"):
    parts += ["## Analysis", "", payload["analysis"], ""]
  return "\n".join(parts)


def plot(payload: dict, path: pathlib.Path) -> pathlib.Path:
  """Step-time ratio to the framework's own EW vs T: one panel per (layout, method)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in payload["steps"] if r["method"] != "ew" and r["ratio_to_own_ew"]]
  panels = sorted({(r["layout"], r["method"]) for r in rows},
                  key=lambda p: (p[0] != "same_input", METHODS.index(p[1])))
  columns = max(1, min(5, len(panels)))
  grid_rows = max(1, -(-len(panels) // columns))
  figure, axes = plt.subplots(grid_rows, columns, figsize=(3.2 * columns, 2.8 * grid_rows),
                              squeeze=False)
  for axis, (layout, method) in zip(axes.flat, panels):
    for library in LIBRARIES:
      points = sorted((r["tasks"], r["ratio_to_own_ew"]) for r in rows
                      if (r["layout"], r["method"], r["library"]) == (layout, method, library))
      if points:
        axis.plot(*zip(*points), marker="o", label=library, color=COLORS[library])
    axis.set_title(f"{method} ({layout.replace('_', '-')})", fontsize=9)
    axis.set_xlabel("T")
    axis.set_ylabel("step / own EW step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  for axis in list(axes.flat)[len(panels):]:
    axis.axis("off")
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def write(payload: dict, out: pathlib.Path) -> list[pathlib.Path]:
  out.mkdir(parents=True, exist_ok=True)
  paths = [_common.write_json(out / "peers.json", payload)]
  (out / "peers.md").write_text(markdown(payload) + "\n")
  paths.append(out / "peers.md")
  paths.append(plot(payload, out / "peers.png"))
  return paths

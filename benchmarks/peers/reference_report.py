"""The JSON payload and the Markdown table of benchmarks/references.py (torch-free)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks import _common
from benchmarks.peers import reference_checks as checks
from benchmarks.peers import reference_methods as table

CONVENTIONS = {
    "same": "none needed: both sides use the same convention",
    "1/T": "peer output divided by T (the peer sums where jmtl averages)",
    "T": "peer output times T (the peer averages where jmtl sums)",
    "1/(1+c^2)": "peer output divided by 1 + c^2 (jmtl's and LibMTL's rescale=1)",
}


def reason_counts(rows: list[dict]) -> dict[str, int]:
  """How often each kind of reason (a reason's first clause, before any figures) occurs."""
  heads = [r["reason"].split(";")[0].split(":")[0].split(" (")[0] for r in rows if "reason" in r]
  return {head: heads.count(head) for head in sorted(set(heads), key=heads.count, reverse=True)}


def summary(rows: list[dict]) -> list[dict]:
  """One line per (method, peer): how many compared steps, the largest differences."""
  out = []
  for method in table.METHODS:
    for peer in method.peers:
      mine = [r for r in rows if r["method"] == method.name and r["library"] == peer.library]
      if not mine:
        continue
      compared = [r for r in mine if not r.get("peer_error")]
      directions = [r["rel_direction"] for r in compared]
      weights = [r["rel_weights"] for r in compared if "rel_weights" in r]
      out.append({
          "method": method.name, "library": peer.library, "peer": peer.peer, "scale": peer.scale,
          "compared_steps": len(compared), "peer_errors": len(mine) - len(compared),
          "max_rel_direction": max(directions, default=None),
          "median_rel_direction": statistics.median(directions) if directions else None,
          "max_rel_weights": max(weights, default=None),
          "above_tolerance": sum(checks.worst(r) > checks.TOLERANCE for r in mine),
          "reasons": reason_counts(mine),
          "unexplained": sum(r.get("reason") == "UNEXPLAINED" for r in mine)})
  return out


def build_payload(result: dict, meta: dict) -> dict[str, Any]:
  return {"meta": meta, "conventions": CONVENTIONS, "summary": summary(result["rows"]),
          "distributions": result["distributions"], "not_compared": table.NOT_COMPARED,
          "rows": result["rows"]}


def _e(value) -> str:
  return "-" if value is None else f"{value:.1e}"


def markdown(payload: dict) -> str:
  meta = payload["meta"]
  lines = [
      "# jmtl vs LibMTL and torchjd: the same Jacobians, the same methods",
      "",
      "Made by `.venv/bin/python -m benchmarks.references` (PyTorch half in "
      "benchmarks/peers/.venv). jmtl commit `{}`{}; peers {}.".format(
          meta["jmtl"]["commit"][:12], " (with uncommitted changes)" if meta["jmtl"]["dirty"]
          else "", ", ".join(f"{k} {v}" for k, v in meta["peers"].items())),
      "",
      f"Cases: {', '.join(meta['kinds'])} Jacobians, T in {meta['tasks']}, seeds "
      f"{meta['seeds']}, d = {meta['dimension']}, {meta['steps']} steps each (state carried). "
      "jmtl runs in float32; each peer in float32 and again in float64. Relative differences "
      "`|x_jmtl - s x_peer| / |s x_peer|` of the combined direction and of the weights, with "
      "s the convention factor below, against the peer's float32 run. Tolerance "
      f"{meta['tolerance']:g}: every step above it is listed with its reason.",
      "",
      "## Conventions normalised",
      "",
      _common.markdown_table(["scale", "meaning"], list(payload["conventions"].items())),
      "",
      "## Summary",
      "",
      _common.markdown_table(
          ["method", "peer", "scale", "steps", "max rel dir", "median rel dir", "max rel w",
           "> tol", "peer errors", "unexplained", "reasons (count)"],
          [[s["method"], f"{s['library']} {s['peer']}", s["scale"], s["compared_steps"],
            _e(s["max_rel_direction"]), _e(s["median_rel_direction"]), _e(s["max_rel_weights"]),
            s["above_tolerance"], s["peer_errors"], s["unexplained"],
            "; ".join(f"{head} ({n})" for head, n in s["reasons"].items())]
           for s in payload["summary"]]),
      "",
  ]
  if payload["distributions"]:
    lines += [
        "## Random weights: distributions",
        "",
        "jmtl's and the peer's weight vectors over many draws; two-sample Kolmogorov-Smirnov "
        "statistic (largest over the tasks) and its smallest p-value. Same distribution: p "
        "not small.",
        "",
        _common.markdown_table(
            ["method", "peer", "T", "draws", "KS statistic", "min p", "jmtl std", "peer std"],
            [[d["method"], d["library"], d["tasks"], d["draws"], f"{d['ks_statistic']:.4f}",
              f"{d['min_p_value']:.3f}", f"{d['jmtl_std'][0]:.4f}", f"{d['peer_std'][0]:.4f}"]
             for d in payload["distributions"]]),
        "",
    ]
  lines += ["## Every difference above tolerance, with its reason", ""]
  for entry in payload["summary"]:
    rows = [r for r in payload["rows"] if r["method"] == entry["method"]
            and r["library"] == entry["library"] and checks.worst(r) > checks.TOLERANCE]
    if not rows:
      continue
    lines += [f"### {entry['method']} vs {entry['library']} {entry['peer']}", "",
              _common.markdown_table(
                  ["case", "step", "rel dir", "rel dir vs f64 peer", "rel w", "reason"],
                  [[r["case"], r["step"], _e(r.get("rel_direction")),
                    _e(r.get("rel_direction_vs_float64")), _e(r.get("rel_weights")),
                    r["reason"]] for r in rows]), ""]
  lines += ["## Not compared", "",
            _common.markdown_table(["jmtl method", "why"], list(payload["not_compared"].items())),
            ""]
  return "\n".join(lines)

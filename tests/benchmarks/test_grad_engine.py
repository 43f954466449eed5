"""benchmarks/grad_engine.py --quick runs end to end and writes sane ratios."""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quick_run_writes_finite_positive_ratios(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks.grad_engine", "--quick", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  payload = json.loads((tmp_path / "grad_engine.json").read_text())
  rows = payload["results"]
  assert {(r["layout"], r["variant"]) for r in rows} == {
      ("same_input", "ew"), ("same_input", "pcgrad_exact"), ("same_input", "pcgrad_rep"),
      ("multi_input", "ew"), ("multi_input", "pcgrad_exact")}
  assert {r["family"] for r in rows} == {"loss-only", "Gram", "rep-grad"}
  assert all(r["xla_total_mb"] >= r["xla_temp_mb"] >= 0 for r in rows)
  for row in rows:
    assert row["tasks"] == 3
    for key in ("ratio_to_ew", "median_of_paired_ratios", "compile_ratio_to_ew"):
      assert math.isfinite(row[key]) and row[key] > 0, (row["variant"], key, row[key])
    assert row["step_seconds"]["n"] == 2  # 2 rounds x 1 step
    assert 0 < row["step_seconds"]["q1"] <= row["step_seconds"]["median"] <= row["step_seconds"]["q3"]
    if row["variant"] == "ew":  # each layout's baseline is itself
      assert row["ratio_to_ew"] == 1.0 and row["compile_ratio_to_ew"] == 1.0
  # T = 3 only: the T=8 and T=16 targets cannot appear; the every-T ones must.
  assert {(t["what"], t["tasks"]) for t in payload["targets"]} == {
      ("pcgrad_exact multi_input step / EW step", 3), ("pcgrad_rep same_input step / EW step", 3)}
  for target in payload["targets"]:
    assert target["met"] == (target["value"] <= target["limit"])
  assert "| T | layout" in out.stdout  # the table was printed


def test_growth_is_the_slope_and_the_log_log_exponent():
  from benchmarks.grad_engine import growth
  row = lambda t, ms, variant="ew": {"tasks": t, "layout": "same_input", "variant": variant,
                                     "family": "loss-only",
                                     "step_seconds": {"median": ms / 1e3}}
  rows = [row(8, 80.0), row(16, 160.0), row(32, 320.0),  # linear through the origin
          row(8, 64.0, "g"), row(16, 256.0, "g"), row(32, 1024.0, "g"),  # ~ T^2
          row(8, 5.0, "single")]  # one T: no growth
  by_variant = {g["variant"]: g for g in growth(rows)}
  assert set(by_variant) == {"ew", "g"}
  assert math.isclose(by_variant["ew"]["ms_per_task"], 10.0)
  assert math.isclose(by_variant["ew"]["exponent"], 1.0)
  assert math.isclose(by_variant["g"]["exponent"], 2.0)
  # least squares over (8, 64), (16, 256), (32, 1024): slope = cov / var
  t, ms = [8, 16, 32], [64, 256, 1024]
  mt, mm = sum(t) / 3, sum(ms) / 3
  slope = sum((a - mt) * (b - mm) for a, b in zip(t, ms)) / sum((a - mt) ** 2 for a in t)
  assert math.isclose(by_variant["g"]["ms_per_task"], slope)


def test_gram_compile_rows_compare_each_method_to_ew():
  from benchmarks.grad_engine import QUICK, gram_compile
  rows = gram_compile(QUICK, 2, log=lambda m: None, methods=["mgda"])  # + EW's compile
  assert [r["balancer"] for r in rows] == ["mgda"]
  for r in rows:
    assert r["compile_seconds"] > 0 and r["met"] == (r["ratio_to_ew"] <= 2.0)

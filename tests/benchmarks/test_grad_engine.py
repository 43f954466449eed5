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

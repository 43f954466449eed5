"""benchmarks/architectures.py --quick runs end to end on a tiny suite and writes its table."""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "train"))
from tiny_suite import write_tiny_suite  # noqa: E402


def test_quick_run_reports_every_architecture_against_baselines(tmp_path):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.architectures", "--quick", "--suites", suite,
       "--architectures", "hard,mmoe", "--steps", "2", "--data-dir", str(tmp_path / "data"),
       "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "results")],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  payload = json.loads((tmp_path / "results" / "architectures.json").read_text())
  rows = {r["architecture"]: r for r in payload["results"]}
  assert set(rows) == {"hard", "mmoe"} and payload["budget_steps"] == 2
  for row in rows.values():
    assert set(row["main"]) == set(row["baselines"]) == {"ner", "topic", "lm"}
    assert row["params"] > 0 and math.isfinite(row["step_time_vs_hard"])
    assert row["delta_m"] is None or math.isfinite(row["delta_m"])
  assert rows["hard"]["step_time_vs_hard"] == 1.0
  assert rows["mmoe"]["params"] != rows["hard"]["params"]
  assert "| suite" in out.stdout

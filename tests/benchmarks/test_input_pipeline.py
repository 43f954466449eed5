"""benchmarks/input_pipeline.py --config measures the loop's wait per prefetch depth on a
config's own model and batches (here a tiny generated suite)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "train"))
from test_cli import TINY_OVERRIDES  # noqa: E402
from tiny_suite import write_tiny_suite  # noqa: E402


def test_loop_wait_per_prefetch_depth(tmp_path):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  overrides = [o.removeprefix("--config.") for o in TINY_OVERRIDES]
  overrides += [f"data.suite={suite}", f"data.data_dir={tmp_path / 'data'}"]
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.input_pipeline", "--config", "configs/default.py",
       *(f"--override={o}" for o in overrides), "--steps", "3", "--rounds", "2",
       "--out", str(tmp_path / "wait.json")],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  result = json.loads((tmp_path / "wait.json").read_text())
  assert set(result["depths"]) == {"0", "2"} and result["make_batch_ms"] > 0
  for row in result["depths"].values():
    assert len(row["wait_ms_rounds"]) == 2 and 0 <= row["wait_ms_per_step"] <= row["step_ms"]
  assert "prefetch 2: the loop waits" in out.stdout

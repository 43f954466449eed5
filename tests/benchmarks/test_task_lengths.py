"""benchmarks/task_lengths.py times a multi-input config with shared and own task lengths on
its own model and batches (here a tiny generated suite whose tasks differ in length)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "train"))
from test_cli import TINY_OVERRIDES  # noqa: E402
from tiny_suite import write_tiny_suite  # noqa: E402


def test_shared_and_own_lengths_timed_on_the_configs_batches(tmp_path):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  overrides = [o.removeprefix("--config.") for o in TINY_OVERRIDES]
  overrides += [f"data.suite={suite}", f"data.data_dir={tmp_path / 'data'}",
                "data.buckets=(4,8,16)"]
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.task_lengths", "--config", "configs/default.py",
       *(f"--override={o}" for o in overrides), "--steps", "4", "--rounds", "2",
       "--out", str(tmp_path / "lengths.json")],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  result = json.loads((tmp_path / "lengths.json").read_text())
  shared, own = result["lengths"]["shared"], result["lengths"]["own"]
  assert all(len(set(step.values())) == 1 for step in shared)
  assert any(len(set(step.values())) > 1 for step in own)
  assert all(o[name] <= s[name] for o, s in zip(own, shared) for name in s)
  assert all(len(result["step_ms_rounds"][s]) == 2 for s in ("shared", "own"))
  assert result["ratio_own_over_shared"] > 0 and "own / shared:" in out.stdout

"""benchmarks/kill_resume.py with a few kills: one per phase (data preparation, an in-flight
asynchronous checkpoint, a step) in one run's life, the last rerun bit-identical to the
uninterrupted run."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_kill_9_then_rerun_reaches_the_uninterrupted_state(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks.kill_resume", "--trials", "1",
                        "--kills-per-trial", "3", "--steps", "8", "--checkpoint-every", "2",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=1500)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  payload = json.loads((tmp_path / "kill_resume.json").read_text())
  summary = payload["summary"]
  assert summary["trials"] == 1 and summary["kills"] == 3
  assert summary["kills_by_phase"] == {"data": 1, "checkpoint": 1, "step": 1}
  assert summary["identical_final_state"] == 1
  assert summary["resumed_from_newest_checkpoint"] == 1
  assert summary["half_written_datasets"] == 0
  assert (tmp_path / "kill_resume.md").read_text().count("\n| ") == 2  # header + 1 trial

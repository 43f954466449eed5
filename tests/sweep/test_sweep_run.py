"""A real sweep (two methods x two seeds on a tiny generated suite, local executor, two
workers), stopped mid-run and re-run: finished runs are skipped, interrupted ones resume
from their checkpoints, then the report and the curves are drawn from what it wrote."""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from test_cli import TINY_OVERRIDES  # noqa: E402
from tiny_suite import write_tiny_suite  # noqa: E402

from jmtl import cli  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_sweep_killed_mid_run_then_resumed(tmp_path, capsys):
  suite = write_tiny_suite(str(tmp_path / "suite"))
  sweep_dir = tmp_path / "sweep"
  command = [sys.executable, "-m", "jmtl.cli", "sweep", "--dir", str(sweep_dir),
             "--config", "configs/default.py", "--workers", "2",
             "--config.balancer.name=equal_weight,pcgrad", "--config.seed=0,1",
             f"--config.data.suite={suite}", f"--config.data.data_dir={tmp_path / 'data'}",
             *TINY_OVERRIDES, '--config.data.tasks=("ner","topic")',
             "--config.train.steps=24", "--config.train.checkpoint_every=4"]
  sweep = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  first_part = []
  for line in sweep.stdout:  # wait for the first run to finish
    first_part.append(line)
    if "] finished " in line:
      break
  runs = lambda *parts: sweep_dir.joinpath("runs", *parts)

  def unfinished_with_checkpoint():
    return [d for d in runs().glob("*/*/*") if not (d / "results.json").exists()
            and (d / "checkpoints").is_dir()
            and any(c.isdigit() for c in os.listdir(d / "checkpoints"))]

  deadline = time.time() + 300
  while not unfinished_with_checkpoint() and time.time() < deadline:
    time.sleep(0.2)  # then stop the sweep while another run is part-way
  sweep.send_signal(signal.SIGTERM)
  first_part.append(sweep.communicate(timeout=600)[0])
  assert sweep.returncode == cli.EXIT_INTERRUPTED, "".join(first_part)[-3000:]
  manifest = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
  done = {k for k, r in manifest.items() if r["status"] == "done"}
  assert done and len(done) < 4 and all(r["status"] in ("done", "pending")
                                        for r in manifest.values()), manifest
  finished_at = {k: os.path.getmtime(runs(k, "results.json")) for k in done}
  checkpointed = [k for k in manifest if k not in done and runs(k, "checkpoints").is_dir()
                  and any(d.isdigit() for d in os.listdir(runs(k, "checkpoints")))]
  assert checkpointed, manifest  # stopped part-way: resumes from its checkpoint

  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert f"{len(done)} run(s) already done, {4 - len(done)} to run" in again.stdout
  assert "[sweep 4/4 done, 0 running, 0 failed]" in again.stdout
  for run_id in done:
    assert f"started {run_id}" not in again.stdout
    assert os.path.getmtime(runs(run_id, "results.json")) == finished_at[run_id]
  for run_id in checkpointed:
    assert "resumed from step" in runs(run_id, "log.txt").read_text(), run_id
  manifest = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
  assert all(r["status"] == "done" and r["peak_rss_mb"] > 50 for r in manifest.values())
  for run_id in manifest:
    result = json.loads(runs(run_id, "results.json").read_text())
    assert result["step"] == 24
    assert result["main_metrics"] == {"ner": "span_f1", "topic": "accuracy"}
  # The report the sweep wrote at its end: both methods, two seeds each, step times.
  report = json.loads((sweep_dir / "report.json").read_text())
  groups = report["suites"]["tiny_suite"]["groups"]
  assert sorted(groups) == ["equal_weight", "pcgrad"]
  for entry in groups.values():
    assert entry["seeds"] == [0, 1] and entry["step_ms"]["mean"] > 0
    assert entry["metrics"]["topic"]["se"] is not None
  assert (sweep_dir / "pareto_tiny_suite.png").is_file()
  assert cli.main(["plot", str(runs("tiny_suite", "pcgrad", "seed1"))]) == 0
  with open(runs("tiny_suite", "pcgrad", "seed1", "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

"""The sweep scheduler with real subprocesses standing in for training runs (scripted to
succeed or fail in a moment): failures are recorded with their error and do not stop the
others, multi-task runs wait for their baselines, and a re-run retries only what is not
done."""

import json
import os
import sys

from jmtl.sweep.executors import LocalExecutor
from jmtl.sweep.grid import build_grid
from jmtl.sweep.runner import run_sweep

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "default.py")

SUCCEED = """
import json, os, sys
workdir = sys.argv[1]
name = "baselines.json" if "/baselines/" in workdir else "results.json"
os.makedirs(workdir, exist_ok=True)
json.dump({}, open(os.path.join(workdir, name), "w"))
print("trained", workdir)
"""
FAIL = ("import sys; print('step 3', flush=True); "
        "print('RuntimeError: boom', file=sys.stderr); sys.exit(3)")


class ScriptedExecutor(LocalExecutor):
  """Runs a tiny script per run instead of ``jmtl train``; records every command it got."""

  def __init__(self, failing=(), workers=2):
    super().__init__(workers)
    self.failing, self.commands = set(failing), {}

  def submit(self, key, command, log_path):
    self.commands[key] = command
    workdir = command[command.index("--workdir") + 1]
    script = FAIL if key in self.failing else SUCCEED
    super().submit(key, [sys.executable, "-c", script, workdir], log_path)


def grid(tmp_path):
  path = tmp_path / "sweep_config.py"
  path.write_text("import ml_collections\n\ndef get_config():\n"
                  "  c = ml_collections.ConfigDict()\n"
                  f"  c.config = {os.path.abspath(CONFIG)!r}\n"
                  "  c.balancers = [('equal_weight', {}), ('pcgrad', {})]\n"
                  "  c.seeds = (0, 1)\n  c.baselines = True\n  return c\n")
  return build_grid(str(path), None, [])


def test_failures_are_recorded_and_the_rest_go_on_then_a_rerun_retries_them(tmp_path, capsys):
  sweep_dir = str(tmp_path / "sweep")
  executor = ScriptedExecutor(failing={"en_mix/baselines/seed1", "en_mix/pcgrad/seed0"})
  counts = run_sweep(grid(tmp_path), sweep_dir, executor)
  out = capsys.readouterr().out
  assert counts == {"done": 2, "running": 0, "failed": 4, "pending": 0}, out
  runs = json.loads(open(os.path.join(sweep_dir, "sweep.json")).read())["runs"]
  assert runs["en_mix/pcgrad/seed0"]["returncode"] == 3
  assert runs["en_mix/pcgrad/seed0"]["error"].splitlines()[-2:] == ["step 3", "RuntimeError: boom"]
  for method in ("equal_weight", "pcgrad"):  # their baselines failed: never started
    assert runs[f"en_mix/{method}/seed1"]["error"] == (
        "not started: its baselines run en_mix/baselines/seed1 failed")
    assert f"en_mix/{method}/seed1" not in executor.commands
  assert "FAILED en_mix/pcgrad/seed0 (exit 3): RuntimeError: boom" in out
  assert "[sweep 2/6 done, 0 running, 4 failed]" in out
  # A multi-task run reads the baselines of its own seed.
  command = executor.commands["en_mix/equal_weight/seed0"]
  assert any(c.endswith("runs/en_mix/baselines/seed0/baselines.json") for c in command)

  executor = ScriptedExecutor()
  counts = run_sweep(grid(tmp_path), sweep_dir, executor)
  out = capsys.readouterr().out
  assert counts == {"done": 6, "running": 0, "failed": 0, "pending": 0}, out
  assert "2 run(s) already done, 4 to run" in out
  assert sorted(executor.commands) == ["en_mix/baselines/seed1", "en_mix/equal_weight/seed1",
                                       "en_mix/pcgrad/seed0", "en_mix/pcgrad/seed1"]


def test_a_run_left_running_by_a_killed_sweep_is_not_started_twice(tmp_path):
  import subprocess

  import pytest

  from jmtl.config import ConfigError
  sweep_dir = tmp_path / "sweep"
  workdir = sweep_dir / "runs" / "en_mix" / "baselines" / "seed0"
  workdir.mkdir(parents=True)
  # Stands in for a `jmtl train` whose sweep was SIGKILLed: alive, its workdir on its cmdline.
  orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(workdir)])
  try:
    (workdir / "sweep_run.pid").write_text(str(orphan.pid))
    executor = ScriptedExecutor()
    with pytest.raises(ConfigError, match=f"run en_mix/baselines/seed0 is still running as pid "
                                          f"{orphan.pid}"):
      run_sweep(grid(tmp_path), str(sweep_dir), executor)
    assert not executor.commands
  finally:
    orphan.kill()
    orphan.wait()
  counts = run_sweep(grid(tmp_path), str(sweep_dir), ScriptedExecutor())  # gone: runs now
  assert counts["done"] == 6

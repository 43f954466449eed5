"""Runs a benchmark that takes ``--config FILE --override KEY=VALUE ...`` on
configs/default.py shrunk to the test size (test_cli's TINY_OVERRIDES) and a tiny generated
suite, in a subprocess from the repository root, as a user would."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "train"))
from test_cli import TINY_OVERRIDES  # noqa: E402
from tiny_suite import write_tiny_suite  # noqa: E402


def run_config_benchmark(module: str, tmp_path, *args: str, overrides=()) -> str:
  """``python -m benchmarks.<module>`` on the tiny config (``overrides`` after the tiny ones,
  so they win); asserts it exits 0 and returns its stdout."""
  suite = write_tiny_suite(str(tmp_path / "suite"))
  tiny = [o.removeprefix("--config.") for o in TINY_OVERRIDES]
  tiny += [f"data.suite={suite}", f"data.data_dir={tmp_path / 'data'}", *overrides]
  out = subprocess.run(
      [sys.executable, "-m", f"benchmarks.{module}", "--config", "configs/default.py",
       *(f"--override={o}" for o in tiny), *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return out.stdout

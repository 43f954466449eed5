"""benchmarks/task_lengths.py times a multi-input config with shared and own task lengths on
its own model and batches (here a tiny generated suite whose tasks differ in length)."""

import json

from tiny_benchmark import run_config_benchmark


def test_shared_and_own_lengths_timed_on_the_configs_batches(tmp_path):
  stdout = run_config_benchmark("task_lengths", tmp_path, "--steps", "4", "--rounds", "2",
                                "--out", str(tmp_path / "lengths.json"),
                                overrides=["data.buckets=(4,8,16)"])
  result = json.loads((tmp_path / "lengths.json").read_text())
  shared, own = result["lengths"]["shared"], result["lengths"]["own"]
  assert all(len(set(step.values())) == 1 for step in shared)
  assert any(len(set(step.values())) > 1 for step in own)
  assert all(o[name] <= s[name] for o, s in zip(own, shared) for name in s)
  assert all(len(result["step_ms_rounds"][s]) == 2 for s in ("shared", "own"))
  assert result["ratio_own_over_shared"] > 0 and "own / shared:" in stdout

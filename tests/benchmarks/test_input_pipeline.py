"""benchmarks/input_pipeline.py --config measures the loop's wait per prefetch depth on a
config's own model and batches (here a tiny generated suite)."""

import json

from tiny_benchmark import run_config_benchmark


def test_loop_wait_per_prefetch_depth(tmp_path):
  stdout = run_config_benchmark("input_pipeline", tmp_path, "--steps", "3", "--rounds", "2",
                                "--out", str(tmp_path / "wait.json"))
  result = json.loads((tmp_path / "wait.json").read_text())
  assert set(result["depths"]) == {"0", "2"} and result["make_batch_ms"] > 0
  for row in result["depths"].values():
    assert len(row["wait_ms_rounds"]) == 2 and 0 <= row["wait_ms_per_step"] <= row["step_ms"]
  assert "prefetch 2: the loop waits" in stdout

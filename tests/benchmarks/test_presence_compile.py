"""benchmarks/presence_compile.py times a balancer's weighting compiled with and without the
absent-task mask."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import presence_compile  # noqa: E402


def test_masked_and_unmasked_compiles_per_method_and_task_count(tmp_path, capsys):
  out = tmp_path / "presence.json"
  presence_compile.main(["--tasks", "2,3", "--methods", "equal_weight,pcgrad", "--repeats", "1",
                         "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [(r["tasks"], r["method"]) for r in rows] == [
      (2, "equal_weight"), (2, "pcgrad"), (3, "equal_weight"), (3, "pcgrad")]
  for row in rows:
    assert row["no_mask_s"] > 0 and row["mask_s"] > 0
    assert abs(row["ratio"] - row["mask_s"] / row["no_mask_s"]) < 1e-9
  assert "| 3 | pcgrad |" in capsys.readouterr().out

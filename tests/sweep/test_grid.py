"""Sweep grids from flags and files, and every bad sweep input as one clear error (exit 2)
before any run starts. In-process through ``jmtl.cli.main``: nothing here trains."""

import json
import os
import sys

import pytest

from jmtl import cli
from jmtl.config import ConfigError
from jmtl.sweep.grid import build_grid, split_values
from jmtl.sweep.manifest import Manifest

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "default.py")


def write_sweep_file(tmp_path, body: str) -> str:
  path = tmp_path / "sweep.py"
  path.write_text("import ml_collections\n\ndef get_config():\n"
                  "  c = ml_collections.ConfigDict()\n"
                  + "".join(f"  {line}\n" for line in body.strip().splitlines())
                  + "  return c\n")
  return str(path)


def test_split_values_keeps_brackets_and_quotes_together():
  assert split_values("a,(1,2),'x,y', [3, 4]") == ["a", "(1,2)", "'x,y'", "[3, 4]"]
  assert split_values("(16,)") == ["(16,)"]


def test_grid_runs_named_from_their_point(tmp_path):
  grid = build_grid(None, CONFIG, ["balancer.name=cagrad", "balancer.c=0.2,0.4", "seed=0,1",
                                   "train.steps=5", "optimizer.learning_rate=1e-3,3e-3",
                                   "data.buckets=(16,)"])
  runs = grid.runs()
  assert len(runs) == 2 * 2 * 2
  ids = {r.run_id for r in runs}
  assert "en_mix/cagrad_c=0.4_optimizer.learning_rate=3e-3/seed1" in ids
  assert grid.fixed == ("train.steps=5", "data.buckets=(16,)")
  wanted = "en_mix/cagrad_c=0.2_optimizer.learning_rate=1e-3/seed0"
  run = next(r for r in runs if r.run_id == wanted)
  command = run.command(str(tmp_path), grid.config)
  assert "--config.balancer.c=0.2" in command and "--config.seed=0" in command
  assert "--config.optimizer.learning_rate=1e-3" in command
  assert command[command.index("--workdir") + 1] == os.path.join(
      str(tmp_path), "runs", "en_mix", "cagrad_c=0.2_optimizer.learning_rate=1e-3", "seed0")


def test_sweep_file_with_baselines(tmp_path):
  path = write_sweep_file(tmp_path, f"""
c.config = {os.path.abspath(CONFIG)!r}
c.balancers = [("equal_weight", {{}}), ("cagrad", {{"c": 0.4}}),
               ("constant", {{"weights": [0.3, 0.7]}})]
c.seeds = (0, 1)
c.suites = ("en_mix", "ud_tr")
c.baselines = True
c.overrides = ("train.steps=7",)
""")
  grid = build_grid(path, None, ["seed=3"])  # a flag replaces the file's seeds
  runs = grid.runs()
  assert [r.run_id for r in runs if r.single_task] == ["en_mix/baselines/seed3",
                                                       "ud_tr/baselines/seed3"]
  assert runs[:2] == [r for r in runs if r.single_task]  # baselines first
  cagrad = next(r for r in runs if r.run_id == "ud_tr/cagrad_c=0.4/seed3")
  assert cagrad.baselines_run == "ud_tr/baselines/seed3"
  command = cagrad.command(str(tmp_path), grid.config)
  assert f"--config.baselines={tmp_path}/runs/ud_tr/baselines/seed3/baselines.json" in command
  assert "--config.train.steps=7" in command
  constant = next(r for r in runs if r.run_id == "en_mix/constant_weights=_0.3_0.7/seed3")
  assert "--config.balancer.weights=(0.3, 0.7)" in constant.command(str(tmp_path), grid.config)
  baseline = runs[0].command(str(tmp_path), grid.config)
  assert "--config.single_task=True" in baseline
  assert "--config.balancer.name=equal_weight" in baseline


def sweep(tmp_path, *args):
  return cli.main(["sweep", "--dir", str(tmp_path / "sweep"), *args])


@pytest.mark.parametrize("args,message", [
    (["--config.balancer.name=equal_weight,pcgrads"],
     r"balancer pcgrads: unknown balancer 'pcgrads'.*Valid names:.*mgda"),
    (["--config.balancer.name=cagrad", "--config.balancer.cc=0.4"],
     r"balancer cagrad\(cc=0.4\): balancer 'cagrad' does not take \['cc'\]; its "
     r"hyperparameters: \['c', 'rescale'\]"),
    (["--config.balancer.name=equal_weight,cagrad", "--config.balancer.c=0.4"],
     r"balancer equal_weight\(c=0.4\):.*does not take"),
    (["--config.train.stepz=3,4"], r"unknown config key 'train.stepz'"),
    (["--config.seed=0,x"], r"seed 'x' is not an integer"),
    (["--config.data.suite=/nonexistent/s.json"], r"suite file '/nonexistent/s.json' does not"),
    (["--config.train.steps"], r"'train.steps' is not KEY=VALUE"),
])
def test_bad_grid_refused_before_any_run(tmp_path, capsys, args, message):
  import re
  assert sweep(tmp_path, "--config", CONFIG, *args) == cli.EXIT_ERROR
  err = capsys.readouterr().err
  assert re.search(message, err), err
  assert err.count("jmtl: error:") == 1
  assert not (tmp_path / "sweep").exists()  # nothing started, nothing written


def test_bad_sweep_file_entries(tmp_path, capsys):
  path = write_sweep_file(tmp_path, 'c.balancers = [("pcgrad", "c=1")]\nc.seedz = (0,)')
  assert sweep(tmp_path, "--sweep", path, "--config", CONFIG) == cli.EXIT_ERROR
  assert "unknown keys ['seedz']; valid keys: config, balancers" in capsys.readouterr().err
  path = write_sweep_file(tmp_path, 'c.balancers = [("pcgrad", "c=1")]')
  assert sweep(tmp_path, "--sweep", path, "--config", CONFIG) == cli.EXIT_ERROR
  assert "balancers[0] is ('pcgrad', 'c=1'); write a name or (name" in capsys.readouterr().err
  path = write_sweep_file(tmp_path, 'c.seeds = (0,)')
  assert sweep(tmp_path, "--sweep", path) == cli.EXIT_ERROR
  assert "no training config: pass --config FILE" in capsys.readouterr().err


def test_sweep_dir_of_another_grid_refused_unless_extend(tmp_path, capsys):
  old = build_grid(None, CONFIG, ["balancer.name=equal_weight", "seed=0,1"])
  Manifest.open(str(tmp_path / "sweep"), old, old.runs(), extend=False)
  before = (tmp_path / "sweep" / "sweep.json").read_text()
  assert sweep(tmp_path, "--config", CONFIG, "--config.balancer.name=pcgrad",
               "--config.seed=0,1") == cli.EXIT_ERROR
  err = capsys.readouterr().err
  assert "was made by a different grid" in err and "--extend" in err
  assert "'equal_weight'" in err and "'pcgrad'" in err  # says what differs
  assert (tmp_path / "sweep" / "sweep.json").read_text() == before  # nothing lost
  new = build_grid(None, CONFIG, ["balancer.name=pcgrad", "seed=0,1"])
  manifest = Manifest.open(str(tmp_path / "sweep"), new, new.runs(), extend=True)
  assert len(manifest.runs) == 4 and len(manifest.data["grids"]) == 2
  # The same run name with other settings is refused even with --extend.
  changed = build_grid(None, CONFIG, ["balancer.name=pcgrad", "seed=0", "train.steps=3"])
  with pytest.raises(ConfigError, match="run en_mix/pcgrad/seed0 exists with other settings"):
    Manifest.open(str(tmp_path / "sweep"), changed, changed.runs(), extend=True)


def test_ray_missing_is_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
  assert sweep(tmp_path, "--config", CONFIG, "--executor", "ray") == cli.EXIT_ERROR
  err = capsys.readouterr().err.strip()
  assert err == "jmtl: error: the ray executor needs Ray: pip install 'jmtl[ray]'"


def test_report_and_plot_of_wrong_directories(tmp_path, capsys):
  assert cli.main(["sweep", "report", str(tmp_path)]) == cli.EXIT_ERROR
  assert "is not a sweep directory (no sweep.json)" in capsys.readouterr().err
  (tmp_path / "sweep.json").write_text("{not json")
  assert cli.main(["sweep", "report", str(tmp_path)]) == cli.EXIT_ERROR
  assert "sweep.json: invalid JSON at line 1" in capsys.readouterr().err
  (tmp_path / "sweep.json").write_text(json.dumps({"runs": {}}))
  assert cli.main(["sweep", "report", str(tmp_path)]) == cli.EXIT_ERROR
  assert "has no finished multi-task run" in capsys.readouterr().err
  assert cli.main(["plot", str(tmp_path / "nothing")]) == cli.EXIT_ERROR
  assert "has no metrics.jsonl" in capsys.readouterr().err
  assert cli.main(["sweep", "--config", CONFIG]) == cli.EXIT_ERROR
  assert "needs --dir DIR" in capsys.readouterr().err

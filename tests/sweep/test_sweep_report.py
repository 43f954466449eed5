"""The sweep report on synthetic run files, against values computed by hand (stdlib
``statistics``, not the report's NumPy), and its plots as valid PNG files."""

import csv
import json
import math
import os
import statistics

import pytest

from jmtl import cli
from jmtl.sweep import plots, report

BASELINES = {0: {"a": 0.5, "b": 2.0}, 1: {"a": 0.5, "b": 2.0}, 2: {"a": 0.4, "b": 2.0}}
# method -> per seed (a: accuracy, higher is better; b: error, lower is better), test split
TEST = {
    "equal_weight": [(0.6, 2.0), (0.7, 1.0), (0.8, 1.5)],
    "pcgrad": [(0.9, 1.0), (0.9, 1.0), (0.9, 1.0)],
    "mgda": [(0.5, 2.0), (0.5, 2.0), (0.4, 2.0)],  # equal to the baselines: Δm = 0
    "rlw": [(0.6, 2.5), (0.7, 2.5), (0.8, 2.5)],  # ties equal_weight on task a
}
STEPS_PER_SECOND = [0.1, 10.0, 20.0, 40.0]  # the first record includes compilation


def hand_delta(seed, a, b):
  base = BASELINES[seed]
  return 100 / 2 * ((a - base["a"]) / base["a"] - (b - base["b"]) / base["b"])


def hand_se(values):
  return statistics.stdev(values) / math.sqrt(len(values))


def write_json(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(data, f)


def result(a, b, validation_shift=0.0, conflict_fraction=None):
  table = lambda shift: {"a": {"accuracy": a + shift, "loss": 1.0},
                         "b": {"error": b + shift, "loss": 2.0}}
  return {"step": 10, "validation": table(validation_shift), "test": table(0.0),
          "delta_m": None, "main_metrics": {"a": "accuracy", "b": "error"},
          "higher_is_better": {"a": True, "b": False},
          "diagnostics": {"conflict_fraction": conflict_fraction}}


@pytest.fixture
def sweep_dir(tmp_path):
  runs = {}
  for seed, values in BASELINES.items():
    run_id = f"toy/baselines/seed{seed}"
    write_json(str(tmp_path / "runs" / run_id / "baselines.json"),
               {"validation": values, "test": values})
    runs[run_id] = {"run_id": run_id, "suite": "toy", "method": "baselines", "seed": seed,
                    "point": "", "overrides": [], "baselines_run": None, "status": "done"}
  for method, per_seed in TEST.items():
    for seed, (a, b) in enumerate(per_seed):
      run_id = f"toy/{method}/seed{seed}"
      workdir = tmp_path / "runs" / run_id
      write_json(str(workdir / "results.json"), result(a, b, validation_shift=0.05,
                                                            conflict_fraction=0.25 * seed))
      with open(workdir / "metrics.jsonl", "w") as f:
        for step, rate in enumerate(STEPS_PER_SECOND):
          f.write(json.dumps({"step": step + 1, "split": "train", "steps_per_second": rate,
                              "losses": {"a": 1.0 / (step + 1), "b": 2.0},
                              "weights": {"a": 0.5, "b": 0.5}, "grad_norm": 1.0 + step,
                              "cosines": {"a|b": 0.1 * step - 0.1}}) + "\n")
      runs[run_id] = {"run_id": run_id, "suite": "toy", "method": method, "seed": seed,
                      "point": "", "overrides": [], "baselines_run": f"toy/baselines/seed{seed}",
                      "status": "done", "peak_rss_mb": 100.0 + 10 * seed}
  # A failed run (no results.json) is left out of the table, not an error.
  runs["toy/famo/seed0"] = {"run_id": "toy/famo/seed0", "suite": "toy", "method": "famo",
                            "seed": 0, "point": "", "overrides": [], "baselines_run": None,
                            "status": "failed", "error": "boom"}
  write_json(str(tmp_path / "sweep.json"), {"version": 1, "grids": [], "runs": runs})
  return str(tmp_path)


def test_means_standard_errors_delta_m_and_ranks_match_hand_computation(sweep_dir):
  summary = report.build_report(sweep_dir)
  assert summary["split"] == "test"
  groups = summary["suites"]["toy"]["groups"]
  assert sorted(groups) == ["equal_weight", "mgda", "pcgrad", "rlw"]
  for method, per_seed in TEST.items():
    entry = groups[method]
    a_values, b_values = [v[0] for v in per_seed], [v[1] for v in per_seed]
    assert entry["metrics"]["a"]["mean"] == pytest.approx(statistics.fmean(a_values))
    assert entry["metrics"]["a"]["se"] == pytest.approx(hand_se(a_values), abs=1e-12)
    assert entry["metrics"]["b"]["se"] == pytest.approx(hand_se(b_values), abs=1e-12)
    deltas = [hand_delta(seed, a, b) for seed, (a, b) in enumerate(per_seed)]
    assert entry["delta_m"]["mean"] == pytest.approx(statistics.fmean(deltas))
    assert entry["delta_m"]["se"] == pytest.approx(hand_se(deltas), abs=1e-9)
    assert entry["step_ms"]["mean"] == pytest.approx(1000 / 20.0)  # median of 10, 20, 40
    assert entry["peak_rss_mb"]["mean"] == pytest.approx(110.0)
    # conflict %: 0, 25, 50 over the seeds -> 25 ± 25 / sqrt(3)
    assert entry["conflict_pct"]["mean"] == pytest.approx(25.0)
    assert entry["conflict_pct"]["se"] == pytest.approx(25.0 / 3 ** 0.5)
  # By hand: equal_weight Δm = 10, 45, 62.5 -> 39.17 ± 15.43 (sqrt(1429.17 / 2) / sqrt(3)).
  assert groups["equal_weight"]["delta_m"]["mean"] == pytest.approx(117.5 / 3)
  assert groups["equal_weight"]["delta_m"]["se"] == pytest.approx(15.4335, abs=1e-4)
  # Task a (higher is better): pcgrad 0.9 > equal_weight = rlw 0.7 (tie: 2.5 each) > mgda.
  # Task b (lower is better): pcgrad 1.0 < equal_weight 1.5 < mgda 2.0 < rlw 2.5.
  ranks = {m: groups[m]["mean_rank"] for m in groups}
  assert ranks == pytest.approx({"pcgrad": 1.0, "equal_weight": 2.25, "rlw": 3.25,
                                 "mgda": 3.5})
  # pcgrad: 72.5 ± 7.5 vs 39.17 ± 15.43: difference 33.3 < 2 * 17.16 -> within noise.
  # mgda: 0 ± 0: difference 39.2 > 2 * 15.43 -> worse.
  assert groups["equal_weight"]["vs_reference"] == "reference"
  assert groups["pcgrad"]["vs_reference"] == "within noise"
  assert groups["mgda"]["vs_reference"] == "worse"


def test_validation_split_on_request(sweep_dir):
  summary = report.build_report(sweep_dir, split="validation")
  entry = summary["suites"]["toy"]["groups"]["pcgrad"]
  assert entry["metrics"]["a"]["mean"] == pytest.approx(0.95)
  assert entry["delta_m"]["mean"] == pytest.approx(statistics.fmean(
      [hand_delta(s, 0.95, 1.05) for s in range(3)]))


def test_report_files_and_pareto_plot(sweep_dir, capsys):
  assert cli.main(["sweep", "report", sweep_dir, "--tasks", "a,b"]) == 0
  printed = capsys.readouterr().out
  assert "| pcgrad | 3 | 0.9000 ± 0.0000 |" in printed and "within noise" in printed
  with open(os.path.join(sweep_dir, "report.csv")) as f:
    rows = {row["method"]: row for row in csv.DictReader(f)}
  assert float(rows["mgda"]["delta_m_mean"]) == pytest.approx(0.0)
  assert rows["mgda"]["vs_equal_weight"] == "worse"
  with open(os.path.join(sweep_dir, "report.json")) as f:
    assert json.load(f)["suites"]["toy"]["groups"]["rlw"]["mean_rank"] == pytest.approx(3.25)
  assert_png(os.path.join(sweep_dir, "pareto_toy.png"))


def test_non_dominated_front_respects_directions():
  points = {"p": (0.9, 1.0), "q": (0.7, 0.5), "r": (0.6, 1.2), "s": (0.9, 1.0)}
  assert sorted(plots.non_dominated(points, (True, False))) == ["p", "q", "s"]
  assert sorted(plots.non_dominated(points, (True, True))) == ["p", "r", "s"]  # r: best y


def test_every_method_of_a_large_sweep_has_its_own_style():
  groups = [f"method{i}" for i in range(23)]
  styles = plots.method_styles(groups)
  assert list(styles) == groups and len(set(styles.values())) == len(groups)


def test_plot_curves_of_a_run_and_of_every_sweep_run(sweep_dir, capsys):
  workdir = os.path.join(sweep_dir, "runs", "toy", "pcgrad", "seed1")
  out = os.path.join(sweep_dir, "one.png")
  assert cli.main(["plot", workdir, "--out", out]) == 0
  assert_png(out)
  for method in ("equal_weight", "mgda", "rlw"):  # runs without logs are passed over
    for seed in range(3):
      os.remove(os.path.join(sweep_dir, "runs", "toy", method, f"seed{seed}", "metrics.jsonl"))
  capsys.readouterr()
  assert cli.main(["plot", sweep_dir]) == 0
  written = capsys.readouterr().out.splitlines()
  assert written == [f"wrote {sweep_dir}/runs/toy/pcgrad/seed{seed}/curves.png"
                     for seed in range(3)]
  for line in written:
    assert_png(line[len("wrote "):])


def assert_png(path):
  import matplotlib.image
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert image.std() > 0  # something was drawn


def test_pareto_with_three_tasks_draws_pairwise_panels(tmp_path, sweep_dir, capsys):
  summary = report.build_report(sweep_dir)
  suite = summary["suites"]["toy"]
  suite["tasks"]["c"] = {"metric": "f1", "higher_is_better": True}
  for entry in suite["groups"].values():
    entry["metrics"]["c"] = {"mean": 0.5, "se": 0.1, "n": 3}
    for run in entry["runs"]:
      run["main"]["c"] = 0.5
  two = plots.plot_pareto(summary, str(tmp_path), ("a", "b"))[0]
  import matplotlib.image
  width_two = matplotlib.image.imread(two).shape[1]
  three = plots.plot_pareto(summary, str(tmp_path))[0]
  assert_png(three)
  assert matplotlib.image.imread(three).shape[1] > 2.5 * width_two  # a, b | a, c | b, c
  assert cli.main(["sweep", "report", sweep_dir, "--tasks", "a,zzz"]) == cli.EXIT_ERROR
  assert "--tasks a,zzz: suite 'toy' has tasks a, b; name two or more" in capsys.readouterr().err

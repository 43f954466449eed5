"""Smoke test of benchmarks/toy.py plus its loss and stationarity helpers."""

import importlib.util
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np

_PATH = pathlib.Path(__file__).parents[2] / "benchmarks" / "toy.py"
_spec = importlib.util.spec_from_file_location("toy_benchmark", _PATH)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


def reference_losses(x1, x2):
  """Float64 transcription of the CAGrad paper's toy."""
  c1, c2 = max(math.tanh(x2 / 2), 0.0), max(math.tanh(-x2 / 2), 0.0)
  f1 = ((math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), 5e-6)) + 6) * c1
        + (((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20) * c2)
  f2 = ((math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), 5e-6)) + 6) * c1
        + (((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20) * c2)
  return np.array([f1, f2])


def test_toy_losses_match_reference():
  for x in [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0), (0.0, 0.0), (3.0, -8.3552), (-7.0, 0.9)]:
    actual = np.asarray(toy.toy_losses(jnp.asarray(x, jnp.float32)), np.float64)
    np.testing.assert_allclose(actual, reference_losses(*x), rtol=1e-5, atol=1e-5)
    scaled = np.asarray(toy.toy_losses(jnp.asarray(x, jnp.float32), 0.1), np.float64)
    np.testing.assert_allclose(scaled, reference_losses(*x) * [0.1, 1.0], rtol=1e-5, atol=1e-5)


def test_min_norm_of_hull_matches_brute_force():
  rng = np.random.default_rng(0)
  alphas = np.linspace(0, 1, 100001)[:, None]
  for _ in range(5):
    g1, g2 = rng.normal(size=(2, 2))
    brute = np.linalg.norm(alphas * g1 + (1 - alphas) * g2, axis=1).min()
    np.testing.assert_allclose(toy.min_norm_of_hull(np.stack([g1, g2])), brute, atol=1e-6)
  assert toy.min_norm_of_hull(np.array([[1.0, 0.0], [-2.0, 0.0]])) < 1e-12
  assert toy.min_norm_of_hull(np.array([[1.0, 2.0], [1.0, 2.0]])) == np.sqrt(5.0)


def test_benchmark_writes_json_and_png(tmp_path):
  results = toy.main(["--steps", "300", "--methods", "pcgrad,equal_weight", "--out", str(tmp_path)])
  assert (tmp_path / "toy.png").stat().st_size > 1000
  written = json.loads((tmp_path / "toy.json").read_text())
  assert set(written["setups"]) == {"cagrad", "nash_mtl"}
  for setup, section in written["setups"].items():
    assert section["steps"] == 300
    assert set(section["methods"]) == {"pcgrad", "equal_weight"}
    for summary in section["methods"].values():
      assert summary["finite"] and summary["runs"] == len(toy.SETUPS[setup].starts)
      values = np.array([summary["final_points"], summary["final_losses"]], dtype=np.float64)
      assert np.all(np.isfinite(values)) and np.all(np.isfinite(summary["min_norms"]))
      assert 0 <= summary["on_front"] <= summary["pareto_stationary"] <= summary["runs"]
  # 300 Adam steps of size ~1e-3 move a start by at most ~0.3.
  trajectories = results["setups"]["cagrad"]["methods"]["pcgrad"]["trajectories"]
  np.testing.assert_array_equal(trajectories[:, 0], toy.SETUPS["cagrad"].starts)
  assert np.all(np.abs(trajectories[:, -1] - trajectories[:, 0]) < 0.35)

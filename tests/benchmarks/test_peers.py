"""The torch-free half of benchmarks/peers: weight export, the PCGrad reference, the jmtl side.

The PyTorch half runs in its own venv (benchmarks/peers/setup.sh) and checks itself inside
compare.py: first-step losses and the PCGrad agreement are part of its report.
"""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.peers import reference, report, weights
from jmtl import balancers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_weight_export_round_trip(tmp_path, model):
  from tiny_model import make_batch
  params = model.init(jax.random.PRNGKey(0), make_batch())
  path = weights.export_params(params, tmp_path / "w.npz")
  loaded = weights.load_params(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(jax.tree.map(np.asarray, params))
  for original, restored in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    assert restored.dtype == np.float32
    np.testing.assert_array_equal(restored, np.asarray(original))
  assert "encoder/block_0/attention/query/kernel" in np.load(path).files


def test_flatten_rejects_names_with_the_separator():
  with pytest.raises(ValueError, match="contains"):
    weights.flatten({"a/b": np.zeros(2)})


def test_pcgrad_reference_matches_two_task_closed_form():
  g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])  # g1 . g2 = -1: they conflict
  # Both projected onto the other's normal plane: g1 - (-1/2) g2 and g2 - (-1/1) g1.
  expected = (g1 + 0.5 * g2) + (g2 + g1)
  np.testing.assert_allclose(reference.pcgrad_fixed_order(np.stack([g1, g2]), False), expected)
  # Visiting j = i too changes nothing for two tasks (g_i' . g_i = |g_i|^2 - c^2 |g_j|^2 >= 0).
  np.testing.assert_allclose(reference.pcgrad_fixed_order(np.stack([g1, g2]), True), expected)


def test_jmtl_pcgrad_fixed_order_agrees_with_reference():
  jacobian = reference.conflicting_jacobian(num_tasks=5, dimension=300, seed=1)
  gram = jacobian.astype(np.float64) @ jacobian.T.astype(np.float64)
  assert (gram < 0).sum() >= 8  # several conflicting pairs, or the check proves nothing
  # The reference sums, as the paper, LibMTL and torchjd: jmtl's reduction="sum" is that
  # scale, its default the mean (T times shorter).
  balancer = balancers.get("pcgrad", 5, random_order=False, reduction="sum")
  combined, _ = balancer.update(jnp.asarray(jacobian), balancer.init(None))
  expected = reference.pcgrad_fixed_order(jacobian, visit_self=False)
  assert reference.relative_error(np.asarray(combined), expected) < reference.TOLERANCE
  mean = balancers.get("pcgrad", 5, random_order=False)
  averaged, _ = mean.update(jnp.asarray(jacobian), mean.init(None))
  assert reference.relative_error(5 * np.asarray(averaged), expected) < reference.TOLERANCE
  assert reference.relative_error(jacobian.sum(0), expected) > 0.1  # projections happened


def _run(tasks, layout, medians):
  return {"tasks": tasks, "layout": layout, "steps": {k: {"median": v} for k, v in medians.items()}}


def test_report_targets():
  runs = [_run(8, "same_input", {"jmtl/ew": 0.1, "jmtl/pcgrad": 0.4, "torch/ew": 0.2,
                                 "torch/libmtl_pcgrad": 1.0, "torch/torchjd_pcgrad": 0.9})]
  rows = report.step_rows(runs[0])
  ratios = {(r["library"], r["method"]): r["ratio_to_own_ew"] for r in rows}
  assert ratios == {("jmtl", "ew"): 1.0, ("pytorch", "ew"): 1.0, ("jmtl", "pcgrad"): 4.0,
                    ("libmtl", "pcgrad"): 5.0, ("torchjd", "pcgrad"): 4.5}
  targets = {t["what"]: t for t in report.targets(runs, rows)}
  assert targets["jmtl exact PCGrad step / LibMTL PCGrad step"]["value"] == pytest.approx(0.4)
  assert targets["jmtl exact PCGrad step / LibMTL PCGrad step"]["met"]
  assert targets["jmtl EW step / PyTorch EW step"]["value"] == pytest.approx(0.5)
  below = targets["jmtl pcgrad/EW ratio below every peer's (libmtl, torchjd)"]
  assert below["met"] and below["limit"] == "< 4.50"


def _loaded_libc() -> str:
  """The path of the C library this process runs on: harmless to preload into another."""
  for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
    path = line.split()[-1]
    if pathlib.Path(path).name.startswith("libc.so"):
      return path
  pytest.fail("no libc.so in /proc/self/maps")


def test_compare_preload_of_a_missing_library_is_an_error(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks.peers.compare", "--quick", "--skip-peers",
                        "--preload", str(tmp_path / "libnothing.so"), "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "libnothing.so: no such file" in out.stderr
  assert not (tmp_path / "peers.json").exists()


def test_compare_quick_without_peers(tmp_path):
  libc = _loaded_libc()  # --preload restarts the run with it in LD_PRELOAD
  out = subprocess.run([sys.executable, "-m", "benchmarks.peers.compare", "--quick", "--skip-peers",
                        "--skip-memory", "--preload", libc, "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  payload = json.loads((tmp_path / "peers.json").read_text())
  assert libc in payload["meta"]["ld_preload"].split(":")
  rows = {(r["library"], r["method"]): r for r in payload["steps"]}
  assert set(rows) == {("jmtl", "ew"), ("jmtl", "pcgrad"), ("jmtl", "rep_pcgrad")}
  for row in rows.values():
    assert math.isfinite(row["ratio_to_own_ew"]) and row["ratio_to_own_ew"] > 0
  assert payload["agreement"]["within_tolerance"]
  assert set(payload["agreement"]["relative_errors"]) == {"jmtl_vs_numpy"}
  assert (tmp_path / "peers.md").read_text().startswith("# jmtl vs LibMTL")
  assert (tmp_path / "peers.png").stat().st_size > 0


def test_compared_jmtl_variants_have_the_peers_scale():
  # run_torch.py's EW backpropagates the mean loss; LibMTL's and torchjd's PCGrad sum the
  # projected gradients. The timed jmtl variants must compute the same quantities.
  from benchmarks.peers import compare
  g = np.random.default_rng(2).normal(size=7)
  jacobian = jnp.asarray(np.stack([g] * 4), jnp.float32)
  peer_factor = {"ew": 1.0, "pcgrad": 4.0, "rep_pcgrad": 4.0}
  for variant, factor in peer_factor.items():
    name, hparams, _ = compare.JMTL_VARIANTS[variant]
    balancer = balancers.get(name, 4, **hparams)
    combined, _ = balancer.update(jacobian, balancer.init(jacobian[0]), task_losses=jnp.ones(4))
    np.testing.assert_allclose(combined, factor * g, rtol=1e-5, err_msg=variant)

"""The torch-free half of benchmarks/references.py: cases, the jmtl side, conventions, reasons.

The PyTorch half (benchmarks/peers/references_torch.py) needs the peers' venv, which CI does
not have; here synthetic peer outputs, built with NumPy float64 from each method's definition,
stand in for it, in the same ``.npz`` key layout.
"""

import json

import numpy as np
import pytest

from benchmarks import references
from benchmarks.peers import reference_checks as checks
from benchmarks.peers import reference_methods as table
from benchmarks.peers import reference_report as report
from benchmarks.peers.reference import pcgrad_fixed_order
from jmtl import balancers


def _method(name):
  return next(m for m in table.METHODS if m.name == name)


def test_cases_have_the_promised_shapes():
  cases = references.make_cases(task_counts=(3, 8), seeds=(0,), dimension=64)
  assert set(cases) == {f"{k}/T{t}/seed0" for k in references.KINDS for t in (3, 8)}
  again = references.make_cases(task_counts=(3, 8), seeds=(0,), dimension=64)
  for case, arrays in cases.items():  # deterministic
    np.testing.assert_array_equal(arrays["jacobians"], again[case]["jacobians"])
    assert arrays["jacobians"].dtype == np.float32
    assert arrays["jacobians"].shape == (references.STEPS, references.tasks_of(case), 64)
  norms = np.linalg.norm(cases["imbalanced/T8/seed0"]["jacobians"][0], axis=1)
  assert norms.max() / norms.min() == pytest.approx(1e4, rel=1e-3)  # four orders of magnitude
  collinear = cases["collinear/T3/seed0"]["jacobians"][0].astype(np.float64)
  units = collinear / np.linalg.norm(collinear, axis=1, keepdims=True)
  assert (units @ units.T).min() > 0.999
  conflicting = cases["conflicting/T8/seed0"]["jacobians"][0].astype(np.float64)
  assert ((conflicting @ conflicting.T) < 0).sum() >= 8


def test_every_jmtl_method_is_compared_or_says_why_not():
  compared = {m.name for m in table.METHODS}
  assert not compared & set(table.NOT_COMPARED)
  assert compared | set(table.NOT_COMPARED) == set(balancers.names())
  for spec in table.peer_specs():
    assert spec["library"] in ("libmtl", "torchjd")
    json.dumps(spec)  # what the PyTorch half reads


def _synthetic_peers(cases, name, library, combine, error=None):
  """Peer output in references_torch.py's layout: direction ``combine(J)`` in both dtypes."""
  peers = {}
  for case, arrays in cases.items():
    for dtype in ("float32", "float64"):
      prefix = f"{case}/{name}/{library}/{dtype}"
      if error:
        peers[f"{prefix}/error"] = np.array(error)
        continue
      peers[f"{prefix}/direction"] = np.stack(
          [combine(j.astype(np.float64)) for j in arrays["jacobians"]])
  return peers


def test_jmtl_side_against_peers_that_follow_the_definitions():
  cases = references.make_cases(task_counts=(3,), seeds=(0,), kinds=("conflicting",),
                                dimension=48)
  peers = {
      # LibMTL's EW sums: the 1/T convention must bring it onto jmtl's mean.
      **_synthetic_peers(cases, "mean", "libmtl", lambda j: j.sum(0)),
      **_synthetic_peers(cases, "mean", "torchjd", lambda j: j.mean(0)),
      **_synthetic_peers(cases, "pcgrad", "torchjd", lambda j: pcgrad_fixed_order(j, False)),
      **_synthetic_peers(cases, "pcgrad", "libmtl", lambda j: pcgrad_fixed_order(j, True)),
      # A peer whose sum convention was NOT declared: same direction, twice as long.
      **_synthetic_peers(cases, "sum", "torchjd", lambda j: 0.5 * j.sum(0)),
      **_synthetic_peers(cases, "sum", "libmtl", None, error="ValueError: cannot reshape"),
  }
  methods = (_method("mean"), _method("pcgrad"), _method("sum"))
  result = references.compare_all(cases, methods, peers, log=lambda message: None)
  rows = {(r["method"], r["library"], r["step"]): r for r in result["rows"]}
  for step in range(references.STEPS):
    assert rows[("mean", "libmtl", step)]["rel_direction"] < 1e-6
    assert rows[("mean", "torchjd", step)]["rel_direction"] < 1e-6
    assert rows[("pcgrad", "torchjd", step)]["rel_direction"] < checks.TOLERANCE
    assert rows[("pcgrad", "libmtl", step)]["rel_direction"] < checks.TOLERANCE
    assert "reason" not in rows[("pcgrad", "torchjd", step)]
    wrong = rows[("sum", "torchjd", step)]
    assert wrong["rel_direction"] == pytest.approx(1.0, rel=1e-5)
    assert "different length (jmtl/peer 2)" in wrong["reason"]
    assert "scale convention" in wrong["reason"]
  assert "the peer raises: ValueError" in rows[("sum", "libmtl", 0)]["reason"]

  payload = report.build_payload(result, {
      "jmtl": {"commit": "0" * 40, "dirty": False}, "peers": {"torch": "x"}, "dimension": 48,
      "steps": references.STEPS, "kinds": ["conflicting"], "tasks": [3], "seeds": [0],
      "tolerance": checks.TOLERANCE})
  json.dumps(payload)
  summary = {(s["method"], s["library"]): s for s in payload["summary"]}
  assert summary[("sum", "torchjd")]["above_tolerance"] == references.STEPS
  assert summary[("sum", "libmtl")]["peer_errors"] == 1
  assert summary[("mean", "libmtl")]["above_tolerance"] == 0
  text = report.markdown(payload)
  assert "### sum vs torchjd Sum" in text and "### mean vs" not in text
  assert "| 1/T " in text and "## Not compared" in text


def test_min_norm_gap_is_zero_exactly_at_the_two_task_min_norm_point():
  g1, g2 = np.array([1.0, 0.0]), np.array([-0.5, 2.0])
  gram = np.stack([g1, g2]) @ np.stack([g1, g2]).T
  gamma = (g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))  # Sener & Koltun's closed form
  optimum = np.array([gamma, 1 - gamma])
  assert checks.min_norm_gap(gram, optimum) < 1e-12
  assert checks.min_norm_gap(gram, optimum + [0.05, -0.05]) > 1e-3


def test_imtl_g_and_nash_properties_hold_for_their_closed_forms():
  jacobian = np.random.default_rng(0).normal(size=(3, 10)) * np.array([[0.01], [1.0], [100.0]])
  gram = jacobian @ jacobian.T
  norms = np.sqrt(np.diag(gram))
  weights = np.linalg.solve(gram, norms)
  weights /= weights.sum()
  assert checks.projection_spread(jacobian, weights @ jacobian) < 1e-9
  assert checks.projection_spread(jacobian, jacobian.mean(0)) > 0.1
  orthogonal = np.diag([4.0, 9.0])  # G a = 1/a: a_i = 1/sqrt(G_ii)
  assert checks.alpha_fair_residual(orthogonal, np.array([0.5, 1 / 3])) < 1e-12
  assert checks.alpha_fair_residual(orthogonal, np.array([1.0, 1.0])) > 0.5


def test_reason_blames_the_side_that_misses_the_property():
  row = {"rel_direction": 0.5, "cosine": 0.9, "norm_ratio": 1.1, "cond": 10.0,
         "rel_direction_vs_float64": 0.5, "peer_float32_vs_float64": 1e-8,
         "jmtl_checks": {"kkt_residual": 1e-7}, "peer_checks": {"kkt_residual": 0.8}}
  assert checks.reason(row, "").startswith("the peer's solver has not converged")
  row["jmtl_checks"], row["peer_checks"] = row["peer_checks"], row["jmtl_checks"]
  assert checks.reason(row, "").startswith("jmtl misses the method's property")
  rounding = {**row, "jmtl_checks": {}, "peer_checks": {}, "rel_direction_vs_float64": 1e-6}
  assert checks.reason(rounding, "").startswith("float32 rounding in the peer")
  unexplained = {**rounding, "rel_direction_vs_float64": 0.5}
  assert checks.reason(unexplained, "") == "UNEXPLAINED"


def test_rlw_distribution_check_tells_softmax_normal_from_dirichlet():
  ours = references.jmtl_draws(3, "rlw", draws=4000)
  np.testing.assert_allclose(ours.sum(1), 1.0, rtol=1e-5)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4000, 3))
  same = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  assert references.compare_distributions(ours, same)["min_p_value"] > 1e-3
  other = rng.dirichlet(np.ones(3), size=4000)
  assert references.compare_distributions(ours, other)["min_p_value"] < 1e-4


def test_missing_peers_venv_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(references, "TORCH_PYTHON", tmp_path / "nothing" / "python")
  with pytest.raises(FileNotFoundError, match="run bash benchmarks/peers/setup.sh"):
    references.run_peers({}, table.METHODS, tmp_path)


def test_summing_peers_are_brought_onto_jmtl_mean_by_the_table():
  # A "1/T" row says the peer sums where jmtl averages. jmtl's own reduction="sum" is the
  # paper's (summing) scale, so as a stand-in peer it must agree once the table's factor is
  # applied: a row whose factor is wrong shows up T or T^2 apart.
  cases = references.make_cases(task_counts=(2, 3), seeds=(0,), kinds=("conflicting",),
                                dimension=32)
  summing = [m._replace(peers=tuple(p for p in m.peers if p.scale == "1/T"))
             for m in table.METHODS if _takes_reduction(m.name)]
  summing = [m for m in summing if m.peers]
  assert {m.name for m in summing} >= {"pcgrad", "gradvac", "config", "uncertainty"}
  peers = {}
  for method in summing:
    paper_scale = method._replace(hparams={**method.hparams, "reduction": "sum"})
    for case, arrays in cases.items():
      if references.tasks_of(case) not in method.tasks:
        continue
      run = references.run_jmtl(paper_scale, arrays["jacobians"], arrays["losses"])
      for peer in method.peers:
        peers[f"{case}/{method.name}/{peer.library}/float32/direction"] = run["direction"]
        if run["weights"] is not None:
          peers[f"{case}/{method.name}/{peer.library}/float32/weights"] = run["weights"]
  result = references.compare_all(cases, summing, peers, log=lambda message: None)
  assert result["rows"]
  for row in result["rows"]:
    assert row["rel_direction"] < 1e-5, row
    assert row.get("rel_weights", 0.0) < 1e-5, row
  # No row multiplies a peer by T any more: every jmtl method averages.
  assert all(p.scale != "T" for m in table.METHODS for p in m.peers)


def _takes_reduction(name):
  try:
    balancers.get(name, 3, reduction="sum")
  except TypeError:  # get's error for an hparam the method does not take
    return False
  return True

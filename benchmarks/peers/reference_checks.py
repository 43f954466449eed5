"""NumPy float64 checks that say WHY jmtl and a peer differ on one Jacobian.

Each check measures how well one side's answer satisfies the method's defining property
(MGDA's min-norm optimality, IMTL-G's equal projections, Nash-MTL's ``G a = 1/a``, ...), so a
difference can be charged to the side whose solver did not converge rather than guessed.
``reason`` turns the measured figures into the sentence the report prints.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-4  # relative difference above which the report must give a reason


def relative(value, reference) -> float:
  value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
  scale = np.linalg.norm(reference)
  if scale == 0:
    return float(np.linalg.norm(value))
  return float(np.linalg.norm(value - reference) / scale)


def worst(row: dict) -> float:
  """A compared step's largest relative difference (direction or weights); inf for a peer error."""
  if row.get("peer_error"):
    return float("inf")
  return max(row["rel_direction"], row.get("rel_weights", 0.0))


def cosine(a, b) -> float:
  norms = np.linalg.norm(a) * np.linalg.norm(b)
  return float(a @ b / norms) if norms > 0 else float("nan")


def min_norm_gap(gram, weights) -> float:
  """Frank-Wolfe duality gap of ``min_{w in simplex} w^T G w`` at w (on the simplex), relative
  to ``|d|^2`` there (the scale of the answer, which can be far below the largest gradient's);
  0 exactly at the min-norm point."""
  w = np.asarray(weights, np.float64)
  w = w / w.sum()
  products = gram @ w
  squared_norm = max(w @ products, 1e-12 * np.max(np.diag(gram)))
  return float((w @ products - products.min()) / squared_norm)


def projection_spread(jacobian, direction) -> float:
  """IMTL-G's property: ``d . g_i / |g_i|`` equal for all i; (max - min) / max |.|."""
  projections = jacobian @ direction / np.linalg.norm(jacobian, axis=1)
  return float(np.ptp(projections) / np.max(np.abs(projections)))


def alpha_fair_residual(gram, weights, alpha: float = 1.0) -> float:
  """``|G w - w^(-1/alpha)| / |w^(-1/alpha)|``: Nash-MTL (alpha 1) and FairGrad's system."""
  w = np.asarray(weights, np.float64)
  if np.any(w <= 0):
    return float("inf")
  target = w ** (-1.0 / alpha)
  return float(np.linalg.norm(gram @ w - target) / np.linalg.norm(target))


def cagrad_primal(jacobian, direction, c: float) -> dict[str, float]:
  """CAGrad's primal problem at ``d~ = (1 + c^2) d`` (undoing rescale=1): the worst task's
  gain ``min_i g_i . d~`` (maximised; over ``|g_0|^2``) and how far d~ leaves the ball
  ``|d~ - g_0| <= c |g_0|`` (over ``|g_0|``; <= 0 inside)."""
  mean = jacobian.mean(axis=0)
  scaled = (1 + c * c) * np.asarray(direction, np.float64)
  mean_sq = mean @ mean
  return {"worst_task_gain": float(np.min(jacobian @ scaled) / mean_sq),
          "ball_excess": float((np.linalg.norm(scaled - mean) - c * np.sqrt(mean_sq))
                               / np.sqrt(mean_sq))}


def worst_cosine(jacobian, direction) -> float:
  """``min_i cos(g_i, d)``: negative when d conflicts with a task (dual-cone methods: >= 0)."""
  norms = np.linalg.norm(jacobian, axis=1) * np.linalg.norm(direction)
  return float(np.min(jacobian @ direction / norms))


def krum_rule(jacobian, direction, n_byzantine: int = 0) -> float:
  """Which Krum scoring ``direction`` (one selected row) follows: 2 squared distances (the
  paper), 1 unsquared ones (torchjd), 3 both (they pick the same row), 0 neither."""
  gram = jacobian @ jacobian.T
  squared = np.maximum(np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram, 0.0)
  np.fill_diagonal(squared, np.inf)
  neighbours = len(jacobian) - n_byzantine - 2
  picks = [np.argmin(np.sort(distances, axis=1)[:, :neighbours].sum(1))
           for distances in (squared, np.sqrt(squared))]
  follows = [np.allclose(direction, jacobian[pick], rtol=1e-5, atol=0) for pick in picks]
  return float(2 * follows[0] + follows[1])


def property_checks(method: str, jacobian, direction, weights, hparams: dict) -> dict[str, float]:
  """The figures that tell which side is right, for the methods that have such a property."""
  gram = jacobian @ jacobian.T
  if method == "mgda" and weights is not None:
    return {"min_norm_gap": min_norm_gap(gram, weights)}
  if method == "imtl_g":
    return {"projection_spread": projection_spread(jacobian, direction)}
  if method in ("nash_mtl", "fairgrad") and weights is not None:
    return {"kkt_residual": alpha_fair_residual(gram, weights, hparams.get("alpha", 1.0))}
  if method == "cagrad":
    return cagrad_primal(jacobian, direction, hparams["c"])
  if method in ("upgrad", "dualproj"):
    return {"worst_cosine": worst_cosine(jacobian, direction)}
  if method == "krum":
    return {"krum_rule": krum_rule(jacobian, direction, hparams.get("n_byzantine", 0))}
  return {}


def condition_number(jacobian) -> float:
  singular = np.linalg.svd(np.asarray(jacobian, np.float64), compute_uv=False)
  return float(singular[0] / singular[-1]) if singular[-1] > 0 else float("inf")


# Below these, a property holds to float32 precision (the gap is relative to |d|^2).
_MET = {"min_norm_gap": 1e-4, "projection_spread": 1e-5, "kkt_residual": 1e-5}
_KRUM_RULES = {0.0: "neither rule", 1.0: "unsquared distances", 2.0: "squared distances",
               3.0: "either rule (same pick)"}
_PROPERTY = {"min_norm_gap": ("Frank-Wolfe gap / |d|^2", "lower"),
             "projection_spread": ("projection spread", "lower"),
             "kkt_residual": ("KKT residual |G a - 1/a|/|1/a|", "lower"),
             "worst_task_gain": ("worst task's gain in the ball", "higher"),
             "worst_cosine": ("worst cosine with a task", "higher")}


def _solver_reason(jmtl_checks: dict, peer_checks: dict, cond: float) -> str | None:
  """Charges the difference to the side that meets the method's property worse, if clearly;
  else states both figures."""
  if "krum_rule" in jmtl_checks and "krum_rule" in peer_checks:
    return (f"variant: jmtl's pick follows {_KRUM_RULES[jmtl_checks['krum_rule']]}, the "
            f"peer's {_KRUM_RULES[peer_checks['krum_rule']]} (recomputed in float64)")
  for key, (label, better) in _PROPERTY.items():
    if key not in jmtl_checks or key not in peer_checks:
      continue
    ours, theirs = jmtl_checks[key], peer_checks[key]
    figures = f"{label} jmtl {ours:.3g}, peer {theirs:.3g}"
    if key == "worst_task_gain":
      outside = [side for side, checks in (("jmtl", jmtl_checks), ("peer", peer_checks))
                 if checks["ball_excess"] > 1e-3]
      if outside:
        return f"{' and '.join(outside)} leaves the ball |d - g0| <= c|g0|; {figures}"
      if abs(ours - theirs) > 1e-4 * max(abs(ours), abs(theirs), 1e-12):
        side = "the peer's" if theirs < ours else "jmtl's"
        return f"{side} solver is further from the optimum: {figures} (higher is better)"
      return f"both optimal to 1e-4 ({figures}): the dual has several minimisers"
    if better == "higher":
      if theirs < -1e-6 <= ours:
        return f"the peer's direction conflicts with a task: {figures}"
      if ours < -1e-6 <= theirs:
        return f"jmtl's direction conflicts with a task: {figures}"
      continue
    worse, ratio = ("peer", theirs / max(ours, 1e-300)) if theirs > ours else \
        ("jmtl", ours / max(theirs, 1e-300))
    if max(ours, theirs) > 1e-4 and ratio > 10:
      name = "the peer's solver has not converged" if worse == "peer" else \
          "jmtl misses the method's property"
      return f"{name}: {figures}"
    if max(ours, theirs) <= _MET[key]:
      return (f"both meet the property to float32 precision ({figures}): an ill-conditioned "
              f"problem (cond(J) {cond:.1e}) whose answers differ far more than the property")
    return f"neither float32 solve meets the property: {figures}"
  return None


def reason(row: dict, note: str) -> str:
  """Why ``row``'s difference exceeds TOLERANCE, from its measured figures, plus the known note."""
  if row.get("peer_error"):
    return f"the peer raises: {row['peer_error']}"
  parts = []
  if row.get("norm_ratio") == float("inf"):
    parts.append("the peer returns a zero update")
  vs64, rounding = row.get("rel_direction_vs_float64"), row.get("peer_float32_vs_float64")
  cos, ratio = row.get("cosine"), row.get("norm_ratio")
  if vs64 is not None and vs64 <= TOLERANCE:
    parts.append(f"float32 rounding in the peer: jmtl is within {vs64:.1e} of the peer run in "
                 f"float64 (the peer's own float32/float64 gap is {rounding:.1e}; cond(J) "
                 f"{row['cond']:.1e})")
  elif vs64 is not None and rounding is not None and rounding >= 0.3 * vs64:
    parts.append(f"float32 rounding: the peer's own float32 and float64 answers differ by "
                 f"{rounding:.1e} (cond(J) {row['cond']:.1e})")
  solver = _solver_reason(row.get("jmtl_checks", {}), row.get("peer_checks", {}),
                          row.get("cond", float("nan")))
  if solver:
    parts.append(solver)
  peer64 = row.get("peer64_checks", {})
  if solver and peer64:
    parts.append("the peer in float64: " + ", ".join(
        f"{_PROPERTY[k][0] if k in _PROPERTY else k} {v:.3g}" for k, v in peer64.items()))
  if not parts and cos is not None and cos > 1 - 1e-7 and abs(ratio - 1) > TOLERANCE:
    # A constant factor is a convention only when nothing else is known to differ.
    parts.append(f"same direction, different length (jmtl/peer {ratio:.6g})"
                 + ("" if note else ": a scale convention"))
  if note:
    parts.append(f"known difference: {note}")
  return "; ".join(parts) if parts else "UNEXPLAINED"

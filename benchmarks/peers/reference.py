"""NumPy reference for the numerical agreement check: PCGrad with a fixed task order.

Yu et al. 2020, Algorithm 1, in float64: task i starts from ``g_i`` and, visiting the tasks
in index order, replaces ``g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j`` whenever
``g_i' . g_j < 0``; the update is ``sum_i g_i'``. torchjd and jmtl skip ``j = i``; LibMTL
(like the authors' PyTorch code) visits it too, which only matters when ``g_i' . g_i < 0``
has become true by then, so both versions are kept to tell a real disagreement from that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOLERANCE = 1e-4  # relative, on the combined direction


def conflicting_jacobian(num_tasks: int, dimension: int, seed: int) -> np.ndarray:
  """``[T, d]`` float32 rows sharing a component with mixed signs, so many pairs conflict."""
  rng = np.random.default_rng(seed)
  common = rng.normal(size=dimension)
  signs = np.resize([1.0, -0.6, 0.7, -1.0, 1.3, -0.3], num_tasks)
  scales = rng.uniform(0.5, 2.0, size=(num_tasks, 1))
  rows = scales * (signs[:, None] * common + 0.8 * rng.normal(size=(num_tasks, dimension)))
  return rows.astype(np.float32)


def pcgrad_fixed_order(jacobian: np.ndarray, visit_self: bool) -> np.ndarray:
  grads = np.asarray(jacobian, np.float64)
  projected = grads.copy()
  for i in range(len(grads)):
    for j in range(len(grads)):
      if j == i and not visit_self:
        continue
      inner = projected[i] @ grads[j]
      if inner < 0:
        projected[i] -= inner / (grads[j] @ grads[j]) * grads[j]
  return projected.sum(0)


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
  value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
  return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def agreement_summary(result: dict[str, Any]) -> dict[str, Any]:
  """Pairwise relative errors of the combined directions, and whether all are within tolerance."""
  reference = result["numpy_float64"]
  self_visit_matters = relative_error(result["numpy_float64_visit_self"], reference) > TOLERANCE
  errors = {"jmtl_vs_numpy": relative_error(result["jmtl"], reference)}
  for peer in ("libmtl", "torchjd"):
    if peer in result:
      errors[f"{peer}_vs_numpy"] = relative_error(result[peer], reference)
      errors[f"jmtl_vs_{peer}"] = relative_error(result["jmtl"], result[peer])
  return {
      "method": "pcgrad, fixed task order (index order), on one random [T, d] Jacobian",
      "num_tasks": result["num_tasks"], "dimension": result["dimension"],
      "tolerance": TOLERANCE, "relative_errors": errors,
      "libmtl_self_visit_changes_result": self_visit_matters,
      "within_tolerance": all(e <= TOLERANCE for e in errors.values()),
  }

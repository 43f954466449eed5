"""Reference agreement: jmtl's balancers against LibMTL's and torchjd's on the same Jacobians.

One command, deterministic (fixed seeds, fixed task orders), from the repository root::

  bash benchmarks/peers/setup.sh            # the PyTorch peers' venv, once
  .venv/bin/python -m benchmarks.references  # writes benchmarks/results/references.{md,json}

Why two processes: jmtl needs Python >= 3.12 and JAX, the peers need torch (its CPU wheel on
this machine is for Python 3.11), so no single interpreter imports both. As in
benchmarks/peers/compare.py, this script runs in jmtl's venv and spawns the PyTorch half
(benchmarks/peers/references_torch.py) in the peers' venv once; the Jacobians go there in one
``.npz`` and the peers' directions and weights come back in another. jmtl's side never
touches torch, and the peers run their own unmodified code (only their shuffles are fixed).

Cases: per-task gradients drawn as ``[T, d]`` float32 matrices of four kinds (random;
imbalanced: row norms spread log-uniformly over 1e-2..1e2; conflicting: a shared component
with mixed signs; nearly collinear: one direction plus 1e-3 noise), T in {2, 3, 8}, two
seeds, two steps each (stateful methods carry their state into step 2). Every method runs
both steps on every case on each side; the peers run once in float32 (what jmtl computes in)
and once in float64, which separates float32 rounding from real disagreement.

Reported per (method, peer, case, step): the relative difference of the combined direction
``|d_jmtl - s d_peer| / |s d_peer|`` and of the weights, where ``s`` maps the peer's
convention onto jmtl's (benchmarks/peers/reference_methods.py lists every factor), and for
every difference above 1e-4 a reason measured on the case (reference_checks.py): rounding,
which side's solver misses the method's defining property, a scale convention, a known
variant. Random methods (RLW) are compared by the distribution of their weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402
from benchmarks.peers import reference_checks as checks  # noqa: E402
from benchmarks.peers import reference_methods as table  # noqa: E402
from benchmarks.peers.reference import conflicting_jacobian  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
TORCH_PYTHON = PEERS / ".venv" / "bin" / "python"
KINDS = ("random", "imbalanced", "conflicting", "collinear")
DIMENSION = 256
STEPS = 2
RLW_DRAWS = 20000


def jacobian_of(kind: str, num_tasks: int, seed: int, dimension: int = DIMENSION) -> np.ndarray:
  """One ``[T, d]`` float32 Jacobian of ``kind`` (see the module docstring)."""
  rng = np.random.default_rng([KINDS.index(kind), num_tasks, seed])
  rows = rng.normal(size=(num_tasks, dimension))
  if kind == "imbalanced":
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows * 10.0 ** rng.permutation(np.linspace(-2, 2, num_tasks))[:, None]
  elif kind == "conflicting":
    rows = conflicting_jacobian(num_tasks, dimension, int(rng.integers(1 << 30)))
  elif kind == "collinear":
    direction = rng.normal(size=dimension)
    rows = rng.uniform(0.5, 2.0, size=(num_tasks, 1)) * (direction + 1e-3 * rows)
  return rows.astype(np.float32)


def make_cases(task_counts=table.ALL_TASKS, seeds=(0, 1), kinds=KINDS, steps=STEPS,
               dimension=DIMENSION) -> dict[str, dict[str, np.ndarray]]:
  """``{"kind/T3/seed0": {"jacobians": [S, T, d], "losses": [S, T]}}``."""
  cases = {}
  for kind in kinds:
    for num_tasks in task_counts:
      for seed in seeds:
        jacobians = np.stack([jacobian_of(kind, num_tasks, 1000 * step + seed, dimension)
                              for step in range(steps)])
        losses = np.random.default_rng([num_tasks, seed]).uniform(0.5, 3.0, (steps, num_tasks))
        cases[f"{kind}/T{num_tasks}/seed{seed}"] = {"jacobians": jacobians,
                                                    "losses": losses.astype(np.float32)}
  return cases


def tasks_of(case: str) -> int:
  return int(case.split("/")[1][1:])


# ---------------------------------------------------------------- jmtl side


@functools.cache
def _jitted(name: str, num_tasks: int, hparams: str):
  """``(init, jitted update)`` of one jmtl balancer: compiled once per (method, T), not per case."""
  import jax
  from jmtl import balancers

  balancer = balancers.get(name, num_tasks, **json.loads(hparams))
  return balancer.init, jax.jit(lambda grads, state, task_losses: balancer.update(
      grads, state, task_losses=task_losses))


def run_jmtl(method: table.Method, jacobians: np.ndarray, losses: np.ndarray) -> dict:
  """jmtl's directions ``[S, d]`` and applied weights ``[S, T]`` (None if not comparable)."""
  init, update = _jitted(method.name, jacobians.shape[1], json.dumps(method.hparams))
  state = init(jacobians[0, 0])
  directions, weights = [], []
  for jacobian, step_losses in zip(jacobians, losses):
    direction, state = update(jacobian, state, step_losses)
    directions.append(np.asarray(direction, np.float64))
    step_weights = getattr(state, "weights", None)
    weights.append(None if step_weights is None else np.asarray(step_weights, np.float64))
  comparable = method.weights and all(w is not None for w in weights)
  return {"direction": np.stack(directions), "weights": np.stack(weights) if comparable else None}


def jmtl_draws(num_tasks: int, name: str = "rlw", draws: int = RLW_DRAWS) -> np.ndarray:
  """``[N, T]`` weight vectors of a random jmtl method, one per update."""
  import jax
  from jmtl import balancers

  balancer = balancers.get(name, num_tasks)
  def one(state, _):
    weights, state = balancer.weigh_losses(np.ones(num_tasks, np.float32), state)
    return state, weights
  _, weights = jax.lax.scan(one, balancer.init(None), None, length=draws)
  return np.asarray(weights, np.float64)


# ---------------------------------------------------------------- peer side


def run_peers(cases: dict, methods, workdir: pathlib.Path) -> dict[str, np.ndarray]:
  """The PyTorch half's output (see references_torch.py for its keys)."""
  if not TORCH_PYTHON.exists():
    raise FileNotFoundError(f"{TORCH_PYTHON} is missing: run bash benchmarks/peers/setup.sh")
  np.savez(workdir / "cases.npz", **{f"{case}/{field}": value for case, arrays in cases.items()
                                     for field, value in arrays.items()})
  (workdir / "methods.json").write_text(json.dumps(table.peer_specs(methods)))
  subprocess.run([str(TORCH_PYTHON), str(PEERS / "references_torch.py"), "--cases",
                  str(workdir / "cases.npz"), "--methods", str(workdir / "methods.json"),
                  "--out", str(workdir / "peers.npz")], check=True)
  with np.load(workdir / "peers.npz") as data:
    return {key: data[key] for key in data.files}


# ---------------------------------------------------------------- comparison


def scale_factor(rule: str, num_tasks: int, hparams: dict) -> float:
  """The factor mapping a peer's output onto jmtl's convention (reference_methods.py)."""
  if rule == "same":
    return 1.0
  if rule == "1/T":
    return 1.0 / num_tasks
  if rule == "T":
    return float(num_tasks)
  if rule == "1/(1+c^2)":
    return 1.0 / (1.0 + hparams["c"] ** 2)
  raise ValueError(f"unknown scale convention {rule!r}")


def compare_case(method: table.Method, peer: table.Peer, case: str, arrays: dict, ours: dict,
                 peers: dict[str, np.ndarray]) -> list[dict]:
  """One row per compared step of (method, peer) on ``case``."""
  prefix = f"{case}/{method.name}/{peer.library}"
  num_tasks = tasks_of(case)
  base = {"method": method.name, "library": peer.library, "case": case, "tasks": num_tasks,
          "kind": case.split("/")[0]}
  error = peers.get(f"{prefix}/float32/error")
  if error is not None:
    return [{**base, "step": 0, "peer_error": str(error)}]
  rows = []
  for step in range(method.steps):
    jacobian = arrays["jacobians"][step].astype(np.float64)
    scale = scale_factor(peer.scale, num_tasks, method.hparams)
    theirs = scale * peers[f"{prefix}/float32/direction"][step]
    direction = ours["direction"][step]
    row = {**base, "step": step, "cond": checks.condition_number(jacobian),
           "rel_direction": checks.relative(direction, theirs),
           "cosine": checks.cosine(direction, theirs),
           "norm_ratio": (float(np.linalg.norm(direction) / np.linalg.norm(theirs))
                          if np.linalg.norm(theirs) > 0 else float("inf"))}
    peer_weights = peers.get(f"{prefix}/float32/weights")
    if f"{prefix}/float64/direction" in peers:
      theirs64 = scale * peers[f"{prefix}/float64/direction"][step]
      row["rel_direction_vs_float64"] = checks.relative(direction, theirs64)
      row["peer_float32_vs_float64"] = checks.relative(theirs, theirs64)
      weights64 = peers.get(f"{prefix}/float64/weights") if peer.weights else None
      row["peer64_checks"] = checks.property_checks(
          method.name, jacobian, theirs64, None if weights64 is None else scale * weights64[step],
          method.hparams)
    our_weights = ours["weights"]
    if peer.weights and our_weights is not None and peer_weights is not None:
      row["rel_weights"] = checks.relative(our_weights[step], scale * peer_weights[step])
    row["jmtl_checks"] = checks.property_checks(
        method.name, jacobian, direction, None if our_weights is None else our_weights[step],
        method.hparams)
    usable = peer_weights if peer.weights else None  # LibMTL's CAGrad/GLS return other numbers
    row["peer_checks"] = checks.property_checks(
        method.name, jacobian, theirs, None if usable is None else scale * usable[step],
        method.hparams)
    rows.append(row)
  return rows


def explain(rows: list[dict]) -> list[dict]:
  """Adds ``reason`` to every row above tolerance."""
  notes = {(m.name, p.library): "; ".join(filter(None, (m.note, p.note)))
           for m in table.METHODS for p in m.peers}
  for row in rows:
    if checks.worst(row) > checks.TOLERANCE:
      row["reason"] = checks.reason(row, notes[(row["method"], row["library"])])
  return rows


def compare_distributions(ours: np.ndarray, theirs: np.ndarray) -> dict:
  """Two-sample Kolmogorov-Smirnov test on every task's weight, and the moments."""
  from scipy import stats
  tests = [stats.ks_2samp(ours[:, t], theirs[:, t]) for t in range(ours.shape[1])]
  return {"ks_statistic": max(float(t.statistic) for t in tests),
          "min_p_value": min(float(t.pvalue) for t in tests),
          "jmtl_mean": ours.mean(0).tolist(), "peer_mean": theirs.mean(0).tolist(),
          "jmtl_std": ours.std(0).tolist(), "peer_std": theirs.std(0).tolist()}


def compare_all(cases: dict, methods, peers: dict[str, np.ndarray], log=print) -> dict:
  rows, distributions = [], []
  for method in methods:
    if method.distribution:
      for num_tasks in method.tasks:
        ours = jmtl_draws(num_tasks, method.name)
        for peer in method.peers:
          theirs = peers[f"draws/T{num_tasks}/{method.name}/{peer.library}"]
          distributions.append({"method": method.name, "library": peer.library,
                                "tasks": num_tasks, "draws": len(ours),
                                **compare_distributions(ours, theirs)})
      continue
    for case, arrays in cases.items():
      if tasks_of(case) not in method.tasks:
        continue
      ours = run_jmtl(method, arrays["jacobians"], arrays["losses"])
      for peer in method.peers:
        rows.extend(compare_case(method, peer, case, arrays, ours, peers))
    log(f"{method.name}: compared")
  return {"rows": explain(rows), "distributions": distributions}


# ---------------------------------------------------------------- report


def git_commit() -> dict:
  run = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
  return {"commit": run("rev-parse", "HEAD").stdout.strip(),
          "dirty": bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--workdir", help="keep the exchanged .npz files here")
  parser.add_argument("--reuse-peers", metavar="PEERS_NPZ",
                      help="a peers.npz kept by an earlier --workdir run of the same cases: "
                      "re-runs only jmtl's side and the comparison")
  args = parser.parse_args(argv)
  from benchmarks.peers import reference_report as report

  cases = make_cases()
  if args.reuse_peers:
    with np.load(args.reuse_peers) as data:
      peers = {key: data[key] for key in data.files}
  else:
    with tempfile.TemporaryDirectory() as scratch:
      workdir = pathlib.Path(args.workdir or scratch)
      workdir.mkdir(parents=True, exist_ok=True)
      peers = run_peers(cases, table.METHODS, workdir)
  result = compare_all(cases, table.METHODS, peers)
  meta = {"jmtl": git_commit(), "peers": json.loads(str(peers["versions"])),
          "machine": _common.machine_info(), "dimension": DIMENSION, "steps": STEPS,
          "kinds": list(KINDS), "tasks": list(table.ALL_TASKS), "seeds": [0, 1],
          "tolerance": checks.TOLERANCE}
  payload = report.build_payload(result, meta)
  out = pathlib.Path(args.out)
  _common.write_json(out / "references.json", payload)
  (out / "references.md").write_text(report.markdown(payload))
  print(f"wrote {out / 'references.md'} and references.json")


if __name__ == "__main__":
  main()

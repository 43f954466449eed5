"""The two-task toy problem of CAGrad (Liu et al. 2021), reused by Nash-MTL and FAMO.

Every registered balancer drives ``optax.adam`` from the published starting points; the
whole trajectory is one ``jax.lax.scan`` and all starts are vmapped, so a method costs one
compilation and one device call per setup.

Setups (from the authors' code):
  * ``cagrad``: Cranial-XIX/CAGrad ``toy.py``: starts (-8.5, 7.5), (-8.5, -5), (9, 9);
    Adam lr 1e-3; 100,000 steps.
  * ``nash_mtl``: AvivNavon/nash-mtl ``experiments/toy``: f1 scaled by 0.1; starts
    (-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1); Adam lr 1e-3; 35,000 steps.

A run ends **Pareto-stationary** when the min-norm point of the convex hull of the two
(unscaled) task gradients at its final point has norm < ``--tol`` (1e-3): no common
descent direction is left. ``on_front`` additionally asks for x2 < 0, i.e. the quadratic
valley holding the Pareto set {x1 in [-7, 7], x2 ~ -8.36}; the clamped log valleys (x2 > 0)
can be stationary only because one task's gradient vanishes there.

Usage, from the repository root::

  python -m benchmarks.toy                          # every method, published step counts
  python -m benchmarks.toy --steps 2000 --methods pcgrad,equal_weight
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jmtl.balancers as balancers

LOWER = 5e-6
PARETO_X2 = -8.3552  # height of the Pareto set, as drawn in the CAGrad paper's figure
RESULTS = pathlib.Path(__file__).parent / "results"


class Setup(NamedTuple):
  starts: tuple[tuple[float, float], ...]
  steps: int
  lr: float
  first_loss_scale: float


SETUPS = {
    "cagrad": Setup(starts=((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)),
                    steps=100_000, lr=1e-3, first_loss_scale=1.0),
    "nash_mtl": Setup(starts=((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
                      steps=35_000, lr=1e-3, first_loss_scale=0.1),
}


def toy_losses(x: jax.Array, first_loss_scale: float = 1.0) -> jax.Array:
  """``[f1, f2]`` at ``x = (x1, x2)``."""
  x1, x2 = x[0], x[1]
  c1 = jnp.maximum(jnp.tanh(x2 / 2), 0.0)
  c2 = jnp.maximum(jnp.tanh(-x2 / 2), 0.0)
  log1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), LOWER)) + 6
  log2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), LOWER)) + 6
  square1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  square2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  f1 = log1 * c1 + square1 * c2
  f2 = log2 * c1 + square2 * c2
  return jnp.stack([first_loss_scale * f1, f2])


def min_norm_of_hull(jacobian: np.ndarray) -> float:
  """Norm of the min-norm point of conv{g1, g2} (closed form for two vectors)."""
  g1, g2 = np.asarray(jacobian, np.float64)
  difference = g1 - g2
  denominator = difference @ difference
  alpha = 0.5 if denominator == 0 else float(np.clip((g2 @ (g2 - g1)) / denominator, 0, 1))
  return float(np.linalg.norm(alpha * g1 + (1 - alpha) * g2))


# Method settings of the authors' toy code where they differ from the defaults. FAMO
# (Cranial-XIX/FAMO experiments/toy): loss lower bounds (-21 * scale, -21) through
# ``set_min_losses`` and gamma = 0 (run.sh: "the objective is not changing"); w_lr 0.025 is
# jmtl's default. Nash-MTL and MGDA run with their defaults (max_norm 1.0, 20 CCCP steps
# there; the official MGDA toy uses the min-norm solver without normalisation).
METHOD_HPARAMS = {
    "nash_mtl": {"famo": {"min_losses": (-21.0 * 0.1, -21.0), "gamma": 0.0}},
    "cagrad": {"famo": {"min_losses": (-21.0, -21.0), "gamma": 0.0}},
}


def make_runner(name: str, setup: Setup, steps: int, num_records: int, hparams=None):
  """A jitted ``starts [S, 2] -> (trajectories [S, R+1, 2], finals [S, 2])``."""
  balancer = balancers.get(name, num_tasks=2, **(hparams or {}))
  optimizer = optax.adam(setup.lr)
  every = max(1, steps // num_records)
  chunks, remainder = divmod(steps, every)

  def losses_and_jacobian(x):
    losses = toy_losses(x, setup.first_loss_scale)
    return losses, jax.jacrev(toy_losses)(x, setup.first_loss_scale)  # rows: task gradients

  def step(carry, _):
    x, balancer_state, optimizer_state = carry
    losses, jacobian = losses_and_jacobian(x)
    grads, balancer_state = balancer.update(jacobian, balancer_state, x, task_losses=losses)
    updates, optimizer_state = optimizer.update(grads, optimizer_state, x)
    return (optax.apply_updates(x, updates), balancer_state, optimizer_state), None

  def chunk(carry, _):
    carry, _ = jax.lax.scan(step, carry, None, length=every)
    return carry, carry[0]

  def trajectory(start):
    carry = (start, balancer.init(start), optimizer.init(start))
    carry, recorded = jax.lax.scan(chunk, carry, None, length=chunks)
    carry, _ = jax.lax.scan(step, carry, None, length=remainder)
    return jnp.concatenate([start[None], recorded, carry[0][None]]), carry[0]

  return jax.jit(jax.vmap(trajectory))


def run_method(name: str, setup: Setup, steps: int, tol: float, num_records: int = 400,
               hparams=None) -> dict:
  """Runs ``name`` from every start of ``setup``; a JSON-ready summary plus trajectories."""
  began = time.perf_counter()
  try:
    runner = make_runner(name, setup, steps, num_records, hparams)
  except ValueError as error:  # e.g. robust aggregators that need more than two tasks
    return {"needs": None, "skipped": str(error)}
  trajectories, finals = jax.block_until_ready(runner(jnp.asarray(setup.starts, jnp.float32)))
  finals = np.asarray(finals, np.float64)
  # Judged on the unscaled problem, so both setups share one criterion and threshold.
  jacobians = np.asarray(jax.vmap(jax.jacrev(toy_losses))(jnp.asarray(finals, jnp.float32)))
  losses = np.asarray(jax.vmap(toy_losses)(jnp.asarray(finals, jnp.float32)), np.float64)
  min_norms = [min_norm_of_hull(j) for j in jacobians]
  finite = bool(np.all(np.isfinite(finals)) and np.all(np.isfinite(min_norms)))
  stationary = [bool(norm < tol) for norm in min_norms]
  on_front = [s and bool(x[1] < 0) for s, x in zip(stationary, finals)]
  return {
      "needs": balancers.get(name, num_tasks=2).needs,
      "hparams": {key: list(value) if isinstance(value, tuple) else value
                  for key, value in (hparams or {}).items()},
      "runs": len(setup.starts),
      "pareto_stationary": sum(stationary),
      "on_front": sum(on_front),
      "finite": finite,
      "final_points": finals.tolist(),
      "final_losses": losses.tolist(),
      "min_norms": min_norms,
      "seconds": time.perf_counter() - began,
      "trajectories": np.asarray(trajectories, np.float64),
  }


def plot(results: dict, path: pathlib.Path) -> None:
  """Trajectories over the contours of the unscaled (f1 + f2) / 2, one panel per setup and method.

  Black dots: starts; red stars: final points; gray bar: the Pareto set. Titles count the
  Pareto-stationary runs.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  grid = np.linspace(-11, 11, 200)
  xs, ys = np.meshgrid(grid, grid)
  points = jnp.asarray(np.stack([xs.ravel(), ys.ravel()], axis=1), jnp.float32)
  mean_loss = np.asarray(jax.vmap(toy_losses)(points)).mean(axis=1).reshape(xs.shape)
  panels = [(setup, name, summary) for setup, section in results["setups"].items()
            for name, summary in section["methods"].items() if "trajectories" in summary]
  columns = min(6, max(1, len(panels)))
  rows = math.ceil(len(panels) / columns) if panels else 1
  figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
  for axis in axes.ravel():
    axis.set_axis_off()
  for axis, (setup, name, summary) in zip(axes.ravel(), panels):
    axis.set_axis_on()
    axis.contour(xs, ys, mean_loss, levels=15, cmap="viridis", linewidths=0.8)
    axis.plot([-7, 7], [PARETO_X2, PARETO_X2], color="gray", linewidth=4, alpha=0.6)
    for trajectory in summary["trajectories"]:
      axis.plot(trajectory[:, 0], trajectory[:, 1], color="tab:red", linewidth=1)
      axis.plot(*trajectory[0], "ko", markersize=3)
      axis.plot(*trajectory[-1], "r*", markersize=6)
    axis.set_title(f"{name} ({setup}) {summary['pareto_stationary']}/{summary['runs']}",
                   fontsize=8)
    axis.set_xlim(-11, 11)
    axis.set_ylim(-11, 11)
    axis.set_xticks([])
    axis.set_yticks([])
  figure.tight_layout()
  figure.savefig(path, dpi=60)
  plt.close(figure)


def print_table(results: dict) -> None:
  for setup, section in results["setups"].items():
    print(f"\n== {setup}: {section['steps']} steps, lr {section['lr']}, "
          f"Pareto-stationary = min-norm of conv(g1, g2) < {results['tol']}")
    for title, loss_level in (("gradient-level methods", False),
                              ("loss-level methods (bonus)", True)):
      rows = [(name, s) for name, s in section["methods"].items()
              if (s["needs"] == "losses") == loss_level]
      if not rows:
        continue
      print(f"-- {title}\n{'method':<22}{'needs':<10}{'stationary':>11}{'on front':>9}"
            f"{'median |d|':>12}{'finite':>8}{'seconds':>9}")
      for name, s in rows:
        if "skipped" in s:
          print(f"{name:<22}skipped: {s['skipped']}")
          continue
        print(f"{name:<22}{s['needs']:<10}{s['pareto_stationary']:>7}/{s['runs']:<3}"
              f"{s['on_front']:>7}/{s['runs']:<1}{np.median(s['min_norms']):>12.1e}"
              f"{str(s['finite']):>8}{s['seconds']:>9.1f}")


def _json_ready(value):
  """Non-finite floats become None (strict JSON); arrays are dropped from the summary."""
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
  if isinstance(value, list | tuple):
    return [_json_ready(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per run for every setup (default: the published counts)")
  parser.add_argument("--methods", default=None,
                      help="comma-separated balancer names (default: all registered)")
  parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated setups")
  parser.add_argument("--tol", type=float, default=1e-3, help="Pareto-stationarity threshold")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
  args = parser.parse_args(argv)

  methods = args.methods.split(",") if args.methods else list(balancers.names())
  unknown = sorted(set(methods) - set(balancers.names()))
  if unknown:
    parser.error(f"unknown methods {unknown}; valid: {', '.join(balancers.names())}")
  # Gradient-level methods first; the loss-level ones are the bonus section.
  methods.sort(key=lambda name: (_needs(name) == "losses", name))

  results = {"tol": args.tol, "setups": {}}
  for setup_name in args.setups.split(","):
    setup = SETUPS[setup_name]
    steps = args.steps or setup.steps
    section = {"steps": steps, "lr": setup.lr, "first_loss_scale": setup.first_loss_scale,
               "starts": [list(s) for s in setup.starts], "methods": {}}
    for name in methods:
      hparams = METHOD_HPARAMS.get(setup_name, {}).get(name)
      section["methods"][name] = run_method(name, setup, steps, args.tol, hparams=hparams)
      print(f"{setup_name}/{name}: done", flush=True)
    results["setups"][setup_name] = section

  print_table(results)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "toy.json").write_text(json.dumps(_json_ready(results), indent=1, allow_nan=False))
  plot(results, args.out / "toy.png")
  print(f"\nwrote {args.out / 'toy.json'} and {args.out / 'toy.png'}")
  return results


def _needs(name: str) -> str | None:
  """The method's ``needs`` with two tasks; None if it cannot be built for two tasks."""
  try:
    return balancers.get(name, num_tasks=2).needs
  except ValueError:
    return None


if __name__ == "__main__":
  main()

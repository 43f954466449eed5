"""The PyTorch half of benchmarks/references.py: LibMTL's and torchjd's methods on given Jacobians.

Runs in benchmarks/peers/.venv (spawned by references.py, never imported by jmtl)::

  python references_torch.py --cases cases.npz --methods methods.json --out peers.npz

``cases.npz`` holds, per case ``c``, ``c/jacobians`` ``[S, T, d]`` (S steps, float32) and
``c/losses`` ``[S, T]``; ``methods.json`` is a list of ``{"method", "library", "peer",
"hparams", "tasks"}`` (the peer's class name and keyword arguments, and the task counts it
runs on). Each (case, method, library) runs the S steps in order on ONE peer object (stateful
methods carry their state), in float32 and again, on a fresh object, in float64. Written per
run ``c/method/library/float32`` etc.: ``.../direction`` ``[S, d]`` and, when the peer exposes
them, ``.../weights`` ``[S, T]``; a peer that raises writes its message to ``.../error``.

Conventions are NOT normalised here: every array is what the peer itself produces (LibMTL's
``param.grad`` and returned weights, torchjd's aggregation and its weighting's weights).
references.py rescales them, so every convention sits in one visible table there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository: benchmarks._common is stdlib-only

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchjd import aggregation  # noqa: E402

from libmtl_import import libmtl_weighting  # noqa: E402
from run_torch import _LibMTLAdapter, _VectorModel, fixed_orders  # noqa: E402

RLW_DRAWS = 20000  # weight vectors drawn to compare RLW's distribution, not single draws


class TorchjdPeer:
  """A torchjd aggregator; weights from its weighting (then ``weights @ J``, so a stateful
  weighting advances once per step), or the aggregator's output alone when it has none."""

  def __init__(self, name: str, hparams: dict, num_tasks: int):
    if name == "NashMTL":
      hparams = {"n_tasks": num_tasks, **hparams}
    self.aggregator = getattr(aggregation, name)(**hparams)

  def step(self, jacobian: torch.Tensor, losses: torch.Tensor):
    del losses
    if not isinstance(self.aggregator, aggregation.WeightedAggregator):
      return self.aggregator(jacobian), None  # ConFIG's `weighting` is its preference, not this
    weights = self.aggregator.weighting(jacobian)
    return weights @ jacobian, weights


class LibMTLPeer:
  """A LibMTL weighting class on one shared vector ``p``: ``loss_t = J_t . p + L_t`` at p = 0,
  so the per-task gradients are J's rows and the loss values the given ones."""

  def __init__(self, name: str, hparams: dict, num_tasks: int, dimension: int):
    base = getattr(libmtl_weighting(), name)
    self.model = _VectorModel(dimension, num_tasks)
    self.method = type(f"LibMTL{name}", (_LibMTLAdapter, base), {})()
    self.method.setup_adapter(self.model)
    self.method.init_param()
    self.hparams = hparams

  def step(self, jacobian: torch.Tensor, losses: torch.Tensor):
    p = self.model.encoder.p
    p.data = torch.zeros_like(jacobian[0])
    p.grad = None
    task_losses = torch.stack([jacobian[t] @ p + losses[t] for t in range(len(jacobian))])
    weights = self.method.backward(task_losses, **self.hparams)
    weights = None if weights is None else torch.as_tensor(np.asarray(weights, np.float64))
    return p.grad.detach().clone(), weights


def make_peer(spec: dict, num_tasks: int, dimension: int):
  if spec["library"] == "torchjd":
    return TorchjdPeer(spec["peer"], spec["hparams"], num_tasks)
  return LibMTLPeer(spec["peer"], spec["hparams"], num_tasks, dimension)


def run(spec: dict, jacobians: np.ndarray, losses: np.ndarray, dtype) -> dict[str, np.ndarray]:
  """S steps on one peer object, in ``dtype`` (LibMTL allocates with the default dtype)."""
  previous = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  torch.manual_seed(0)
  try:
    _, num_tasks, dimension = jacobians.shape
    peer = make_peer(spec, num_tasks, dimension)
    directions, weights = [], []
    with fixed_orders():  # LibMTL's random.shuffle and torchjd's randperm become identities
      for jacobian, step_losses in zip(jacobians, losses):
        direction, step_weights = peer.step(torch.tensor(jacobian, dtype=dtype),
                                            torch.tensor(step_losses, dtype=dtype))
        directions.append(direction.detach().double().numpy())
        if step_weights is not None:
          weights.append(step_weights.detach().double().numpy())
  finally:
    torch.set_default_dtype(previous)
  out = {"direction": np.stack(directions)}
  if weights:
    out["weights"] = np.stack(weights)
  return out


def rlw_draws(spec: dict, num_tasks: int) -> np.ndarray:
  """``RLW_DRAWS`` weight vectors from the peer's random weighting (float32), ``[N, T]``."""
  torch.manual_seed(0)
  peer = make_peer(spec, num_tasks, 1)
  jacobian, losses = torch.ones(num_tasks, 1), torch.ones(num_tasks)
  return np.stack([peer.step(jacobian, losses)[1].double().numpy() for _ in range(RLW_DRAWS)])


def versions() -> dict[str, str]:
  import importlib.metadata as metadata
  return {name: metadata.version(name) for name in ("torch", "torchjd", "LibMTL", "numpy")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", required=True)
  parser.add_argument("--methods", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  torch.set_num_threads(1)
  methods = json.loads(pathlib.Path(args.methods).read_text())
  with np.load(args.cases) as data:
    arrays = {key: data[key] for key in data.files}
  cases = sorted({key.rsplit("/", 1)[0] for key in arrays})
  out = {"versions": np.array(json.dumps(versions()))}
  for spec in methods:
    prefix = f"{spec['method']}/{spec['library']}"
    if spec.get("distribution"):
      for num_tasks in spec["tasks"]:
        out[f"draws/T{num_tasks}/{prefix}"] = rlw_draws(spec, num_tasks)
      continue
    for case in cases:
      jacobians, losses = arrays[f"{case}/jacobians"], arrays[f"{case}/losses"]
      if jacobians.shape[1] not in spec["tasks"]:
        continue
      for dtype_name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        key = f"{case}/{prefix}/{dtype_name}"
        try:
          for field, value in run(spec, jacobians, losses, dtype).items():
            out[f"{key}/{field}"] = value
        except Exception as error:  # noqa: BLE001 - a peer's failure is a result to report
          out[f"{key}/error"] = np.array(f"{type(error).__name__}: {error}"[:300])
      print(f"{prefix} done", file=sys.stderr, flush=True)
  np.savez(args.out, **out)


if __name__ == "__main__":
  main()

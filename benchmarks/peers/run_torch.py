"""The PyTorch side of the peer comparison; runs in benchmarks/peers/.venv (torch, LibMTL, torchjd).

Spawned by ``compare.py``, never imported by jmtl. Three modes:

* ``--worker``: reads JSON commands on stdin, answers one JSON line each on stdout (logs go to
  stderr). ``setup`` builds every variant for one (T, layout) from the exported jmtl weights
  and batches and answers the first forward's losses; ``round`` runs, for every variant in
  turn, ``settle`` untimed steps and then ``steps`` timed ones and answers the times; ``quit`` ends. compare.py alternates these
  rounds with its own, so the two processes never run at the same time.
* ``--memory VARIANT``: builds that one variant, runs a few steps, prints peak RSS (MiB,
  VmHWM).
* ``--agreement JACOBIAN.npz``: PCGrad with a fixed task order on the given Jacobian through
  LibMTL's and torchjd's own code; prints both combined directions as JSON.

Variants: ``ew`` (mean loss, one backward), ``libmtl_{pcgrad,mgda,cagrad}`` (LibMTL's
weighting classes: T backward passes, then the method), ``torchjd_{pcgrad,mgda,cagrad,upgrad}``
(``mtl_backward`` + ``jac_to_grad``; multi-input: ``parallel_chunk_size=1``), ``rep_pcgrad`` (per-task gradients w.r.t. the pooled
representation, torchjd's PCGrad weighting on their Gram, one backward of the combination).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import Callable

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository: benchmarks._common is stdlib-only

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchjd import aggregation  # noqa: E402
from torchjd.autojac import jac_to_grad, mtl_backward  # noqa: E402

from benchmarks._common import peak_rss_mib  # noqa: E402
from libmtl_import import libmtl_weighting  # noqa: E402
from torch_model import MultiTaskModel, load_jmtl_params  # noqa: E402
from weights import load_params  # noqa: E402

VARIANTS = ("ew", "libmtl_pcgrad", "libmtl_mgda", "libmtl_cagrad", "torchjd_pcgrad",
            "torchjd_mgda", "torchjd_cagrad", "torchjd_upgrad", "rep_pcgrad")
CAGRAD_C = 0.5  # LibMTL's calpha default and torchjd's c: the paper's usual value


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def set_threads(num_threads: int, pin: bool) -> None:
  """Same intra-op threads (and with ``pin``, CPUs) as the jmtl process."""
  if pin:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:num_threads])
  torch.set_num_threads(num_threads)
  torch.set_num_interop_threads(1)


def load_batches(path: str, task_names, layout: str):
  """Same-input: one dict of tensors; multi-input: ``{task: dict}`` (keys ``task/field``)."""
  with np.load(path) as data:
    arrays = {key: data[key] for key in data.files}
  to_tensor = lambda a: torch.from_numpy(a).long() if a.dtype.kind in "iu" else torch.from_numpy(a)
  if layout == "same_input":
    return {key: to_tensor(value) for key, value in arrays.items()}
  return {name: {key.split("/", 1)[1]: to_tensor(value) for key, value in arrays.items()
                 if key.split("/", 1)[0] == name} for name in task_names}


class _LibMTLAdapter:
  """What LibMTL's weighting classes expect of the model they are mixed into."""

  def setup_adapter(self, model: MultiTaskModel):
    self.model = model
    self.task_num = len(model.task_names)
    self.device = torch.device("cpu")
    self.rep_grad = False

  def get_share_params(self):
    return self.model.encoder.parameters()

  def zero_grad_share_params(self):
    # Zeros, not None: LibMTL writes the combined gradient into param.grad.data.
    self.model.encoder.zero_grad(set_to_none=False)


def libmtl_method(name: str, model: MultiTaskModel):
  base = getattr(libmtl_weighting(), {"pcgrad": "PCGrad", "mgda": "MGDA", "cagrad": "CAGrad"}[name])
  method = type(f"LibMTL{base.__name__}", (_LibMTLAdapter, base), {})()
  method.setup_adapter(model)
  kwargs = {"mgda": {"mgda_gn": "none"}, "cagrad": {"calpha": CAGRAD_C, "rescale": 1}}.get(name, {})
  return lambda losses: method.backward(losses, **kwargs)


def torchjd_aggregator(name: str):
  return {"pcgrad": aggregation.PCGrad, "mgda": aggregation.MGDA, "upgrad": aggregation.UPGrad,
          "cagrad": lambda: aggregation.CAGrad(c=CAGRAD_C)}[name]()


class Variant:
  """One model + Adam + a step function that runs forward, backward and the update."""

  def __init__(self, name: str, params, shape: dict, task_names, batches, layout: str):
    torch.manual_seed(0)
    self.model = MultiTaskModel(task_names, vocab_size=shape["vocab_size"], width=shape["width"],
                                depth=shape["depth"], num_heads=shape["num_heads"],
                                mlp_width=shape["mlp_width"], max_length=shape["length"],
                                pooled_width=shape["width"], head_hidden=shape["head_hidden"],
                                num_labels=shape["num_labels"])
    load_jmtl_params(self.model, params)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
    self.name, self.batches, self.layout = name, batches, layout
    self.task_names = tuple(task_names)
    self._backward = self._make_backward(name)

  def features_and_losses(self):
    """Pooled features (one tensor, or one per task) and the T mean losses."""
    model = self.model
    if self.layout == "same_input":
      pooled = model.encoder(self.batches["input_ids"], self.batches["attention_mask"])
      return pooled, model.losses(pooled, self.batches)
    features, losses = [], []
    for name in self.task_names:
      batch = self.batches[name]
      pooled = model.encoder(batch["input_ids"], batch["attention_mask"])
      features.append(pooled)
      losses.extend(model.losses(pooled, batch, names=(name,)))
    return features, losses

  def _make_backward(self, name: str) -> Callable:
    kind, _, method = name.partition("_")
    if name == "ew":
      return lambda features, losses: (torch.stack(losses).mean()).backward()
    if kind == "libmtl":
      weigh = libmtl_method(method, self.model)
      return lambda features, losses: weigh(losses)
    if kind == "torchjd":
      aggregator = torchjd_aggregator(method)
      shared = list(self.model.encoder.parameters())
      # Same input: all T rows of the Jacobian in one vmapped backward (torchjd's default).
      # Multi-input: one backward per task, since a vmapped one would walk all T graphs for
      # every row (T^2 work); chunk size 1 was the faster of the two here (measured).
      chunk = None if self.layout == "same_input" else 1
      def backward(features, losses):
        mtl_backward(losses, features=features, parallel_chunk_size=chunk)
        jac_to_grad(shared, aggregator)
      return backward
    if name == "rep_pcgrad":
      if self.layout != "same_input":
        raise ValueError("rep_pcgrad needs one shared input")
      weighting = aggregation.PCGradWeighting()
      heads = list(self.model.heads.parameters())
      def backward(features, losses):
        # Gradients w.r.t. an intermediate tensor stop there: these walk the heads only.
        per_task = [torch.autograd.grad(loss, features, retain_graph=True)[0] for loss in losses]
        head_grads = torch.autograd.grad(torch.stack(losses).sum(), heads, retain_graph=True)
        for param, grad in zip(heads, head_grads):  # each head gets its own task's gradient
          param.grad = grad
        jacobian = torch.stack(per_task).reshape(len(per_task), -1)
        weights = weighting(jacobian @ jacobian.T)
        features.backward(torch.einsum("t,t...->...", weights, torch.stack(per_task)))
      return backward
    raise ValueError(f"unknown variant {name!r}")

  def step(self) -> list[float]:
    self.optimizer.zero_grad(set_to_none=True)
    features, losses = self.features_and_losses()
    self._backward(features, losses)
    self.optimizer.step()
    return [loss.item() for loss in losses]


def available(name: str, num_tasks: int, layout: str) -> str | None:
  """Why a variant cannot run here, or None."""
  if name == "libmtl_cagrad" and num_tasks != 3:
    return "LibMTL 1.1.5 CAGrad hard-codes 3 tasks (x.reshape(1, 3) in its objective)"
  if name == "rep_pcgrad" and layout != "same_input":
    return "rep-grad needs one shared input"
  return None


def build(config: dict):
  params = load_params(config["weights"])
  names = config["task_names"]
  batches = load_batches(config["batches"], names, config["layout"])
  variants, skipped = {}, {}
  for name in config["variants"]:
    reason = available(name, len(names), config["layout"])
    if reason:
      skipped[name] = reason
      continue
    variants[name] = Variant(name, params, config["shape"], names, batches, config["layout"])
  return variants, skipped


def first_losses(variant: Variant) -> list[float]:
  with torch.no_grad():
    _, losses = variant.features_and_losses()
  return [loss.item() for loss in losses]


def worker() -> None:
  variants: dict[str, Variant] = {}
  for line in sys.stdin:
    command = json.loads(line)
    if command["cmd"] == "setup":
      variants, skipped = build(command)
      losses = first_losses(next(iter(variants.values())))
      answer = {"variants": list(variants), "skipped": skipped, "first_losses": losses}
    elif command["cmd"] == "round":
      times = {}
      for name, variant in variants.items():
        times[name] = []
        for _ in range(command.get("settle", 0)):  # untimed (see compare.py, --settle)
          variant.step()
        for _ in range(command["steps"]):
          start = time.perf_counter()
          variant.step()
          times[name].append(time.perf_counter() - start)
      answer = {"times": times}
    elif command["cmd"] == "quit":
      return
    else:
      raise ValueError(f"unknown command {command!r}")
    print(json.dumps(answer), flush=True)


def memory(config: dict, name: str, steps: int) -> None:
  config = dict(config, variants=[name])
  variants, skipped = build(config)
  if skipped:
    print(json.dumps({"skipped": skipped[name]}))
    return
  for _ in range(steps):
    variants[name].step()
  print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


@contextlib.contextmanager
def fixed_orders():
  """LibMTL shuffles with ``random.shuffle``, torchjd with ``torch.randperm``: make both identity."""
  shuffle, randperm = random.shuffle, torch.randperm
  random.shuffle = lambda sequence: None
  torch.randperm = lambda n, *args, **kwargs: torch.arange(n)
  try:
    yield
  finally:
    random.shuffle, torch.randperm = shuffle, randperm


class _VectorModel(torch.nn.Module):
  """One shared parameter vector: loss_t = J_t . p makes the per-task gradients J's rows."""

  def __init__(self, dimension: int, num_tasks: int):
    super().__init__()
    self.encoder = torch.nn.Module()
    self.encoder.p = torch.nn.Parameter(torch.zeros(dimension))
    self.task_names = tuple(f"task{i}" for i in range(num_tasks))


def agreement(path: str) -> None:
  """PCGrad (fixed order) on the Jacobian in ``path`` through LibMTL and torchjd."""
  with np.load(path) as data:
    jacobian = torch.from_numpy(data["jacobian"].astype(np.float32))
  num_tasks, dimension = jacobian.shape
  model = _VectorModel(dimension, num_tasks)
  weigh = libmtl_method("pcgrad", model)
  with fixed_orders():
    losses = [jacobian[t] @ model.encoder.p for t in range(num_tasks)]
    weigh(losses)
    libmtl = model.encoder.p.grad.detach().clone()
    torchjd = aggregation.PCGrad()(jacobian)
  print(json.dumps({"libmtl": libmtl.tolist(), "torchjd": torchjd.tolist()}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--pin", action="store_true", help="restrict to the first --threads CPUs")
  parser.add_argument("--worker", action="store_true")
  parser.add_argument("--memory", metavar="VARIANT")
  parser.add_argument("--config", help="JSON config (memory mode)")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--agreement", metavar="JACOBIAN_NPZ")
  args = parser.parse_args()
  set_threads(args.threads, args.pin)
  if args.worker:
    worker()
  elif args.memory:
    memory(json.loads(pathlib.Path(args.config).read_text()), args.memory, args.steps)
  elif args.agreement:
    agreement(args.agreement)
  else:
    parser.error("pick --worker, --memory or --agreement")


if __name__ == "__main__":
  main()

"""Compiled steps for one device, ``jax.pmap``, and ``jax.jit`` over a ``Mesh``.

All three run the same pure ``train_step`` and reach the same parameters: under pmap the
step sums per-task gradients across devices itself; under the mesh XLA inserts the
all-reduce, because the batch is one global array split over the ``data`` axis.

Each layout has two variants of the step, compiled on first use: one for batches in which
every task has a labelled unit (the balancer is the T-task method alone) and one for
batches that may lack a task (the balancer gets the presence mask and holds a solver for
every count of present tasks, T + 1 of them). The host picks per batch from the label masks
(`host_every_task_present`, NumPy, no wait for the device); a multi-process run, whose
processes each see part of the batch, always takes the second. Measured on the grad_engine
model at T = 64: MGDA's whole step compiled in 104 s with the mask and 16 s without (EW's in
13-18.5 s; benchmarks/results/grad_engine_large.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jmtl.balancers import Balancer
from jmtl.gradients import host_every_task_present
from jmtl.models.protocol import MultiTaskProtocol
from jmtl.train.state import TrainState
from jmtl.train.step import GradMode, train_step

Parallelism = Literal["none", "pmap", "sharded"]
AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D data mesh over all (global) devices, with automatic sharding propagation."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"num_devices={n} (config key train.num_devices): a run of "
                     f"{jax.process_count()} processes uses all {len(devices)} devices; use 0")
  return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


@dataclasses.dataclass
class CompiledStep:
  """A train step bound to a parallel layout, with helpers to move data into that layout.

  ``state = step.place_state(state)``, then ``state, metrics = step(state, step.place_batch(b))``
  (the state is donated), and ``step.gather_state(state)`` for a single-device copy.
  """

  parallelism: Parallelism
  num_devices: int
  mesh: jax.sharding.Mesh | None
  _fn: Any  # any batch: absent tasks are left out of balancing (the presence mask)
  _fn_every_task_present: Any  # batches in which every task has a labelled unit
  _model: MultiTaskProtocol

  def __call__(self, state: TrainState, batch):
    return self.jitted_for(batch)(state, batch)

  def jitted_for(self, batch):
    """The compiled step this batch runs: the every-task-present one when the host sees
    every task labelled in it, else the one that leaves absent tasks out."""
    if host_every_task_present(self._model, batch):
      return self._fn_every_task_present
    return self._fn

  def place_state(self, state: TrainState) -> TrainState:
    if self.parallelism == "pmap":  # one replica per device; pmap splits the leading axis
      # Through host arrays: a restored state may carry any sharding, pmap wants its own.
      return jax.tree.map(
          lambda x: np.broadcast_to(np.asarray(x), (self.num_devices, *np.shape(x))), state)
    if self.parallelism == "sharded":
      return jax.device_put(state, NamedSharding(self.mesh, P()))
    return state

  def place_batch(self, batch):
    if self.parallelism == "pmap":
      def split(x):
        if x.shape[0] % self.num_devices:
          raise ValueError(f"batch size {x.shape[0]} does not split over {self.num_devices} devices")
        return np.reshape(x, (self.num_devices, x.shape[0] // self.num_devices, *x.shape[1:]))
      return jax.tree.map(split, batch)
    if self.parallelism == "sharded":
      sharding = NamedSharding(self.mesh, P(AXIS))
      if jax.process_count() > 1:  # each process holds its own rows of the global batch
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
      return jax.device_put(batch, sharding)
    return batch

  def local_rows(self, batch_size: int) -> list[int] | None:
    """The rows of a global batch of ``batch_size`` this process feeds, in the order
    ``place_batch`` expects them (None: all, as in every single-process run)."""
    if self.parallelism != "sharded" or jax.process_count() == 1:
      return None
    if batch_size % self.num_devices:
      raise ValueError(f"a batch of {batch_size} rows does not split over the run's "
                       f"{self.num_devices} devices (config key data.batch_size)")
    indices = NamedSharding(self.mesh, P(AXIS)).addressable_devices_indices_map((batch_size,))
    return sorted({row for (rows,) in indices.values() for row in range(batch_size)[rows]})

  def gather_state(self, state: TrainState) -> TrainState:
    """The state as single-device arrays (pmap: the first replica)."""
    if self.parallelism == "pmap":
      return jax.tree.map(lambda x: x[0], state)
    return state

  def unreplicate_metrics(self, metrics):
    return jax.tree.map(lambda x: x[0], metrics) if self.parallelism == "pmap" else metrics


def make_train_step(model: MultiTaskProtocol, balancer: Balancer,
                    optimizer: optax.GradientTransformation, *, grad_mode: GradMode = "exact",
                    parallelism: Parallelism = "none", num_devices: int | None = None,
                    dropout: bool = True, log_cosines: bool = True,
                    donate: bool = True, trainable=None) -> CompiledStep:
  """A compiled, state-donating train step for the chosen parallel layout.

  ``model``: ``MultiTaskModel`` or any model implementing ``jmtl.models.protocol``.
  ``trainable``: None, or a pytree of Python bools over the params (``optim.trainable_mask``),
  static: frozen parameters are constants to the balancer and get zero gradients.
  """
  if jax.process_count() > 1 and parallelism != "sharded":
    raise ValueError(f"parallelism={parallelism!r} (config key train.parallelism) would train "
                     f"each of the {jax.process_count()} processes alone: a multi-process run "
                     "needs 'sharded'")
  kwargs = dict(model=model, balancer=balancer, optimizer=optimizer, grad_mode=grad_mode,
                dropout=dropout, log_cosines=log_cosines, trainable=trainable)
  donate_argnums = (0,) if donate else ()
  def variants(compile_step):  # CompiledStep's two fields, each compiled on first use
    return dict(_fn=compile_step(functools.partial(train_step, **kwargs)),
                _fn_every_task_present=compile_step(
                    functools.partial(train_step, every_task_present=True, **kwargs)))
  if parallelism == "none":
    fns = variants(lambda fn: jax.jit(fn, donate_argnums=donate_argnums))
    return CompiledStep("none", 1, None, _model=model, **fns)
  if parallelism == "pmap":
    n = num_devices or jax.local_device_count()
    fns = variants(lambda fn: jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS,
                                       donate_argnums=donate_argnums,
                                       devices=jax.local_devices()[:n]))
    return CompiledStep("pmap", n, None, _model=model, **fns)
  if parallelism == "sharded":
    mesh = make_mesh(num_devices)
    replicated = NamedSharding(mesh, P())
    fns = variants(lambda fn: jax.jit(fn, donate_argnums=donate_argnums,
                                      out_shardings=(replicated, replicated)))
    return CompiledStep("sharded", mesh.size, mesh, _model=model, **fns)
  raise ValueError(f"unknown parallelism {parallelism!r}: use 'none', 'pmap' or 'sharded'")


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           local_devices: int | None = None) -> None:
  """Joins a multi-process run (one process per host) before any other JAX call.

  Afterwards ``parallelism="sharded"`` spans every process's devices, and each process
  passes only its own rows of the global batch to ``CompiledStep.place_batch``.
  ``local_devices`` sets the CPU device count per process (for runs on one machine).
  """
  if local_devices:
    jax.config.update("jax_num_cpu_devices", local_devices)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)

"""Joining a multi-process (multi-host) run: ``jmtl train``'s flags, JAX's environment
variables, and the cluster detection of ``jax.distributed.initialize``.

``jmtl train`` joins a run when ``--coordinator_address``, ``--num_processes`` or
``--process_id`` is given (each falls back on ``$JAX_COORDINATOR_ADDRESS``,
``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``), or with ``--distributed``, which lets JAX detect
what is not given from the cluster (SLURM, Open MPI, a Cloud TPU pod slice, Kubernetes).
``resolve`` checks the values before JAX starts; ``join`` calls ``jax.distributed.initialize``.

In a joined run every process builds the same model and steps together over one mesh of all
processes' devices (``train.parallelism='sharded'``); each reads only its rows of the global
batch; every process takes part in Orbax saves and restores; process 0 alone writes the
run's files (``run.json``, ``events.jsonl``, ``metrics.jsonl``, ``results.json``) and prints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Callable, TypeVar

from jmtl.config import ConfigError

# Field -> (flag, environment variable).
NAMES = {"coordinator_address": ("--coordinator_address", "JAX_COORDINATOR_ADDRESS"),
         "num_processes": ("--num_processes", "JAX_NUM_PROCESSES"),
         "process_id": ("--process_id", "JAX_PROCESS_ID")}
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Request:
  """What to join; a field left None is detected by JAX from the cluster (``detect``)."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  detect: bool
  origin: Mapping[str, str]  # field -> the flag or $VARIABLE it came from


def resolve(flags: Mapping[str, object], detect: bool = False,
            environ: Mapping[str, str] = os.environ) -> Request | None:
  """The run to join from ``flags`` (``NAMES``' fields; None = not given) and ``environ``, or
  None for a single-process run. A value that cannot work is a ConfigError naming its flag
  (or variable)."""
  values, origin = {}, {}
  for field, (flag, variable) in NAMES.items():
    value = flags.get(field)
    origin[field] = flag
    if value is None and environ.get(variable, "").strip():
      value, origin[field] = environ[variable].strip(), f"${variable}"
    if value is not None and field != "coordinator_address":
      try:
        value = int(value)
      except ValueError:
        raise ConfigError(f"{origin[field]} {value!r}: expected an integer") from None
    values[field] = value
  address, count, index = values.values()
  name = lambda field: origin[field]
  if address is None and count is None and index is None and not detect:
    return None
  if address is not None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ConfigError(f"{name('coordinator_address')} {address!r}: expected HOST:PORT "
                        "(process 0's address and a free port, the same for every process)")
  if count is not None and count < 1:
    raise ConfigError(f"{name('num_processes')} {count}: must be at least 1")
  if index is not None and (index < 0 or (count is not None and index >= count)):
    allowed = f"0..{count - 1} (for {name('num_processes')} {count})" if count else ">= 0"
    raise ConfigError(f"{name('process_id')} {index} is out of range: process ids are {allowed}")
  if not detect:
    if count is None:
      raise ConfigError(f"{name('process_id') if index is not None else name('coordinator_address')}"
                        f" is set, so this is one process of a run: give the number of processes "
                        f"with --num_processes (or $JAX_NUM_PROCESSES)")
    if count == 1 and address is None:
      return None  # one process: nothing to join
    if address is None:
      raise ConfigError(f"{name('num_processes')} {count} needs the coordinator: pass "
                        "--coordinator_address HOST:PORT (or set $JAX_COORDINATOR_ADDRESS), "
                        "or --distributed to detect it on SLURM or a TPU pod slice")
    if index is None:
      raise ConfigError(f"{name('num_processes')} {count} needs this process's id: pass "
                        "--process_id (0 on the coordinator's host) or set $JAX_PROCESS_ID")
  return Request(address, count, index, detect, origin)


def join(request: Request) -> None:
  """``jax.distributed.initialize`` with ``request``; before any other JAX computation."""
  import jax
  try:
    jax.distributed.initialize(coordinator_address=request.coordinator_address,
                               num_processes=request.num_processes,
                               process_id=request.process_id)
  except ValueError as e:  # what cluster detection could not fill in
    message = str(e)
    missing = next((f for f, words in (("coordinator_address", "coordinator"),
                                       ("num_processes", "Number of processes"),
                                       ("process_id", "process id"))
                    if words in message), None)
    if missing is None:
      raise ConfigError(f"joining the distributed run failed: {message}") from None
    flag, variable = NAMES[missing]
    raise ConfigError(f"--distributed: JAX detected no cluster (SLURM, Open MPI, Cloud TPU, "
                      f"Kubernetes) that gives {missing}; pass {flag} (or set ${variable})"
                      ) from None


def process_index() -> int:
  import jax
  return jax.process_index()


def is_primary() -> bool:
  """True in a single-process run and in process 0 of a multi-process one: the process that
  writes the run's files and prints."""
  return process_index() == 0


def primary_first(fn: Callable[[], T]) -> T:
  """``fn()`` on process 0, then on the others: what process 0 builds and caches on the
  shared file system (the tokenized suite), the others read instead of building it again."""
  import jax
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  result = fn() if is_primary() else None
  multihost_utils.sync_global_devices("jmtl: process 0 built the data")
  return fn() if not is_primary() else result


def shutdown() -> None:
  """Leaves the distributed run (every process at the same point), if one was joined."""
  import jax
  if jax.process_count() > 1:
    jax.distributed.shutdown()

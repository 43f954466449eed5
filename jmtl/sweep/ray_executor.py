"""The Ray executor (``pip install 'jmtl[ray]'``): each run a Ray task with its CPU/GPU
request, on a local ``ray.init()`` or the cluster ``RAY_ADDRESS`` names. A task runs the
same ``jmtl train`` subprocess as the local executor, so results do not depend on it; run
directories must be on storage every node sees.
"""

from __future__ import annotations

from jmtl.config import ConfigError
from jmtl.sweep.executors import run_subprocess


class RayExecutor:

  def __init__(self, workers: int = 1, *, cpus_per_run: float = 1, gpus_per_run: float = 0):
    try:
      import ray
    except ImportError:
      raise ConfigError("the ray executor needs Ray: pip install 'jmtl[ray]'") from None
    self._ray = ray
    self._started_ray = not ray.is_initialized()
    if self._started_ray:
      ray.init()  # RAY_ADDRESS (if set) joins an existing cluster
    self.capacity = workers
    self._remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run,
                              max_retries=0)(run_subprocess)
    self._refs: dict = {}

  def submit(self, key: str, command: list[str], log_path: str) -> None:
    self._refs[self._remote.remote(command, log_path)] = key

  def running(self) -> int:
    return len(self._refs)

  def wait(self):
    done, _ = self._ray.wait(list(self._refs), num_returns=1)
    return [(self._refs.pop(ref), self._ray.get(ref)) for ref in done]

  def interrupt(self):
    """Cancels every task (its subprocess gets Ctrl-C and saves a checkpoint); runs that
    ended anyway are returned, the others stay 'running' and re-run next time."""
    for ref in self._refs:
      self._ray.cancel(ref)
    finished = []
    for ref, key in list(self._refs.items()):
      try:
        finished.append((key, self._ray.get(ref)))
      except (self._ray.exceptions.TaskCancelledError, self._ray.exceptions.RayTaskError):
        pass
    self._refs.clear()
    return finished

  def close(self) -> None:
    if self._started_ray:
      self._ray.shutdown()

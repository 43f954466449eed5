"""The Ray executor (``pip install 'jmtl[ray]'``): each run a Ray task with its CPU/GPU
request, on a local ``ray.init()`` or the cluster ``RAY_ADDRESS`` names. A task runs the
same ``jmtl train`` subprocess as the local executor, so results do not depend on it; run
directories must be on storage every node sees.
"""

from __future__ import annotations

from jmtl.config import ConfigError
from jmtl.sweep.executors import run_subprocess

try:
  import ray
except ImportError:
  ray = None


class RayExecutor:

  def __init__(self, workers: int = 1, *, cpus_per_run: float = 1, gpus_per_run: float = 0):
    if ray is None:
      raise ConfigError("the ray executor needs Ray: pip install 'jmtl[ray]'")
    if not ray.is_initialized():
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
    done, _ = ray.wait(list(self._refs), num_returns=1)
    return [(self._refs.pop(ref), ray.get(ref)) for ref in done]

  def interrupt(self):
    for ref in self._refs:
      ray.cancel(ref)  # KeyboardInterrupt in the task: its subprocess gets killed
    finished = []
    for ref, key in list(self._refs.items()):
      try:
        finished.append((key, ray.get(ref)))
      except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
        pass  # recorded as still running: the next sweep re-runs it from its checkpoints
    self._refs.clear()
    return finished

  def close(self) -> None:
    pass

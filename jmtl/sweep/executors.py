"""Executors: where a sweep's runs execute. Every run is its own ``jmtl train`` subprocess
(the same command line under every executor, so a result cannot depend on it), so a crash
or out-of-memory kill of one run stops nothing else, and a re-run resumes it from its
checkpoints.

An executor has ``capacity`` (runs at once), ``submit(key, command, log_path)``,
``wait() -> [(key, Outcome)]`` (blocks until at least one run ends), ``running()``,
``interrupt()`` (Ctrl-C to every run: each saves a checkpoint and stops) and ``close()``.
"""

from __future__ import annotations

import concurrent.futures
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import NamedTuple

EXECUTORS = ("local", "ray")
TAIL_LINES = 20
PID_FILE = "sweep_run.pid"  # present while the run's process lives


def live_run_pid(workdir: str) -> int | None:
  """The pid of a run process still working in ``workdir`` (say, left by a sweep that was
  killed with SIGKILL), else None."""
  try:
    with open(os.path.join(workdir, PID_FILE)) as f:
      pid = int(f.read().strip())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      alive = workdir.encode() in f.read()
  except (OSError, ValueError):
    return None
  return pid if alive else None


class Outcome(NamedTuple):
  returncode: int
  seconds: float
  peak_rss_mb: float | None  # the run process's peak resident memory (host RAM)
  error_tail: str  # the log's last lines when the run failed


def run_subprocess(command: list[str], log_path: str, on_start=None) -> Outcome:
  """Runs ``command`` with its output appended to ``log_path``; waits with ``wait4`` to get
  the child's own peak RSS."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  start = time.perf_counter()
  with open(log_path, "a") as log:
    log.write(f"\n$ {shlex.join(command)}\n")
    log.flush()
    offset = log.tell()
    # Its own process group: a Ctrl-C at the terminal reaches only the sweep, which forwards
    # exactly one SIGINT (a second one could cut the run's last checkpoint save short).
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, process_group=0)
    pid_file = os.path.join(os.path.dirname(log_path), PID_FILE)
    with open(pid_file, "w") as f:
      f.write(str(process.pid))
    if on_start is not None:
      on_start(process)
    try:
      _, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # a cancelled Ray task: stop the run as Ctrl-C would, then go
      process.send_signal(signal.SIGINT)
      process.wait()
      raise
    process.returncode = os.waitstatus_to_exitcode(status)
    os.remove(pid_file)
  tail = ""
  if process.returncode != 0:
    with open(log_path, errors="replace") as log:
      log.seek(offset)
      tail = "\n".join(log.read().strip().splitlines()[-TAIL_LINES:])
  return Outcome(process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, tail)


class LocalExecutor:
  """``workers`` runs at once on this machine (threads that each wait on one subprocess)."""

  def __init__(self, workers: int = 1):
    if workers < 1:
      raise ValueError(f"--workers must be at least 1, got {workers}")
    self.capacity = workers
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sweep")
    self._futures: dict[concurrent.futures.Future, str] = {}
    self._processes: dict[str, subprocess.Popen] = {}
    self._lock = threading.Lock()
    self._stopping = False

  def submit(self, key: str, command: list[str], log_path: str) -> None:
    def started(process):
      with self._lock:
        self._processes[key] = process
        if self._stopping:  # started just as the sweep was interrupted
          process.send_signal(signal.SIGINT)
    future = self._pool.submit(run_subprocess, command, log_path, started)
    self._futures[future] = key

  def running(self) -> int:
    return len(self._futures)

  def wait(self) -> list[tuple[str, Outcome]]:
    done, _ = concurrent.futures.wait(self._futures,
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    finished = []
    for future in done:
      key = self._futures.pop(future)
      with self._lock:
        self._processes.pop(key, None)
      finished.append((key, future.result()))
    return finished

  def interrupt(self) -> list[tuple[str, Outcome]]:
    with self._lock:
      self._stopping = True
      for process in self._processes.values():
        if process.returncode is None:
          process.send_signal(signal.SIGINT)
    finished = []
    while self._futures:
      finished += self.wait()
    return finished

  def close(self) -> None:
    self._pool.shutdown(wait=True)


def make_executor(name: str, workers: int, *, cpus_per_run: float = 1,
                  gpus_per_run: float = 0):
  """``cpus_per_run``/``gpus_per_run``: each run's resource request (Ray only)."""
  if name == "local":
    return LocalExecutor(workers)
  if name == "ray":
    from jmtl.sweep.ray_executor import RayExecutor
    return RayExecutor(workers, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
  raise ValueError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")

"""``run_sweep``: runs a grid's runs on an executor, keeping ``sweep.json`` current.

Finished runs are skipped; interrupted or failed ones run again and resume from their own
checkpoints; a failed run is recorded with its error tail and the others go on. Single-task
baseline runs go first: a multi-task run starts once the baselines it reads exist.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from jmtl.config import ConfigError
from jmtl.interrupts import interrupt_on_signals
from jmtl.sweep import manifest as manifest_lib
from jmtl.sweep.executors import live_run_pid
from jmtl.sweep.grid import Grid, Run
from jmtl.sweep.manifest import DONE, FAILED, PENDING, RUNNING, Manifest

LOG_FILE = "log.txt"
EXIT_INTERRUPTED = 130


def run_sweep(grid: Grid, sweep_dir: str, executor, *, extend: bool = False,
              out=None) -> dict[str, int]:
  """Runs what is not done yet; returns the final ``{status: count}`` of this grid's runs."""
  out = out or sys.stdout
  if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
    raise ConfigError(f"sweep directory {sweep_dir!r} is a file")
  os.makedirs(sweep_dir, exist_ok=True)
  lock = manifest_lib.lock(sweep_dir)
  try:
    runs = grid.runs()
    manifest = Manifest.open(sweep_dir, grid, runs, extend=extend)
    for run in runs:
      pid = live_run_pid(run.workdir(sweep_dir))
      if pid is not None:
        raise ConfigError(f"run {run.run_id} is still running as pid {pid} (left by a sweep "
                          "that was killed); wait for it to end or stop it, then re-run")
    return _Scheduler(runs, manifest, executor, sweep_dir, grid.config, out).run()
  finally:
    lock.close()


class _Scheduler:

  def __init__(self, runs: list[Run], manifest: Manifest, executor, sweep_dir: str,
               config_path: str, out):
    self.runs, self.manifest, self.executor = runs, manifest, executor
    self.sweep_dir, self.config_path, self.out = sweep_dir, config_path, out
    self.by_id = {run.run_id: run for run in runs}

  def say(self, event: str) -> None:
    counts = self.manifest.counts(self.by_id)
    print(f"[sweep {counts[DONE]}/{len(self.runs)} done, {counts[RUNNING]} running, "
          f"{counts[FAILED]} failed] {event}", file=self.out, flush=True)

  def run(self) -> dict[str, int]:
    pending = [run for run in self.runs if self.manifest.status(run.run_id) != DONE]
    self.say(f"{len(self.runs) - len(pending)} run(s) already done, {len(pending)} to run "
             f"in {os.path.abspath(self.sweep_dir)}")
    for run in pending:
      self.manifest.update(run.run_id, status=PENDING)
    # SIGINT re-armed too: a sweep started in the background by a script inherits it ignored.
    with interrupt_on_signals():
      self._run_all(pending)
    return self.manifest.counts(self.by_id)

  def _run_all(self, pending: list[Run]) -> None:
    try:
      while pending or self.executor.running():
        pending = self._start_ready(pending)
        if not self.executor.running():
          break  # nothing can start: only runs whose baselines failed were left
        for run_id, outcome in self.executor.wait():
          self._record(self.by_id[run_id], outcome)
    except KeyboardInterrupt:
      self.say("interrupted: stopping the running runs (each saves a checkpoint)")
      for run_id, outcome in self.executor.interrupt():
        self._record(self.by_id[run_id], outcome)
      raise
    finally:
      self.executor.close()

  def _start_ready(self, pending: list[Run]) -> list[Run]:
    waiting = []
    for run in pending:
      dependency = run.baselines_run and self.manifest.status(run.baselines_run)
      if dependency == FAILED:
        self.manifest.update(run.run_id, status=FAILED, returncode=None,
                             error=f"not started: its baselines run {run.baselines_run} failed")
        self.say(f"skipped {run.run_id}: its baselines run failed")
      elif dependency not in (None, DONE) or self.executor.running() >= self.executor.capacity:
        waiting.append(run)
      else:
        workdir = run.workdir(self.sweep_dir)
        self.executor.submit(run.run_id, run.command(self.sweep_dir, self.config_path),
                             os.path.join(workdir, LOG_FILE))
        self.manifest.update(run.run_id, status=RUNNING, started=time.time())
        self.say(f"started {run.run_id}")
    return waiting

  def _record(self, run: Run, outcome) -> None:
    done = outcome.returncode == 0 and os.path.isfile(
        os.path.join(run.workdir(self.sweep_dir), run.result_file))
    interrupted = outcome.returncode in (EXIT_INTERRUPTED, -signal.SIGINT)
    status = DONE if done else PENDING if interrupted else FAILED
    record = self.manifest.runs[run.run_id]
    peak = max(filter(None, (record.get("peak_rss_mb"), outcome.peak_rss_mb)), default=None)
    self.manifest.update(run.run_id, status=status, returncode=outcome.returncode,
                         seconds=record.get("seconds", 0.0) + outcome.seconds,
                         peak_rss_mb=peak, error=outcome.error_tail if status == FAILED else "")
    if status == FAILED:
      last = outcome.error_tail.splitlines()[-1] if outcome.error_tail else ""
      self.say(f"FAILED {run.run_id} (exit {outcome.returncode}): {last} "
               f"[log: {os.path.join(run.workdir(self.sweep_dir), LOG_FILE)}]")
    else:
      self.say(f"{'finished' if done else 'interrupted'} {run.run_id} "
               f"({outcome.seconds:.0f} s)")

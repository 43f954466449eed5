"""Stopping a run by signal: SIGINT (Ctrl-C) and SIGTERM become ``KeyboardInterrupt``.

The training loop turns a ``KeyboardInterrupt`` into a clean stop (the in-flight checkpoint
save completes; rerunning the command resumes), and the sweep stops its runs with SIGINT.
SIGINT is re-armed explicitly because a process started in the background by a
non-interactive shell (``jmtl train ... &`` in a script, a CI job) inherits it *ignored*:
Ctrl-C, or a sweep's stop, then never reached the run, which trained on to its last step.
SIGTERM is what batch schedulers (SLURM preemption, Kubernetes) send before SIGKILL.
"""

from __future__ import annotations

import contextlib
import signal


def raise_interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupt_on_signals():
  """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread;
  the previous handlers come back after it (``jmtl.cli.main`` is also called in-process)."""
  previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, raise_interrupt)
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)

"""Stopping a run by signal: SIGINT (Ctrl-C) and SIGTERM become ``KeyboardInterrupt``.

The training loop turns a ``KeyboardInterrupt`` into a clean stop (the in-flight checkpoint
save completes; rerunning the command resumes), and the sweep stops its runs with SIGINT.
SIGINT is re-armed explicitly because a process started in the background by a
non-interactive shell (``jmtl train ... &`` in a script, a CI job) inherits it *ignored*:
Ctrl-C, or a sweep's stop, then never reached the run, which trained on to its last step.
SIGTERM is what batch schedulers (SLURM preemption, Kubernetes) send before SIGKILL.
"""

from __future__ import annotations

import signal


def raise_interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
  """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread from now on."""
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, raise_interrupt)

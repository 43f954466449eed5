"""Stopping a run by signal: SIGINT (Ctrl-C) and SIGTERM become ``KeyboardInterrupt``.

The training loop turns a ``KeyboardInterrupt`` into a clean stop (the in-flight checkpoint
save completes; rerunning the command resumes), and the sweep stops its runs with SIGINT.
SIGINT is re-armed explicitly because a process started in the background by a
non-interactive shell (``jmtl train ... &`` in a script, a CI job) inherits it *ignored*:
Ctrl-C, or a sweep's stop, then never reached the run, which trained on to its last step.
SIGTERM is what batch schedulers (SLURM preemption, Kubernetes) send before SIGKILL.

A ``KeyboardInterrupt`` raised while Python runs a garbage-collection callback (JAX registers
one) or a ``__del__`` is printed as "Exception ignored" and swallowed: the one SIGINT a sweep
sends was lost that way and the run trained to its last step (seen in CI). So the handlers also
record the signal, and ``raise_if_requested`` (the training loop calls it every step) raises
the interrupt again if it never arrived.
"""

from __future__ import annotations

import contextlib
import signal


_requested: int | None = None  # the last SIGINT/SIGTERM not yet acted on


def raise_interrupt(signum, frame):
  global _requested
  _requested = signum
  raise KeyboardInterrupt(f"signal {signum}")


def raise_if_requested() -> None:
  """Raises the ``KeyboardInterrupt`` of a signal whose first one was swallowed."""
  global _requested
  if _requested is not None:
    signum, _requested = _requested, None
    raise KeyboardInterrupt(f"signal {signum}")


def clear() -> None:
  """The interrupt was acted on (a caller caught the ``KeyboardInterrupt``)."""
  global _requested
  _requested = None


@contextlib.contextmanager
def interrupt_on_signals():
  """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread;
  the previous handlers come back after it (``jmtl.cli.main`` is also called in-process)."""
  previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
  clear()
  signal.signal(signal.SIGINT, raise_interrupt)
  signal.signal(signal.SIGTERM, raise_interrupt)
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)

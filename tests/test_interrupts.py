"""jmtl.interrupts: a signal whose KeyboardInterrupt Python swallows is raised again."""

import gc
import os
import signal

import pytest

from jmtl import interrupts


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing
def test_sigint_swallowed_by_a_gc_callback_is_raised_at_the_next_check():
  """JAX registers a gc callback; a KeyboardInterrupt raised while one runs is printed as
  "Exception ignored" and lost (a sweep's one SIGINT was, and the run trained to the end).
  The handler records the signal, so the training loop's per-step check raises it, once."""
  delivered = []

  def callback(phase, info):
    if phase == "start" and not delivered:
      delivered.append(True)
      os.kill(os.getpid(), signal.SIGINT)  # handled here, inside the gc callback

  with interrupts.interrupt_on_signals():
    gc.callbacks.append(callback)
    try:
      gc.collect()  # the KeyboardInterrupt from inside the callback does not come out
    finally:
      gc.callbacks.remove(callback)
    assert delivered
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_requested()
    interrupts.raise_if_requested()  # acted on: nothing pending any more


def test_a_caught_interrupt_is_not_raised_twice():
  with interrupts.interrupt_on_signals():
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary for the handler
    interrupts.clear()  # what the training loop does when it catches it
    interrupts.raise_if_requested()

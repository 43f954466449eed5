"""Prefetching on a background thread: the same batches, and checkpoint states that are the
state after the last batch handed out (not after the last one made ahead)."""

import threading

import numpy as np
import pytest

from jmtl.data.feed.prefetch import Prefetch


class Counter:
  """A stand-in with the TrainIterator's contract: batches a pure function of the position."""

  def __init__(self, fail_at=None):
    self.position, self.fail_at = 0, fail_at

  def __next__(self):
    if self.position == self.fail_at:
      raise ValueError(f"bad record at {self.position}")
    self.position += 1
    return {"x": np.full((2,), self.position)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_and_the_state_of_the_last_one_handed_out(depth):
  prefetched = Prefetch(Counter(), depth)
  try:
    seen = [int(next(prefetched)["x"][0]) for _ in range(5)]
    assert seen == [1, 2, 3, 4, 5]
    assert prefetched.get_state() == {"position": 5}  # the thread may be at 5 + depth
    prefetched.set_state({"position": 2})
    assert [int(next(prefetched)["x"][0]) for _ in range(2)] == [3, 4]
    assert prefetched.get_state() == {"position": 4}
  finally:
    prefetched.close()


def test_an_error_making_a_batch_reaches_the_caller_after_the_good_ones():
  prefetched = Prefetch(Counter(fail_at=2), 4)
  try:
    assert [int(next(prefetched)["x"][0]) for _ in range(2)] == [1, 2]
    with pytest.raises(ValueError, match="bad record at 2"):
      next(prefetched)
  finally:
    prefetched.close()


def test_close_stops_the_thread_and_a_bad_depth_is_refused():
  before = threading.active_count()
  prefetched = Prefetch(Counter(), 2)
  next(prefetched)
  prefetched.close()
  prefetched.close()
  assert threading.active_count() == before
  with pytest.raises(ValueError, match="depth must be an integer >= 0, got -1"):
    Prefetch(Counter(), -1)

"""Task samplers for multi-input training: which task each row of a batch comes from.

Each sampler is a factory returning a ``Sampler`` of pure functions of the step,
so a run resumed at step ``s`` draws exactly what it would have drawn:

* ``uniform``: p_t = 1 / T.
* ``proportional``: p_t = n_t / sum(n).
* ``temperature``: p_t ~ min(n_t, cap) ** (1 / temperature) (Arivazhagan et al.,
  2019; mT5 uses the same with alpha = 1 / temperature). ``cap`` limits the share
  of very large tasks (the size cap of T5's examples-proportional mixing).
* ``annealed``: the same with a temperature moving linearly from ``t0`` to ``t1``
  over ``total_steps`` and staying at ``t1`` after. Stickland & Murray (2019)
  anneal the exponent alpha = 1/T linearly instead (from 1 to 0.2 over epochs);
  we interpolate T itself, which spends longer near proportional sampling.
* ``all``: every task every step (no draw; the iterator yields a dict of batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jmtl.data.errors import DataError

NAMES = ("all", "uniform", "proportional", "temperature", "annealed")


class Sampler(NamedTuple):
  """Task probabilities as a pure function of the training step.

  Attributes:
    probabilities: step -> float64 probabilities over tasks (sum to 1).
    name: the sampler's name.
  """

  probabilities: Callable[[int], np.ndarray]
  name: str


def _tempered(sizes: np.ndarray, temperature: float, size_cap: float | None) -> np.ndarray:
  capped = sizes if size_cap is None else np.minimum(sizes, size_cap)
  # In log space: large sizes ** (1/T) for small T would overflow.
  logits = np.log(capped) / temperature
  weights = np.exp(logits - logits.max())
  return weights / weights.sum()


def uniform(sizes: Sequence[int]) -> Sampler:
  p = np.full(len(sizes), 1.0 / len(sizes))
  return Sampler(lambda step: p, "uniform")


def proportional(sizes: Sequence[int]) -> Sampler:
  n = np.asarray(sizes, np.float64)
  p = n / n.sum()
  return Sampler(lambda step: p, "proportional")


def temperature(sizes: Sequence[int], temperature: float = 2.0,  # pylint: disable=redefined-outer-name
                size_cap: float | None = None) -> Sampler:
  if temperature <= 0:
    raise DataError(f"temperature: must be > 0, got {temperature}")
  p = _tempered(np.asarray(sizes, np.float64), temperature, size_cap)
  return Sampler(lambda step: p, "temperature")


def annealed(sizes: Sequence[int], t0: float, t1: float, total_steps: int,
             size_cap: float | None = None) -> Sampler:
  if t0 <= 0 or t1 <= 0 or total_steps <= 0:
    raise DataError(f"anneal: needs T0 > 0, T1 > 0, total_steps > 0, got {(t0, t1, total_steps)}")
  n = np.asarray(sizes, np.float64)

  def probabilities(step: int) -> np.ndarray:
    progress = min(max(step, 0) / total_steps, 1.0)
    return _tempered(n, t0 + (t1 - t0) * progress, size_cap)

  return Sampler(probabilities, "annealed")


def get(name: str, sizes: Mapping[str, int] | Sequence[int], *, temperature_value: float = 2.0,
        size_cap: float | None = None,
        anneal: tuple[float, float, int] | None = None) -> Sampler | None:
  """The sampler called ``name`` over tasks of the given train sizes (None for "all")."""
  counts = list(sizes.values()) if isinstance(sizes, Mapping) else list(sizes)
  if any(c <= 0 for c in counts):
    raise DataError(f"sampler {name}: every task needs training examples, sizes {counts}")
  if size_cap is not None and size_cap <= 0:
    raise DataError(f"size_cap: must be > 0, got {size_cap}")
  if name == "all":
    return None
  if name == "uniform":
    return uniform(counts)
  if name == "proportional":
    return proportional(counts)
  if name == "temperature":
    return temperature(counts, temperature_value, size_cap)
  if name == "annealed":
    if anneal is None or len(anneal) != 3:
      raise DataError("sampler annealed: needs anneal=(T0, T1, total_steps)")
    return annealed(counts, float(anneal[0]), float(anneal[1]), int(anneal[2]), size_cap)
  raise DataError(f"sampler: {name!r} is not one of {', '.join(NAMES)}")


def draw(probabilities: np.ndarray, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Task index of each row at ``step``: a pure function of (seed, step)."""
  rng = np.random.default_rng([seed, step, 0x7A5C])
  return rng.choice(len(probabilities), size=batch_size, p=probabilities)

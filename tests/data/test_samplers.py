"""Sampler probabilities against the formulas, and empirical task proportions."""

import numpy as np
import pytest

from jmtl import data
from jmtl.data.feed import samplers

SIZES = [100, 1000, 10000]


def reference(sizes, temperature, cap=None):
  """p_t ~ min(n_t, cap) ** (1/T), in float64 without logs."""
  n = np.asarray(sizes, np.float64)
  n = n if cap is None else np.minimum(n, cap)
  w = n ** (1.0 / temperature)
  return w / w.sum()


def test_static_samplers_match_their_formulas():
  np.testing.assert_allclose(samplers.get("uniform", SIZES).probabilities(0), [1 / 3] * 3)
  np.testing.assert_allclose(samplers.get("proportional", SIZES).probabilities(7),
                             np.array(SIZES) / 11100)
  got = samplers.get("temperature", SIZES, temperature_value=2.0).probabilities(0)
  np.testing.assert_allclose(got, reference(SIZES, 2.0), rtol=1e-12)
  got = samplers.get("temperature", SIZES, temperature_value=3.0, size_cap=1000)
  np.testing.assert_allclose(got.probabilities(0), reference(SIZES, 3.0, 1000), rtol=1e-12)
  # T = 1 is proportional; a huge T is uniform.
  np.testing.assert_allclose(samplers.temperature(SIZES, 1.0).probabilities(0),
                             np.array(SIZES) / 11100, rtol=1e-12)
  np.testing.assert_allclose(samplers.temperature(SIZES, 1e9).probabilities(0), [1 / 3] * 3,
                             rtol=1e-6)
  assert samplers.get("all", SIZES) is None


def test_annealed_temperature_moves_linearly_in_t():
  sampler = samplers.get("annealed", SIZES, anneal=(1.0, 5.0, 100))
  np.testing.assert_allclose(sampler.probabilities(0), reference(SIZES, 1.0), rtol=1e-12)
  np.testing.assert_allclose(sampler.probabilities(25), reference(SIZES, 2.0), rtol=1e-12)
  np.testing.assert_allclose(sampler.probabilities(100), reference(SIZES, 5.0), rtol=1e-12)
  np.testing.assert_allclose(sampler.probabilities(10**6), reference(SIZES, 5.0), rtol=1e-12)


def test_bad_sampler_arguments():
  with pytest.raises(data.DataError, match="not one of"):
    samplers.get("random", SIZES)
  with pytest.raises(data.DataError, match="anneal="):
    samplers.get("annealed", SIZES)
  with pytest.raises(data.DataError, match="temperature"):
    samplers.get("temperature", SIZES, temperature_value=0.0)


def test_draws_are_deterministic_and_match_proportions():
  p = samplers.get("temperature", SIZES, temperature_value=2.0).probabilities(0)
  steps, batch = 400, 32
  draws = np.stack([samplers.draw(p, batch, seed=3, step=s) for s in range(steps)])
  np.testing.assert_array_equal(draws[5], samplers.draw(p, batch, seed=3, step=5))
  assert not np.array_equal(draws[5], draws[6])
  assert not np.array_equal(draws[5], samplers.draw(p, batch, seed=4, step=5))
  counts = np.bincount(draws.ravel(), minlength=3)
  total = steps * batch
  sigma = np.sqrt(total * p * (1 - p))
  assert np.all(np.abs(counts - total * p) < 4 * sigma), (counts / total, p)

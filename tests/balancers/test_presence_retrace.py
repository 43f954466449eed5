"""A balancer object survives retracing with absent tasks (new shapes, jit then pmap-like
re-entry): the per-count methods built inside one trace must not leak into the next."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl


@pytest.mark.parametrize("name", ["equal_weight", "mgda", "dwa", "graddrop", "moco"])
def test_same_balancer_retraced_with_an_absent_task(name):
  balancer = jmtl.balancers.get(name, num_tasks=3)
  present = jnp.array([True, False, True])
  losses = jnp.array([0.5, 0.0, 2.0])

  def step(task_grads, state):
    return balancer.update(task_grads, state, task_losses=losses, present=present)

  rng = np.random.default_rng(0)
  for width in (4, 6):  # two traces of one jitted function (as two length buckets make)
    grads = {"w": jnp.asarray(rng.normal(size=(3, width)), jnp.float32)}
    state = balancer.init({"w": jnp.zeros(width)})
    direction, _ = jax.jit(step)(grads, state)
    assert direction["w"].shape == (width,)
    assert np.all(np.isfinite(np.asarray(direction["w"])))
    assert np.any(np.asarray(direction["w"]) != 0)

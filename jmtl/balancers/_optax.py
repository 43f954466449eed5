"""Any balancer as an ``optax.GradientTransformationExtraArgs``, so it chains with optax.

``optax.chain(as_optax(balancer), optax.sgd(lr))`` takes per-task gradients (leading task
axis) and the per-step extras by keyword (``task_losses``, ``present``); the transforms
after it see one combined gradient.
"""

from __future__ import annotations

import optax

from jmtl.balancers._base import Balancer


def as_optax(balancer: Balancer) -> optax.GradientTransformationExtraArgs:
  """``balancer`` as an optax transform: ``update(task_grads, state, params, **extra)``."""
  def update(task_grads, state, params=None, *, task_losses=None, present=None, **extra):
    del extra  # other transforms' extras (optax.chain passes every one to every transform)
    return balancer.update(task_grads, state, params, task_losses=task_losses, present=present)

  return optax.GradientTransformationExtraArgs(init=balancer.init, update=update)

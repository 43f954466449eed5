"""GradNorm: learnable task weights that equalise the tasks' training rates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmtl.balancers._base import EPS
from jmtl.balancers._base import Balancer
from jmtl.balancers._base import gram_matrix
from jmtl.balancers._registry import register
from jmtl.balancers._base import weighted_sum

PyTree = Any


class GradNormState(NamedTuple):
  weights: jax.Array          # [T] w(t): the weights the last update applied
  task_weights: jax.Array     # [T] w(t+1): the learned weights the NEXT update applies; sum to T
  initial_losses: jax.Array   # [T] L_i(0), captured by each task's first update
  seen: jax.Array             # [T] bool, whether L_i(0) has been captured
  optimizer_state: optax.OptState  # of the weight optimiser (Adam or SGD)


def parameter_paths(tree: PyTree) -> list[str]:
  """Every "/"-joined path of ``tree``'s nested mappings, nodes and leaves, in sorted order."""
  paths = []

  def visit(node, prefix):
    if isinstance(node, Mapping):
      for key in sorted(node):
        path = f"{prefix}/{key}" if prefix else str(key)
        paths.append(path)
        visit(node[key], path)

  visit(tree, "")
  return paths


def select_layer(task_grads: PyTree, layer: str | None) -> PyTree:
  """The sub-pytree of ``task_grads`` at the "/"-separated path ``layer`` (None: all of it).

  Raises:
    ValueError: no such path; the message lists the paths there are.
  """
  if layer is None:
    return task_grads
  node = task_grads
  for key in layer.split("/"):
    if not isinstance(node, Mapping) or key not in node:
      raise ValueError(f"gradnorm layer={layer!r} is not a path of the gradients it balances; "
                       f"available paths: {', '.join(parameter_paths(task_grads)) or '(none)'}")
    node = node[key]
  return node


def gradnorm_weight_gradient(weights: jax.Array, grad_norms: jax.Array, task_losses: jax.Array,
                             initial_losses: jax.Array, alpha: float) -> jax.Array:
  """Gradient w.r.t. w of ``L_grad = sum_i |w_i n_i - mean_j(w_j n_j) r_i^alpha|``.

  ``n_i = ||grad_W L_i||``, ``r_i`` the inverse training rate ``L~_i / mean_j L~_j`` with
  ``L~_i = L_i / L_i(0)``. As in the paper the target ``mean_j(w_j n_j) r_i^alpha`` is a
  constant, so ``dL_grad/dw_i = sign(w_i n_i - target_i) n_i``.
  """
  weighted_norms = weights * grad_norms
  # GradNorm assumes positive losses; clamping keeps r_i in [0, T] (hence finite) otherwise.
  loss_ratios = jnp.maximum(task_losses, 0.0) / jnp.maximum(initial_losses, EPS)
  inverse_rates = loss_ratios / jnp.maximum(jnp.mean(loss_ratios), EPS)
  targets = jnp.mean(weighted_norms) * inverse_rates ** alpha
  return jnp.sign(weighted_norms - targets) * grad_norms


@register("gradnorm", paper="Chen et al. 2018, GradNorm: Gradient Normalization for Adaptive "
          "Loss Balancing in Deep Multitask Networks, ICML")
def gradnorm(num_tasks: int, *, alpha: float = 1.5, lr: float = 0.025,
             optimizer: Literal["adam", "sgd"] = "adam", layer: str | None = None,
             min_weight: float = 1e-4) -> Balancer:
  """GradNorm (Chen et al. 2018): ``g = sum_i w_i(t) g_i``, then one optimiser step on w.

  The weights are pushed so that every task's gradient norm on the last shared layer W,
  ``||grad_W w_i L_i||``, approaches the mean norm times ``r_i^alpha`` (``r_i``: the task's
  inverse training rate relative to L_i(0)), then renormalised to sum to T.
  ``state.weights`` holds w(t) (applied), ``state.task_weights`` w(t+1). With the mean
  convention of every method the update is ``sum_i (w_i / T) g_i``.

  Args:
    num_tasks: T.
    alpha: asymmetry; 0 equalises gradient norms, larger values restore slow tasks harder.
    lr: learning rate of the weight optimiser.
    optimizer: ``"adam"`` (``optax.adam(lr)``, as the reference implementations, which
      train w with the model's Adam; insensitive to the gradients' scale) or ``"sgd"``
      (plain step ``w - lr * dL_grad/dw``).
    layer: W as a "/"-separated path into the gradients it receives (e.g.
      ``"encoder/final_norm"``, the model's declared last shared layer, which the runner
      passes); None: all of them (standalone use on a ``[T, d]`` array). Chosen by name,
      never by dict order (jit returns dicts with sorted keys).
    min_weight: floor applied before renormalising, so a weight can never reach zero or
      flip sign on an overshooting step (not in the paper; inactive while w_i > floor).
  """
  if optimizer == "adam":
    weight_optimizer = optax.adam(lr)
  elif optimizer == "sgd":
    weight_optimizer = optax.sgd(lr)
  else:
    raise ValueError(f"gradnorm: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
  if layer is not None and not isinstance(layer, str):
    raise TypeError(f"gradnorm: layer must be a '/'-separated path string or None, got {layer!r}")

  def init(params):
    del params
    weights = jnp.ones((num_tasks,), jnp.float32)
    return GradNormState(weights=weights / num_tasks, task_weights=weights,
                         initial_losses=jnp.ones((num_tasks,), jnp.float32),
                         seen=jnp.zeros((num_tasks,), bool),
                         optimizer_state=weight_optimizer.init(weights))

  def update(task_grads, state, params=None, *, task_losses):
    del params
    task_losses = jnp.asarray(task_losses, jnp.float32)
    initial_losses = jnp.where(state.seen, state.initial_losses, task_losses)
    applied = state.task_weights / num_tasks
    grads = weighted_sum(applied, task_grads)

    grad_norms = jnp.sqrt(jnp.maximum(jnp.diag(gram_matrix(select_layer(task_grads, layer))), 0.0))
    weight_grad = gradnorm_weight_gradient(
        state.task_weights, grad_norms, task_losses, initial_losses, alpha)
    steps, optimizer_state = weight_optimizer.update(
        weight_grad, state.optimizer_state, state.task_weights)
    weights = jnp.maximum(optax.apply_updates(state.task_weights, steps), min_weight)
    weights = (num_tasks * weights / jnp.sum(weights)).astype(jnp.float32)

    return grads, GradNormState(weights=applied, task_weights=weights,
                                initial_losses=initial_losses,
                                seen=jnp.ones((num_tasks,), bool), optimizer_state=optimizer_state)

  return Balancer(init=init, update=update, needs="jacobian")

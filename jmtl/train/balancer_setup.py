"""The runner's balancer: config hyperparameters plus what the model declares, checked before
training starts.

Two things a config alone cannot get right, so they are settled here, once, with a
``ConfigError`` naming the config key when they cannot be:

* GradNorm's ``layer`` (a path inside the shared params) defaults to the model's declared
  ``last_shared_layer``; a configured ``balancer.layer`` may carry the shared subtree's name
  (``"encoder/pooler"``) or not (``"pooler"``), and must exist.
* rep-grad hands the balancer the shared representation ``[B, L, D]``, whose shape changes
  with the length bucket; a method whose state is shaped like what it balances
  (``info(name).param_shaped_state``) is refused there unless every batch has one shape.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from jmtl import balancers
from jmtl.balancers._gradnorm import parameter_paths
from jmtl.config import ConfigError, balancer_hparams
from jmtl.models.protocol import MultiTaskProtocol, last_shared_layer


def _layer_in_shared(layer: str, model: MultiTaskProtocol, shared_shapes) -> str:
  prefix = f"{model.shared_key}/"
  path = layer[len(prefix):] if layer.startswith(prefix) else layer
  valid = parameter_paths(shared_shapes)
  if path not in valid:
    raise ConfigError(f"balancer.layer={layer!r} is not a path of the shared params "
                      f"({model.shared_key!r}); valid paths: {', '.join(valid)}")
  return path


def _check_rep_grad_state(name: str, grad_mode: str, buckets) -> None:
  if grad_mode == "rep" and balancers.info(name).param_shaped_state and len(buckets) > 1:
    raise ConfigError(
        f"balancer.name={name!r} keeps state shaped like the gradients it balances, and with "
        f"grad_mode='rep' those have the shape of the shared representation [B, L, D], which "
        f"changes between the length buckets data.buckets={tuple(buckets)}: use "
        f"grad_mode='exact', or one bucket (data.buckets=({max(buckets)},))")


def build_balancer(config: ml_collections.ConfigDict, model: MultiTaskProtocol, example,
                   buckets) -> balancers.Balancer:
  """``balancers.get(config.balancer.name, ...)`` with the model's defaults, validated."""
  name, grad_mode = config.balancer.name, config.grad_mode
  try:
    balancers.info(name)
  except KeyError as e:
    raise ConfigError(f"balancer.name: {e.args[0]}") from None
  _check_rep_grad_state(name, grad_mode, buckets)
  hparams: dict[str, Any] = balancer_hparams(config)
  num_tasks = len(model.names)
  if "layer" in hparams:
    if grad_mode == "rep":
      raise ConfigError(f"balancer.layer={hparams['layer']!r} names a shared parameter, but "
                        "grad_mode='rep' balances the shared representation: drop "
                        "balancer.layer or use grad_mode='exact'")
    shared = jax.eval_shape(model.init, jax.random.PRNGKey(0), example)[model.shared_key]
    hparams["layer"] = _layer_in_shared(hparams["layer"], model, shared)
  elif grad_mode == "exact" and last_shared_layer(model):
    try:  # methods with a `layer` hyperparameter get the declared last shared layer
      return balancers.get(name, num_tasks, layer=last_shared_layer(model), **hparams)
    except TypeError:
      pass
  try:
    return balancers.get(name, num_tasks, **hparams)
  except TypeError as e:
    raise ConfigError(f"balancer: {e}") from None

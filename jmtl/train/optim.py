"""The optimizer a config asks for, with fine-tuning controls chosen by parameter path.

Fine-tuning a pretrained encoder wants different treatment per parameter group: freeze the
embeddings or the first k layers, decay the learning rate layer by layer towards the input
(LLRD), give the freshly initialised heads their own learning rate. Everything here is
decided from a parameter's "/"-joined path (``encoder/block_0/mlp_in/kernel``), so it works
for any encoder whose layers carry an index in their name (``block_3``, ``layer_3``,
``layers/3``); nothing is specific to one model.

Keys (``config.optimizer``):
  freeze: regular expressions searched in each path; matching parameters never change
    (``optax.set_to_zero`` through ``optax.multi_transform``, so they keep no Adam moments
    and do not count in gradient clipping). A pattern that matches nothing is an error.
  freeze_layers: k > 0 also freezes the encoder layers with index < k.
  layer_decay: d < 1 scales layer i of L by ``d ** (L - i)``, the embeddings by
    ``d ** (L + 1)`` and the rest of the encoder (final norm, pooler) by 1.
  head_learning_rate: the heads' peak learning rate (0 = the base one); it follows the
    same schedule, scaled.
With none of these set, the optimizer is exactly the plain one (same state layout, so
checkpoints written before these keys existed still resume).

The train step must give balancers only the trainable parameters: ``trainable_mask`` says
which they are.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from jmtl.config import ConfigError

PyTree = Any
# An encoder layer's index in its path: block_3, layer_3, layers_3, layer/3, layers.3.
LAYER_INDEX = re.compile(r"(?:block|layer)s?[_/.](\d+)(?:/|$)")
EMBEDDING = re.compile(r"embed")
TRAINABLE, FROZEN = "trainable", "frozen"


def path_name(path) -> str:
  """``encoder/block_0/mlp_in/kernel`` for a ``jax.tree_util`` key path."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def param_paths(params: PyTree) -> PyTree:
  """The params pytree with each leaf replaced by its "/"-joined path."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p), params)


def layer_index(path: str) -> int | None:
  match = LAYER_INDEX.search(path)
  return int(match.group(1)) if match else None


def _compile(patterns, key: str) -> list[re.Pattern]:
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ConfigError(f"{key}: {pattern!r} is not a regular expression ({e})") from None
  return compiled


def _frozen_paths(paths: list[str], opt: ml_collections.ConfigDict) -> set[str]:
  patterns = _compile(tuple(opt.freeze), "optimizer.freeze")
  frozen = set()
  for pattern in patterns:
    hits = {p for p in paths if pattern.search(p)}
    if not hits:
      shown = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
      raise ConfigError(f"optimizer.freeze: pattern {pattern.pattern!r} matches no parameter "
                        f"(paths look like: {shown})")
    frozen |= hits
  if opt.freeze_layers:
    layered = {p for p in paths if p.startswith("encoder/") and layer_index(p) is not None}
    if not layered:
      raise ConfigError("optimizer.freeze_layers: the encoder has no parameter with a layer "
                        f"index in its path (pattern {LAYER_INDEX.pattern})")
    frozen |= {p for p in layered if layer_index(p) < opt.freeze_layers}
  return frozen


def trainable_mask(params: PyTree, config: ml_collections.ConfigDict) -> PyTree:
  """A pytree of bools like ``params``: True where the optimizer may change the parameter.

  Balancers must see only these: the step should drop (or zero) the False leaves of the
  shared parameters before per-task gradients, the Gram matrix or cosines are formed.
  """
  paths = param_paths(params)
  frozen = _frozen_paths(jax.tree.leaves(paths), config.optimizer)
  return jax.tree.map(lambda p: p not in frozen, paths)


def learning_rate_scales(params: PyTree, config: ml_collections.ConfigDict) -> PyTree:
  """Per leaf, the factor on the base learning rate (LLRD and the head learning rate)."""
  opt = config.optimizer
  paths = param_paths(params)
  leaves = jax.tree.leaves(paths)
  indices = [layer_index(p) for p in leaves if p.startswith("encoder/")]
  num_layers = 1 + max((i for i in indices if i is not None), default=-1)
  if opt.layer_decay != 1.0 and not num_layers:
    raise ConfigError("optimizer.layer_decay: the encoder has no parameter with a layer index "
                      f"in its path (pattern {LAYER_INDEX.pattern})")
  head = opt.head_learning_rate / opt.learning_rate if opt.head_learning_rate else 1.0

  def scale(path: str) -> float:
    if not path.startswith("encoder/"):
      return head
    index = layer_index(path)
    if index is not None:
      return opt.layer_decay ** (num_layers - index)
    if EMBEDDING.search(path):
      return opt.layer_decay ** (num_layers + 1)
    return 1.0

  return jax.tree.map(scale, paths)


def _schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  if opt.schedule == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if opt.schedule == "warmup_cosine":
    warmup = max(1, min(opt.warmup_steps, total_steps - 1))
    # optax needs a decay after the warmup: a 1-step run (smoke tests) decays over step 2
    return optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, warmup, max(total_steps, warmup + 1),
        end_value=opt.learning_rate * opt.final_lr_fraction)
  if opt.schedule == "warmup_linear":
    return optax.join_schedules([
        optax.linear_schedule(0.0, opt.learning_rate, max(1, opt.warmup_steps)),
        optax.linear_schedule(opt.learning_rate, opt.learning_rate * opt.final_lr_fraction,
                              max(1, total_steps - opt.warmup_steps))], [opt.warmup_steps])
  raise ConfigError(f"optimizer.schedule {opt.schedule!r}: use constant, warmup_cosine or "
                    "warmup_linear")


def _base(opt: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  if opt.name == "adamw":
    return optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  if opt.name == "adam":
    return optax.adam(lr, b1=opt.b1, b2=opt.b2)
  if opt.name == "sgd":
    return optax.sgd(lr, momentum=opt.momentum or None)
  raise ConfigError(f"optimizer.name {opt.name!r}: use adamw, adam or sgd")


class ScaleByPathState(NamedTuple):
  """No state: the scales are a function of the (static) parameter paths."""


def scale_by_path(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Multiplies each update by ``learning_rate_scales``: the learning rate of its group.

  Scaling the final update equals scaling the learning rate for SGD, Adam and AdamW (whose
  weight decay optax also multiplies by the learning rate).
  """
  def init(params):
    learning_rate_scales(params, config)  # a config that cannot apply fails here, not mid-step
    return ScaleByPathState()

  def update(updates, state, params=None):
    del params
    scales = learning_rate_scales(updates, config)
    return jax.tree.map(lambda u, s: u if s == 1.0 else u * s, updates, scales), state

  return optax.GradientTransformation(init, update)


def _controls_active(opt: ml_collections.ConfigDict) -> tuple[bool, bool]:
  freezes = bool(tuple(opt.freeze)) or opt.freeze_layers > 0
  scales = opt.layer_decay != 1.0 or opt.head_learning_rate not in (0.0, opt.learning_rate)
  return freezes, scales


def check_controls(opt: ml_collections.ConfigDict) -> None:
  if not 0.0 < opt.layer_decay <= 1.0:
    raise ConfigError(f"optimizer.layer_decay {opt.layer_decay}: must be in (0, 1]")
  if opt.head_learning_rate < 0:
    raise ConfigError(f"optimizer.head_learning_rate {opt.head_learning_rate}: must be >= 0 "
                      "(0 = the base learning rate)")
  if opt.freeze_layers < 0:
    raise ConfigError(f"optimizer.freeze_layers {opt.freeze_layers}: must be >= 0")


def build_optimizer(config: ml_collections.ConfigDict,
                    total_steps: int) -> optax.GradientTransformation:
  """Clipping and the base optimizer over the trainable parameters (frozen ones get zero
  updates), then the per-group learning-rate scales over the whole tree (so LLRD counts
  the layers of the full model, frozen ones included)."""
  opt = config.optimizer
  check_controls(opt)
  optimizer = _base(opt, _schedule(opt, total_steps))
  if opt.clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(opt.clip_norm), optimizer)
  freezes, scales = _controls_active(opt)
  if freezes:
    labels = lambda params: jax.tree.map(lambda t: TRAINABLE if t else FROZEN,
                                         trainable_mask(params, config))
    optimizer = optax.multi_transform({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()},
                                      labels)
  if scales:
    optimizer = optax.chain(optimizer, scale_by_path(config))
  return optimizer

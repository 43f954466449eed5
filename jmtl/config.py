"""Python config files (``get_config()`` returning an ml_collections ConfigDict) and overrides.

``load_config("configs/default.py", ["train.steps=100", "balancer.name=pcgrad"])`` loads the
file, then applies ``KEY=VALUE`` overrides with the types of the existing values. Keys are
locked: an unknown key is an error listing the valid ones. ``config.balancer`` is the one
open section, since each method takes its own hyperparameters (checked when it is built).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config file or override that cannot be used; the message says which and why."""


OPEN_SECTIONS = ("balancer",)


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"jmtl_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a config file is user code: report where it failed
    raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict, "
                      f"got {type(config).__name__}")
  config.lock()
  for section in OPEN_SECTIONS:
    if section in config:
      config[section].unlock()
  for override in overrides:
    apply_override(config, override)
  return config


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word is a string: --config.balancer.name=pcgrad


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets ``a.b.c=VALUE`` in place, keeping the existing value's type."""
  if "=" not in override:
    raise ConfigError(f"override {override!r} is not KEY=VALUE")
  key, text = override.split("=", 1)
  parts = key.split(".")
  node, path = config, []
  for part in parts[:-1]:
    path.append(part)
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(_unknown(key, ".".join(path[:-1]), node))
    node = node[part]
  leaf = parts[-1]
  value = _parse_value(text)
  if leaf not in node:
    if node.is_locked:
      raise ConfigError(_unknown(key, ".".join(path), node))
    node[leaf] = value
    return
  current = node[leaf]
  if isinstance(current, str) and not isinstance(value, str):
    value = text  # "--config.data.suite=123" means the string
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and not isinstance(value, tuple):
    value = (value,)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(f"config key {key!r} expects {type(current).__name__}, got "
                      f"{type(value).__name__} {text!r}")
  try:
    node[leaf] = value
  except (TypeError, KeyError, AttributeError) as e:
    raise ConfigError(f"config key {key!r}: {e}") from None


def _unknown(key: str, section: str, node: ml_collections.ConfigDict) -> str:
  where = f"under {section!r}" if section else "at the top level"
  return f"unknown config key {key!r}; valid keys {where}: {', '.join(sorted(node.keys()))}"


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, default=list)


def balancer_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The balancer section without its name: the method's hyperparameters."""
  return {k: (tuple(v) if isinstance(v, list) else v)
          for k, v in config.balancer.to_dict().items() if k != "name"}


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with defaults; config files start from this and change a few."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.grad_mode = "exact"  # "exact": per-task gradients of the encoder; "rep": w.r.t. its outputs
  c.single_task = False  # train each task alone and write baselines.json (for Δm)
  c.baselines = ""  # baselines.json of a single-task run: adds Δm% to evaluations
  c.data = ml_collections.ConfigDict(dict(
      suite="en_mix",
      data_dir="",  # default: $JMTL_DATA_DIR or ~/.cache/jmtl/data
      tasks=(),  # a subset of the suite's tasks; empty = all
      max_len=64,
      buckets=(32, 64),
      vocab_size=8000,
      vocab_file="",  # a WordPiece vocab.txt (e.g. a pretrained BERT's) instead of training one
      lowercase=True,
      sampler="all",  # all | uniform | proportional | temperature | annealed
      batch_size=16,  # per task with sampler="all"; rows per mixture batch otherwise
      temperature=2.0,
      size_cap=0,  # 0 = none
      anneal=(1.0, 5.0, 1000),  # (T0, T1, steps) for sampler="annealed"
      eval_batch_size=64,
  ))
  c.model = ml_collections.ConfigDict(dict(
      width=128, depth=2, num_heads=4, mlp_width=512, pooled_width=128, head_hidden=64,
      dropout=0.1, attention_dropout=0.1,
      # sharing architecture (jmtl.models.architectures): hard | soft | cross_stitch | mmoe |
      # cgc | ple | dselect_k | mtan, and its hyperparameters (0 width/depth = the encoder's)
      architecture="hard", expert_width=0, expert_depth=0, soft_strength=1e-2, num_experts=4,
      dselect_k=2, dselect_gamma=1.0, ple_layers=2, shared_experts=2, task_experts=1))
  c.balancer = ml_collections.ConfigDict(dict(name="equal_weight"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.01, momentum=0.0,
      schedule="warmup_cosine", warmup_steps=100, final_lr_fraction=0.1, clip_norm=1.0))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      log_every=50,
      eval_every=500,  # 0 = only at the end
      checkpoint_every=250,
      keep_checkpoints=3,
      keep_best=True,
      best_metric="score",  # "score" (Δm% with baselines, else mean main metric) or "TASK/METRIC"
      parallelism="none",  # none | pmap | sharded
      num_devices=0,  # 0 = all
      nan_policy="skip",  # skip (count and go on) | stop
      log_cosines=True,
      progress=True,
      tensorboard=False,
  ))
  return c

"""Python config files (``get_config()`` returning an ml_collections ConfigDict) and overrides.

``load_config("configs/default.py", ["train.steps=100", "balancer.name=pcgrad"])`` loads the
file, then applies ``KEY=VALUE`` overrides with the types of the existing values. Keys are
locked: an unknown key is an error listing the valid ones. ``config.balancer`` is the one
open section, since each method takes its own hyperparameters (checked when it is built).

A run's config is saved with it; ``identity_mismatches`` tells which keys may not change when
a run is resumed or evaluated (everything but ``MUTABLE_KEYS``), so a new key is part of the
identity unless it is listed there.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config file or override that cannot be used; the message says which and why."""


OPEN_SECTIONS = ("balancer",)
# Keys that hold a positive int or a {task: positive int} mapping.
PER_TASK_KEYS = ("data.batch_size",)


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
  return with_overrides(config, overrides)


def config_from_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A config saved as JSON (``to_json``) back as a ConfigDict; JSON lists become tuples, as
  every sequence in ``base_config`` is one, and ``PER_TASK_KEYS`` take an int or a mapping.
  Keys a newer jmtl added take ``base_config``'s defaults (what the older run used), so a
  run saved by an older version still resumes, evaluates and predicts."""
  def tuples(value):
    if isinstance(value, Mapping):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value
  values = tuples(_with_defaults(base_config().to_dict(), values))
  per_task = {}
  for key in PER_TASK_KEYS:  # set after construction, which would make a mapping a ConfigDict
    section, _, leaf = key.rpartition(".")
    node = values.get(section) if section else values
    if isinstance(node, dict) and leaf in node:
      per_task[(section, leaf)] = node[leaf]
      node[leaf] = ml_collections.FieldReference(1, field_type=object)
  config = ml_collections.ConfigDict(values)
  for (section, leaf), value in per_task.items():
    (config[section] if section else config)[leaf] = value
  return config


def _with_defaults(defaults: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(defaults)
  for key, value in saved.items():
    both = isinstance(value, Mapping) and isinstance(defaults.get(key), Mapping)
    out[key] = _with_defaults(defaults[key], value) if both else value
  return out


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Locks ``config`` (but its open sections) and applies ``KEY=VALUE`` overrides in place."""
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
  if key in PER_TASK_KEYS:
    try:
      node[leaf] = per_task_int(key, value)
    except TypeError as e:  # a config not built on base_config() holds a plain int field
      raise ConfigError(f"config key {key!r}: {e}") from None
    return
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


def per_task_int(key: str, value: Any, task_names: Sequence[str] | None = None
                 ) -> int | dict[str, int]:
  """``value`` checked as a positive int or a ``{task: positive int}`` mapping whose
  tasks are among ``task_names`` (when given); a ConfigError names ``key``."""
  positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0
  if isinstance(value, ml_collections.ConfigDict):  # what a deepcopy of the config holds
    value = value.to_dict()
  if positive(value):
    return value
  if not isinstance(value, Mapping) or not value:
    raise ConfigError(f"config key {key!r} expects a positive int or a {{task: int}} mapping, "
                      f"got {value!r}")
  bad = {k: v for k, v in value.items() if not isinstance(k, str) or not positive(v)}
  if bad:
    raise ConfigError(f"config key {key!r}: expected task name -> positive int, got {bad}")
  if task_names is not None:
    unknown = sorted(set(value) - set(task_names))
    if unknown:
      raise ConfigError(f"config key {key!r} names {unknown}, not tasks of the suite "
                        f"({', '.join(task_names)})")
  return dict(value)


def batch_size_of(config: ml_collections.ConfigDict, task_names: Sequence[str] | None = None
                  ) -> int | dict[str, int]:
  """``data.batch_size`` checked (see ``per_task_int``); ``task_names`` are the tasks
  it may name (``jmtl.data.validate_suite_spec`` gives them before any build). A
  mapping needs ``data.sampler='all'`` (a mixture batch has one size)."""
  value = per_task_int("data.batch_size", config.data.batch_size, task_names)
  if isinstance(value, dict) and config.data.sampler != "all":
    raise ConfigError(f"config key 'data.batch_size': a per-task mapping needs "
                      f"data.sampler='all'; sampler {config.data.sampler!r} draws one mixture "
                      "batch of a single size")
  return value


def _unknown(key: str, section: str, node: ml_collections.ConfigDict) -> str:
  where = f"under {section!r}" if section else "at the top level"
  return f"unknown config key {key!r}; valid keys {where}: {', '.join(sorted(node.keys()))}"


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, default=list)


# Keys a resumed or evaluated run may change: how long it trains, what it logs and evaluates,
# where it finds its data (the data's fingerprints are checked separately) and how it is laid
# out on devices (checkpoints restore onto any device count). A dotted prefix covers a section.
MUTABLE_KEYS = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.keep_best", "train.best_metric",
                "train.parallelism", "train.num_devices", "train.nan_policy", "train.log_cosines",
                "train.progress", "train.tensorboard", "data.data_dir", "data.eval_batch_size",
                "data.prefetch",
                "baselines",
                "train.affinity_every", "train.affinity_lr")  # diagnostics only


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in values.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      out.update(_flatten(value, dotted + "."))
    else:
      out[dotted] = value
  return out


def is_mutable(key: str) -> bool:
  return any(key == m or key.startswith(m + ".") for m in MUTABLE_KEYS)


def identity_mismatches(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """``"key: the run has A, this config has B"`` for every identity key (any key not in
  ``MUTABLE_KEYS``) whose value differs between two config dicts."""
  a, b = _flatten(saved), _flatten(current)
  same = lambda x, y: json.dumps(x, sort_keys=True, default=list) == json.dumps(
      y, sort_keys=True, default=list)
  missing = "(not set)"
  # A key only one side has is a key a newer jmtl added (the older run used its default),
  # except in the open balancer section, where a missing key is a hyperparameter left out.
  keys = (set(a) & set(b)) | {k for k in set(a) ^ set(b) if k.startswith("balancer.")}
  return [f"{key}: the run has {a.get(key, missing)!r}, this config has {b.get(key, missing)!r}"
          for key in sorted(keys)
          if not is_mutable(key) and not same(a.get(key, missing), b.get(key, missing))]


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
  c.init_from = ""  # WORKDIR[:STEP or :best]: start from that run's encoder and matching heads
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
      # Per task with sampler="all" (an int, or {task: int}); rows per mixture batch otherwise.
      batch_size=ml_collections.FieldReference(16, field_type=object),
      temperature=2.0,
      size_cap=0,  # 0 = none
      anneal=(1.0, 5.0, 1000),  # (T0, T1, steps) for sampler="annealed"
      eval_batch_size=64,
      # Multi-input steps: "shared" pads every task to the step's longest row's bucket (one
      # compile per bucket); "own" pads each task to its own bucket (short tasks stay short,
      # one compile per bucket combination that occurs). Same numbers up to round-off, but
      # dropout draws follow the padded shape.
      task_lengths="shared",
      prefetch=2,  # training batches made ahead on a background thread; 0 = on demand
  ))
  c.model = ml_collections.ConfigDict(dict(
      encoder="transformer",  # "transformer" (jmtl's pre-LN) | "bert" (post-LN, loadable)
      pretrained="",  # bert: a named model (minilm) or a HF BERT folder; sets the tokenizer
      pooling="mean",  # bert's sentence vector: mean | cls | pooler
      width=128, depth=2, num_heads=4, mlp_width=512, pooled_width=128, head_hidden=64,
      dropout=0.1, attention_dropout=0.1,
      # sharing architecture (jmtl.models.architectures): hard | soft | cross_stitch | mmoe |
      # cgc | ple | dselect_k | mtan, and its hyperparameters (0 width/depth = the encoder's)
      architecture="hard", expert_width=0, expert_depth=0, soft_strength=1e-2, num_experts=4,
      # dselect_entropy: weight of DSelect-k's selector entropy regulariser (official 1e-6)
      dselect_k=2, dselect_gamma=1.0, dselect_entropy=1e-6, ple_layers=2, shared_experts=2,
      task_experts=1,
      # mixed precision (jmtl.models.precision): float32 | bfloat16. dtype: activations and
      # matmuls; param_dtype: stored params and optimizer. Losses, softmaxes, LayerNorm
      # statistics and balancers stay float32.
      dtype="float32", param_dtype="float32"))
  c.balancer = ml_collections.ConfigDict(dict(name="equal_weight"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.01, momentum=0.0,
      schedule="warmup_cosine", warmup_steps=100, final_lr_fraction=0.1, clip_norm=1.0,
      # Fine-tuning controls by parameter path (see jmtl.train.optim):
      freeze=(),  # regexes searched in "encoder/block_0/mlp_in/kernel"-style paths
      freeze_layers=0,  # also freeze encoder layers 0..k-1
      layer_decay=1.0,  # layer-wise learning-rate decay (1 = none)
      head_learning_rate=0.0))  # 0 = the base learning rate
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
      log_cosines=True,  # per-task gradient norms and cosines at logging steps (any method)
      affinity_every=0,  # inter-task affinity (lookahead loss change) every N steps; 0 = off
      affinity_lr=0.0,  # its lookahead step size; 0 = optimizer.learning_rate
      progress=True,
      tensorboard=False,
      # Recompute each encoder block's activations in the backward pass (nn.remat): less
      # memory, more time, same parameters; so not a model key, and a resume may toggle it.
      remat=False,
  ))
  return c

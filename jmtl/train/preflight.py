"""Checks a whole config before any download, build or workdir creation.

A mistake found after a data build costs the build (40 s on en_mix) and can leave an empty
workdir behind; everything that can be checked from the config and the suite file alone is
checked here: choices and ranges of every section, the balancer's name and hyperparameters,
the suite file's schema, task names and the layout ``grad_mode='rep'`` needs. The optimizer is
checked by building it (``loop.validate_config``), so its choices live in one place.
"""

from __future__ import annotations

import os

import ml_collections

from jmtl import balancers, data
from jmtl.config import ConfigError, balancer_hparams, batch_size_of
from jmtl.data import samplers
from jmtl.data.feed.pipeline import TASK_LENGTHS
from jmtl.data.spec import is_suite_file
from jmtl.models.precision import DTYPES

GRAD_MODES = ("exact", "rep")
PARALLELISM = ("none", "pmap", "sharded")
NAN_POLICIES = ("skip", "stop")


def _choice(value, choices, key: str) -> None:
  if value not in choices:
    raise ConfigError(f"{key} {value!r}: use one of {', '.join(map(str, choices))}")


def _positive(config: ml_collections.ConfigDict, section: str, *keys: str, zero_ok=()) -> None:
  for key in keys:
    value = config[section][key]
    floor = 0 if key in zero_ok else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < floor:
      raise ConfigError(f"{section}.{key} {value!r}: expected an integer >= {floor}")


def _check_model(config: ml_collections.ConfigDict) -> None:
  m = config.model
  _positive(config, "model", "width", "depth", "num_heads", "mlp_width", "pooled_width",
            "head_hidden", zero_ok=("head_hidden",))
  if m.width % m.num_heads:
    raise ConfigError(f"model.width {m.width} is not divisible by model.num_heads {m.num_heads}")
  for key in ("dropout", "attention_dropout"):
    if not 0.0 <= m[key] < 1.0:
      raise ConfigError(f"model.{key} {m[key]!r}: expected a rate in [0, 1)")
  for key in ("dtype", "param_dtype"):
    if key in m:
      _choice(m[key], DTYPES, f"model.{key}")
  if "architecture" in m:
    from jmtl.models import architectures  # the Flax modules load only when asked for
    try:
      architectures.check_name(m.architecture)
    except ValueError as e:
      raise ConfigError(f"model.architecture: {e}") from None


def _check_data_and_train(config: ml_collections.ConfigDict) -> None:
  d, t = config.data, config.train
  _choice(config.grad_mode, GRAD_MODES, "grad_mode")
  _choice(d.sampler, samplers.NAMES, "data.sampler")
  _choice(d.task_lengths, TASK_LENGTHS, "data.task_lengths")
  _choice(t.parallelism, PARALLELISM, "train.parallelism")
  _choice(t.nan_policy, NAN_POLICIES, "train.nan_policy")
  _positive(config, "data", "max_len", "vocab_size", "eval_batch_size", "prefetch",
            zero_ok=("prefetch",))
  _positive(config, "train", "steps", "log_every", "checkpoint_every", "keep_checkpoints",
            "eval_every", "num_devices", zero_ok=("eval_every", "num_devices"))
  if not d.buckets or any(not isinstance(b, int) or b < 1 for b in d.buckets):
    raise ConfigError(f"data.buckets {d.buckets!r}: expected positive lengths")
  if d.vocab_file and not os.path.isfile(d.vocab_file):
    raise ConfigError(f"data.vocab_file {d.vocab_file!r} does not exist")
  _check_diagnostics(t)
  if t.best_metric != "score" and "/" not in t.best_metric:
    raise ConfigError(f"train.best_metric {t.best_metric!r}: use 'score' or 'TASK/METRIC'")


def _check_diagnostics(t: ml_collections.ConfigDict) -> None:
  if not isinstance(t.log_cosines, bool):
    raise ConfigError(f"train.log_cosines {t.log_cosines!r}: expected True or False")
  every = t.affinity_every
  if not isinstance(every, int) or isinstance(every, bool) or every < 0:
    raise ConfigError(f"train.affinity_every {every!r}: expected an integer >= 0 (0 = off)")
  if every and every % t.log_every:
    raise ConfigError(f"train.affinity_every {every} is not a multiple of train.log_every "
                      f"{t.log_every}: affinity is logged with the training records")
  lr = t.affinity_lr
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < float("inf"):
    raise ConfigError(f"train.affinity_lr {lr!r}: expected a finite number >= 0 "
                      "(0 = optimizer.learning_rate)")


def _suite_tasks(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...] | None, str | None]:
  """The suite's task names (when known before a build: a built-in suite, a suite file) and
  its layout (a suite file's); a bad suite file raises here, naming the key path."""
  suite = config.data.suite
  names = data.validate_suite_spec(suite)
  if is_suite_file(suite):
    return names, data.read_suite_file(suite).get("layout", "multi_input")
  if names is None:
    data_dir = config.data.data_dir or str(data.default_data_dir())
    if not os.path.isfile(os.path.join(data_dir, suite, "suite.json")):
      raise ConfigError(f"data.suite {suite!r}: not a built-in suite ({', '.join(data.SUITES)})"
                        f", not built in {data_dir} and not a suite .json file")
  return names, None


def rep_needs_one_input(suite: str) -> ConfigError:
  return ConfigError(
      f"grad_mode='rep' needs one shared input per step, but suite {suite!r} is multi_input "
      "with data.sampler='all' (one batch per task): pick a mixture sampler "
      "(data.sampler=uniform|proportional|temperature|annealed) or grad_mode='exact'")


def _check_tasks(config: ml_collections.ConfigDict, names: tuple[str, ...] | None,
                 layout: str | None) -> int | None:
  """The number of tasks the run trains, when known."""
  chosen = list(config.data.tasks)
  if names is not None and chosen:
    unknown = [name for name in chosen if name not in names]
    if unknown:
      raise ConfigError(f"data.tasks names {unknown} not in suite {config.data.suite!r}; its "
                        f"tasks: {', '.join(names)}")
  if (config.grad_mode == "rep" and layout == "multi_input" and config.data.sampler == "all"
      and len(chosen or names) > 1):
    raise rep_needs_one_input(config.data.suite)
  best = config.train.best_metric
  if names is not None and best != "score" and best.split("/")[0] not in (chosen or names):
    raise ConfigError(f"train.best_metric {best!r}: no task {best.split('/')[0]!r} in this run "
                      f"(tasks: {', '.join(chosen or names)})")
  return len(chosen) if chosen else (len(names) if names is not None else None)


def _check_balancer(config: ml_collections.ConfigDict, num_tasks: int | None) -> None:
  """Builds the balancer: its name and hyperparameter names are checked by the registry
  (KeyError / TypeError with the valid ones). Values that depend on the task count (a weight
  per task) can only be checked when the count is known before the build."""
  try:
    balancers.get(config.balancer.name, num_tasks or 2, **balancer_hparams(config))
  except ValueError as e:
    if num_tasks is not None:
      raise ConfigError(f"balancer {config.balancer.name!r}: {e}") from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError / DataError (or the balancer registry's KeyError / TypeError) for
  anything wrong in ``config`` that shows without building data."""
  _check_model(config)
  _check_data_and_train(config)
  if not isinstance(config.balancer.name, str):
    raise ConfigError(f"balancer.name {config.balancer.name!r}: expected a name")
  names, layout = _suite_tasks(config)
  batch_size_of(config, names)
  _check_balancer(config, _check_tasks(config, names, layout))
  if not isinstance(config.data.anneal, (tuple, list)) or len(config.data.anneal) != 3:
    raise ConfigError(f"data.anneal {config.data.anneal!r}: expected (T0, T1, steps)")
  if config.baselines and not os.path.isfile(config.baselines):
    raise ConfigError(f"baselines file {config.baselines!r} does not exist (train the "
                      "single-task config first)")

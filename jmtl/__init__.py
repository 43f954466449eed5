"""jmtl: functional multi-task learning for NLP in JAX/Flax.

The public names below load on first use (PEP 562): ``import jmtl`` alone does not import JAX,
so the ``jmtl`` command can restart itself (``jmtl.hugepages``) and answer ``--help`` before
paying the ~1.7 s of importing JAX, Flax and the balancers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module it comes from (None: the name is a submodule of jmtl)
_PUBLIC = {
    "balancers": None,
    "multi_input_jacobian": "jmtl.gradients",
    "same_input_jacobian": "jmtl.gradients",
    "same_input_representation": "jmtl.gradients",
    "task_losses": "jmtl.gradients",
    "weighted_loss_grads": "jmtl.gradients",
    "BertConfig": "jmtl.models",
    "EncoderConfig": "jmtl.models",
    "MultiTaskModel": "jmtl.models",
    "Predictor": "jmtl.predict",
    "TaskKind": "jmtl.tasks",
    "TaskSpec": "jmtl.tasks",
    "make_train_step": "jmtl.train.parallel",
    "TrainState": "jmtl.train.state",
    "create_train_state": "jmtl.train.state",
    "embed": "jmtl.pretrained.embedding",  # loads the tokenizer and data stack when used
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
  from jmtl import balancers
  from jmtl.gradients import (multi_input_jacobian, same_input_jacobian,
                              same_input_representation, task_losses, weighted_loss_grads)
  from jmtl.models import BertConfig, EncoderConfig, MultiTaskModel
  from jmtl.predict import Predictor
  from jmtl.pretrained.embedding import embed
  from jmtl.tasks import TaskKind, TaskSpec
  from jmtl.train.parallel import make_train_step
  from jmtl.train.state import TrainState, create_train_state


def __getattr__(name: str):
  if name not in _PUBLIC:
    raise AttributeError(f"module 'jmtl' has no attribute {name!r}")
  module = _PUBLIC[name]
  value = (importlib.import_module(f"jmtl.{name}") if module is None
           else getattr(importlib.import_module(module), name))
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))

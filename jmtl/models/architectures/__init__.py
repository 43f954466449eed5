"""Sharing architectures on the sequence encoder, chosen by name (``model.architecture``).

Every architecture implements ``jmtl.models.protocol``, so each trains with every balancer
through ``jmtl.make_train_step``. What is shared (``params[model.shared_key]``, balanced) and
what is private to a task (``params[model.task_key][name]``, its own gradient):

============  ==============================================  ===============================
name          shared (balanced)                               private to a task
============  ==============================================  ===============================
hard          the encoder                                     its head
soft          the embeddings                                  its encoder column and tower;
                                                              + L2 penalty to the columns' mean
cross_stitch  embeddings, T columns, cross-stitch units       its tower
mmoe          embeddings, E experts                           its softmax gate and tower
cgc           embeddings, shared experts                      its experts, gate and tower
ple           embeddings, layers 1..n-1, last shared experts  its last-layer experts, gate, tower
dselect_k     embeddings, E experts                           its k selectors, mix and tower;
                                                              + selector entropy (aux loss)
mtan          embeddings and encoder                          its attention modules and tower
============  ==============================================  ===============================

Grad modes: every architecture has a shared token table and a shared representation, so
``grad_mode="exact"`` (the compact Gram path included) and ``grad_mode="rep"`` both apply;
rep needs the same-input layout, as for hard sharing. Columns and experts use
``light_encoder(expert_width, expert_depth)`` so T or E of them fit on a CPU; ``mtan`` (one
shared encoder, like ``hard``) uses the full encoder.

Dropout: every encoder block drops out at ``model.dropout`` / ``attention_dropout`` in
training, shared or private (soft's task columns and PLE/CGC's task experts get the task's
own key from the step key); towers, gates and task attention modules have none, like hard
sharing's heads. Evaluation is deterministic.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jmtl import names
from jmtl.models.architectures.common import Architecture, light_encoder
from jmtl.models.architectures.cross_stitch import CrossStitch
from jmtl.models.architectures.dselect import DSelectK
from jmtl.models.architectures.mmoe import MMoE
from jmtl.models.architectures.mtan import TaskAttention
from jmtl.models.architectures.ple import PLE
from jmtl.models.architectures.soft import SoftSharing
from jmtl.models.encoder import EncoderConfig
from jmtl.models.multitask import MultiTaskModel


@dataclasses.dataclass(frozen=True)
class Options:
  """Architecture hyperparameters (the ``model.*`` config keys of the same names)."""

  expert_width: int = 0  # 0 = the encoder's width
  expert_depth: int = 0  # 0 = the encoder's depth
  soft_strength: float = 1e-2
  num_experts: int = 4
  dselect_k: int = 2
  dselect_gamma: float = 1.0
  dselect_entropy: float = 1e-6  # weight of the selectors' entropy regulariser (0 = off)
  ple_layers: int = 2
  shared_experts: int = 2
  task_experts: int = 1


def _light(encoder, o: Options):
  return light_encoder(encoder, o.expert_width, o.expert_depth)


_BUILDERS: dict[str, Callable] = {
    "hard": lambda enc, tasks, o, **kw: MultiTaskModel(enc, tasks, **kw),
    "soft": lambda enc, tasks, o, **kw: SoftSharing(_light(enc, o), tasks, strength=o.soft_strength, **kw),
    "cross_stitch": lambda enc, tasks, o, **kw: CrossStitch(_light(enc, o), tasks, **kw),
    "mmoe": lambda enc, tasks, o, **kw: MMoE(_light(enc, o), tasks, num_experts=o.num_experts, **kw),
    "cgc": lambda enc, tasks, o, **kw: PLE(_light(enc, o), tasks, num_layers=1,
                                           shared_experts=o.shared_experts,
                                           task_experts=o.task_experts, **kw),
    "ple": lambda enc, tasks, o, **kw: PLE(_light(enc, o), tasks, num_layers=o.ple_layers,
                                           shared_experts=o.shared_experts,
                                           task_experts=o.task_experts, **kw),
    "dselect_k": lambda enc, tasks, o, **kw: DSelectK(_light(enc, o), tasks,
                                                      num_experts=o.num_experts, k=o.dselect_k,
                                                      gamma=o.dselect_gamma,
                                                      entropy_weight=o.dselect_entropy, **kw),
    "mtan": lambda enc, tasks, o, **kw: TaskAttention(enc, tasks, **kw),
}
NAMES: tuple[str, ...] = tuple(_BUILDERS)


def check_name(name: str) -> str:
  if name not in _BUILDERS:
    raise ValueError(names.unknown("architecture", name, NAMES))
  return name


def build(name: str, encoder: EncoderConfig, tasks, *, layout: str = "same_input",
          head_hidden: int = 64, options: Options = Options()):
  """The model for architecture ``name``; a bad name or hyperparameter is a ValueError."""
  return _BUILDERS[check_name(name)](encoder, tuple(tasks), options, layout=layout,
                                     head_hidden=head_hidden)


__all__ = ["Architecture", "CrossStitch", "DSelectK", "MMoE", "NAMES", "Options", "PLE",
           "SoftSharing", "TaskAttention", "build", "check_name", "light_encoder"]

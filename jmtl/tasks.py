"""Declarative task specs and their masked losses.

Batch layout (what the data pipeline produces and the engine consumes):

* ``input_ids``      int32 ``[B, L]``   token ids (MLM inputs already carry [MASK] ids)
* ``attention_mask`` int32 ``[B, L]``   1 for real tokens, 0 for padding
* ``token_type_ids`` int32 ``[B, L]``   optional; 0/1 segment ids for sentence pairs
* ``batch[spec.label_key]``             the task's labels:
    classification ``[B]`` int32, regression ``[B]`` float32, tagging ``[B, L]`` int32,
    multi_label ``[B, C]`` float32 (multi-hot),
    span_qa ``[B, 2]`` int32 (start, end token index), mlm ``[B, L]`` int32 (original ids)
* ``batch[spec.mask_key]``  float32, the label's shape without the class axis
  (``[B]`` or ``[B, L]``); 1 where a label exists. It folds in padding, sub-words after the
  first, and examples that carry no label for this task. Labels under a 0 mask may hold
  any valid index (use 0).

*Same input*: one batch dict holding every task's labels. *Multi-input*: a dict
``{task_name: batch}``, each batch holding only its task's labels.

A loss is a masked *sum* plus the number of labelled units, so the engine can normalise
by a count summed across devices: every data-parallel layout then takes the same step as
one large batch, and a batch without labels gives loss 0 and gradient 0, never NaN.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class TaskKind(enum.StrEnum):
  CLASSIFICATION = "classification"  # sentence or sentence pair, from the pooled vector
  REGRESSION = "regression"  # one float per example, from the pooled vector
  TAGGING = "tagging"  # one label per (first sub-word of a) word
  SPAN_QA = "span_qa"  # start and end token of an answer span
  MLM = "mlm"  # masked-LM auxiliary task
  MULTI_LABEL = "multi_label"  # any subset of C labels per example, one sigmoid per label


_TOKEN_LEVEL = (TaskKind.TAGGING, TaskKind.SPAN_QA, TaskKind.MLM)

# The one table of metrics per kind: what evaluation can compute ("loss" always), and the
# defaults a spec gets when it names none. ``jmtl.metrics`` computes exactly these names.
METRICS_BY_KIND: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.CLASSIFICATION: ("accuracy", "macro_f1", "mcc"),
    TaskKind.REGRESSION: ("pearson", "spearman"),
    TaskKind.TAGGING: ("accuracy", "macro_f1", "mcc", "span_f1", "span_precision", "span_recall"),
    TaskKind.SPAN_QA: ("exact_match", "f1", "span_f1", "best_f1", "best_null_threshold"),
    TaskKind.MLM: ("accuracy", "perplexity"),
    TaskKind.MULTI_LABEL: ("micro_f1", "macro_f1", "subset_accuracy", "best_threshold",
                           "tuned_micro_f1"),
}
DEFAULT_METRICS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.CLASSIFICATION: ("accuracy", "macro_f1"),
    TaskKind.REGRESSION: ("pearson", "spearman"),
    TaskKind.TAGGING: ("accuracy",),
    TaskKind.SPAN_QA: ("exact_match", "f1"),
    TaskKind.MLM: ("accuracy", "perplexity"),
    TaskKind.MULTI_LABEL: ("micro_f1", "macro_f1"),
}


def valid_metrics(kind: TaskKind | str) -> tuple[str, ...]:
  """Metric names evaluation computes for a task kind ("loss" is always there)."""
  return ("loss",) + METRICS_BY_KIND[TaskKind(kind)]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One task: what it predicts, where its labels are, and how it is scored.

  Attributes:
    name: unique task name; also the key of its head in ``params['heads']``.
    kind: a ``TaskKind``.
    num_labels: classes (classification, tagging), vocabulary size (mlm); 1 for
      regression, 2 for span_qa.
    label_key: batch key of the labels; defaults to ``name``.
    metrics: metric names computed at evaluation; defaults by kind. NER tagging
      adds ``"span_f1"`` (entity-level, BIO ``label_names``).
    main_metric: metric used for model selection and the MTL summary (Δm).
    higher_is_better: direction of ``main_metric`` (False for e.g. perplexity).
    label_names: names of the classes, index-aligned (BIO tags for span F1).
    threshold: multi_label only: a label is predicted when its sigmoid exceeds this
      (the ``best_threshold`` metric tunes it on a validation split).
  """

  name: str
  kind: TaskKind
  num_labels: int = 1
  label_key: str = ""
  metrics: tuple[str, ...] = ()
  main_metric: str = ""
  higher_is_better: bool = True
  label_names: tuple[str, ...] = ()
  threshold: float = 0.5

  def __post_init__(self):
    if not self.name:
      raise ValueError("TaskSpec needs a non-empty name")
    try:
      kind = TaskKind(self.kind)
    except ValueError:
      raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of "
                       f"{', '.join(TaskKind)}") from None
    object.__setattr__(self, "kind", kind)
    if not self.label_key:
      object.__setattr__(self, "label_key", self.name)
    if not self.metrics:
      object.__setattr__(self, "metrics", DEFAULT_METRICS[kind])
    object.__setattr__(self, "metrics", tuple(self.metrics))
    valid = valid_metrics(kind)
    if unknown := [name for name in self.metrics if name not in valid]:
      raise ValueError(f"task {self.name!r} ({kind}): unknown metric(s) {unknown}; valid "
                       f"metrics are {list(valid)}")
    if not self.main_metric:
      object.__setattr__(self, "main_metric", self.metrics[0])
    if self.main_metric not in self.metrics:
      raise ValueError(f"task {self.name!r}: main_metric {self.main_metric!r} not in {self.metrics}")
    expected = {TaskKind.REGRESSION: 1, TaskKind.SPAN_QA: 2}.get(kind)
    if expected is not None and self.num_labels not in (1, expected):
      raise ValueError(f"task {self.name!r}: a {kind} task has num_labels={expected}")
    if expected is not None:
      object.__setattr__(self, "num_labels", expected)
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f"task {self.name!r}: threshold {self.threshold} is not in (0, 1)")
    if kind == TaskKind.MULTI_LABEL and self.num_labels < 1:
      raise ValueError(f"task {self.name!r}: a multi_label task needs num_labels >= 1")
    if kind in (TaskKind.CLASSIFICATION, TaskKind.TAGGING, TaskKind.MLM) and self.num_labels < 2:
      raise ValueError(f"task {self.name!r}: a {kind} task needs num_labels >= 2")
    if self.label_names and len(self.label_names) != self.num_labels:
      raise ValueError(
          f"task {self.name!r}: {len(self.label_names)} label_names for {self.num_labels} labels")

  @property
  def mask_key(self) -> str:
    return f"{self.label_key}_mask"

  @property
  def token_level(self) -> bool:
    """Whether the head reads token features (else the pooled sentence vector)."""
    return self.kind in _TOKEN_LEVEL

  def loss_sum(self, outputs: Array, batch: Mapping[str, Array]) -> tuple[Array, Array]:
    """Masked loss *sum* over labelled units and the number of labelled units."""
    # At least float32 (bf16 outputs are upcast), never lower: float64 runs stay float64.
    dtype = jnp.promote_types(outputs.dtype, jnp.float32)
    outputs = outputs.astype(dtype)
    mask = batch[self.mask_key].astype(dtype)
    labels = batch[self.label_key]
    # Masked-out labels may hold anything (NaN, out-of-range ids): replace them before the
    # loss, since a where() after it would still send NaN through the backward pass.
    label_mask = mask if mask.ndim == labels.ndim else mask[..., None]
    labels = jnp.where(label_mask > 0, labels, jnp.zeros_like(labels))
    match self.kind:
      case TaskKind.CLASSIFICATION | TaskKind.TAGGING | TaskKind.MLM:
        per_unit = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
      case TaskKind.REGRESSION:
        per_unit = jnp.square(outputs - labels.astype(dtype))
      case TaskKind.MULTI_LABEL:  # mean BCE over the labels of each example
        per_unit = optax.sigmoid_binary_cross_entropy(outputs, labels.astype(dtype)).mean(-1)
      case TaskKind.SPAN_QA:
        # outputs [B, L, 2]: start and end logits; padding may never be an answer.
        logits = jnp.moveaxis(outputs, -1, 1)  # [B, 2, L]
        valid = batch["attention_mask"][:, None, :] > 0
        logits = jnp.where(valid, logits, -1e9)
        per_unit = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(-1)
    total = jnp.sum(per_unit * mask)
    return total, jnp.sum(mask)

  def loss(self, outputs: Array, batch: Mapping[str, Array]) -> Array:
    """Masked mean loss; 0 when the batch holds no label for this task."""
    total, count = self.loss_sum(outputs, batch)
    return total / jnp.maximum(count, 1.0)

  def predict(self, outputs: Array) -> Array:
    """Predictions from head outputs: class ids, floats, [B, 2] spans, or [B, C] label
    probabilities (multi_label: thresholded on the host, so the threshold can be tuned)."""
    if self.kind == TaskKind.REGRESSION:
      return outputs
    if self.kind == TaskKind.MULTI_LABEL:
      return jax.nn.sigmoid(outputs)
    if self.kind == TaskKind.SPAN_QA:
      return jnp.argmax(outputs, axis=1)  # [B, 2]: best start and best end position
    return jnp.argmax(outputs, axis=-1)


def task_names(tasks: tuple[TaskSpec, ...]) -> tuple[str, ...]:
  names = tuple(t.name for t in tasks)
  if len(set(names)) != len(names):
    raise ValueError(f"task names must be unique, got {names}")
  return names

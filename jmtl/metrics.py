"""Host-side evaluation metrics and the multi-task summary (Δm).

Everything here runs in float64 NumPy on arrays the evaluation loop has pulled off the
devices and concatenated over batches; nothing here is traced. Scores are fractions in
[0, 1] (never percentages), except ``delta_m`` which is a percentage by definition.

Conventions, fixed so numbers are comparable with the usual tools:

* ``mask`` selects the labelled units (examples or words); everything else is ignored.
* Classification metrics follow scikit-learn: ``macro_f1`` averages the per-class F1 over
  the classes present in the labels *or* the predictions (``labels=None`` in sklearn), and
  ``mcc`` is Gorodkin's multi-class R_K, 0 when undefined.
* ``span_f1`` on tagging tasks is entity-level micro P/R/F1 as conlleval.pl and seqeval's
  default mode compute them (lenient chunking: an ``I-`` after ``O`` or after another type
  starts an entity); 0 when there is nothing to divide by.
* A metric over zero labelled units is NaN: there is nothing to score, and 0 would look
  like a real (terrible) result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jmtl.tasks import TaskKind, TaskSpec, valid_metrics  # noqa: F401 (re-exported)

ArrayLike = Any  # np.ndarray, jax.Array, or nested Python lists

_NAN = float("nan")


def _masked(predictions: ArrayLike, labels: ArrayLike,
            mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
  """Flattens predictions and labels down to their masked-in units."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
  if mask is None:
    return predictions.reshape(-1), labels.reshape(-1)
  keep = np.asarray(mask) > 0
  if keep.shape != labels.shape:
    raise ValueError(f"mask {keep.shape} does not match labels {labels.shape}")
  return predictions[keep], labels[keep]


# --- classification ------------------------------------------------------------------------


def accuracy(predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Fraction of masked-in units whose predicted class equals the label."""
  predictions, labels = _masked(predictions, labels, mask)
  if labels.size == 0:
    return _NAN
  return float(np.mean(predictions == labels))


def _confusion(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Confusion matrix [true, predicted] over the classes present in either array."""
  _, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  num_classes = int(codes.max()) + 1
  true_codes, predicted_codes = codes[:labels.size], codes[labels.size:]
  flat = np.bincount(true_codes * num_classes + predicted_codes, minlength=num_classes**2)
  return flat.reshape(num_classes, num_classes).astype(np.float64)


def macro_f1(predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Unweighted mean of per-class F1 over classes present in labels or predictions.

  This is sklearn's ``f1_score(average="macro")`` with ``labels=None``: a class that
  never occurs in either array is not averaged in (it would be 0/0).
  """
  predictions, labels = _masked(predictions, labels, mask)
  if labels.size == 0:
    return _NAN
  confusion = _confusion(predictions, labels)
  true_positives = np.diag(confusion)
  # 2TP / (2TP + FP + FN) = 2TP / (true count + predicted count); never 0/0 for a present class.
  per_class = 2.0 * true_positives / (confusion.sum(axis=1) + confusion.sum(axis=0))
  return float(np.mean(per_class))


def mcc(predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Multi-class Matthews correlation (Gorodkin 2004, R_K), as sklearn computes it.

  ``(c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))`` with ``t``/``p`` the true/predicted
  class counts, ``c`` the correct count and ``s`` the total; 0 when a factor of the
  denominator is 0 (one class only in labels or predictions), as in sklearn.
  """
  predictions, labels = _masked(predictions, labels, mask)
  if labels.size == 0:
    return _NAN
  confusion = _confusion(predictions, labels)
  true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  correct, total = np.trace(confusion), confusion.sum()
  covariance = correct * total - true_counts @ predicted_counts
  denominator = ((total**2 - predicted_counts @ predicted_counts)
                 * (total**2 - true_counts @ true_counts))
  if denominator == 0:
    return 0.0
  return float(covariance / math.sqrt(denominator))


# --- regression ----------------------------------------------------------------------------


def _pearson_float64(x: np.ndarray, y: np.ndarray) -> float:
  x, y = x.astype(np.float64), y.astype(np.float64)
  if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    return _NAN
  x_centred, y_centred = x - x.mean(), y - y.mean()
  denominator = math.sqrt(float(x_centred @ x_centred) * float(y_centred @ y_centred))
  if denominator == 0:
    return _NAN  # a constant series has no correlation (scipy also returns NaN)
  return float(np.clip(x_centred @ y_centred / denominator, -1.0, 1.0))


def average_ranks(values: ArrayLike) -> np.ndarray:
  """1-based ranks with ties given the mean of the ranks they span (scipy's "average")."""
  values = np.asarray(values).reshape(-1)
  _, group_of, group_sizes = np.unique(values, return_inverse=True, return_counts=True)
  group_starts = np.cumsum(group_sizes) - group_sizes  # 0-based rank of each group's first
  return (group_starts + (group_sizes + 1) / 2.0)[group_of]


def pearson(predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Pearson correlation of predictions and labels; NaN if either is constant."""
  return _pearson_float64(*_masked(predictions, labels, mask))


def spearman(predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Spearman rank correlation: Pearson of the average ranks (ties share their mean rank)."""
  predictions, labels = _masked(predictions, labels, mask)
  if not (np.all(np.isfinite(predictions)) and np.all(np.isfinite(labels))):
    return _NAN
  return _pearson_float64(average_ranks(predictions), average_ranks(labels))


# --- entity-level span F1 for BIO tagging ---------------------------------------------------


class SpanScores(NamedTuple):
  """Entity-level micro-averaged scores and the entity counts behind them."""
  precision: float
  recall: float
  f1: float
  num_gold: int
  num_predicted: int
  num_correct: int


def _split_tag(tag: str) -> tuple[str, str]:
  """"B-PER" -> ("B", "PER"); "O" -> ("O", "_"), exactly as seqeval's prefix parsing."""
  return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  # conlleval.pl's endOfChunk, restricted to the B/I/O/E/S tags (no "[" "]" brackets).
  if prev_tag in ("E", "S"):
    return True
  if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev_tag not in ("O", ".") and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  # conlleval.pl's startOfChunk: an I- or E- that cannot continue an entity opens one.
  if tag in ("B", "S"):
    return True
  if tag in ("E", "I") and prev_tag in ("E", "S", "O"):
    return True
  return tag not in ("O", ".") and prev_type != type_


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """Entities ``(type, first, last)`` of one tag sequence, conlleval-style.

  Lenient like conlleval: ``O I-PER`` is a PER entity, ``B-PER I-LOC`` is two entities,
  and an entity still open at the end of the sequence is closed there.
  """
  entities = []
  prev_tag, prev_type, begin = "O", "_", 0
  # A trailing "O" closes whatever entity is still open at the end.
  for position, (tag, type_) in enumerate([_split_tag(t) for t in tags] + [("O", "_")]):
    if _chunk_ends(prev_tag, tag, prev_type, type_):
      entities.append((prev_type, begin, position - 1))
    if _chunk_starts(prev_tag, tag, prev_type, type_):
      begin = position
    prev_tag, prev_type = tag, type_
  return entities


def _rows(values: Any) -> list:
  """Rows of a nested list or of an array (pulled to host once, not row by row)."""
  return list(values) if isinstance(values, (list, tuple)) else list(np.asarray(values))


def _tag_rows(tags: Any, label_names: Sequence[str] | None,
              mask: ArrayLike | None) -> list[list[str]]:
  """Rows of tag strings, keeping only masked-in positions (dropping sub-words, padding)."""
  tag_rows = _rows(tags)
  mask_rows = None if mask is None else _rows(mask)
  if mask_rows is not None and len(mask_rows) != len(tag_rows):
    raise ValueError(f"mask has {len(mask_rows)} rows for {len(tag_rows)} tag sequences")
  out = []
  for index, row in enumerate(tag_rows):
    row = np.asarray(row)
    if mask_rows is not None:
      keep = np.asarray(mask_rows[index]) > 0
      if keep.shape != row.shape:
        raise ValueError(f"sequence {index}: mask of shape {keep.shape} for {row.shape} tags")
      row = row[keep]
    row = row.tolist()
    if row and not isinstance(row[0], str):
      if label_names is None:
        raise ValueError("integer tags need label_names to be read as BIO tags")
      row = [label_names[int(tag)] for tag in row]
    out.append(row)
  return out


def entity_scores(predictions: Sequence[Sequence[str | int]] | np.ndarray,
                  labels: Sequence[Sequence[str | int]] | np.ndarray,
                  label_names: Sequence[str] | None = None,
                  mask: ArrayLike | None = None) -> SpanScores:
  """Entity-level micro precision, recall and F1 of BIO-tagged sequences (conlleval).

  Args:
    predictions: predicted tags, one sequence per sentence: strings, or class ids read
      through ``label_names``; an ``[N, L]`` array works too.
    labels: gold tags, in the same form.
    label_names: tag name of each class id, e.g. ``("O", "B-PER", "I-PER")``.
    mask: optional ``[N, L]``; 1 for positions that are words. Masked-out positions
      (padding, sub-words after the first) are removed before chunking, so a word
      sequence is scored as conlleval would see it.

  Returns:
    ``SpanScores``. An entity counts as correct only with the same type, first and last
    word in the same sentence. Precision (recall) is 0 without predicted (gold) entities,
    F1 is 0 when both are 0, as conlleval reports; all three are NaN with no word at all.
  """
  predicted_rows = _tag_rows(predictions, label_names, mask)
  gold_rows = _tag_rows(labels, label_names, mask)
  if len(predicted_rows) != len(gold_rows):
    raise ValueError(f"{len(predicted_rows)} predicted sequences for {len(gold_rows)} gold ones")
  gold, predicted, num_words = set(), set(), 0
  for index, (predicted_row, gold_row) in enumerate(zip(predicted_rows, gold_rows, strict=True)):
    if len(predicted_row) != len(gold_row):
      raise ValueError(
          f"sequence {index}: {len(predicted_row)} predicted tags, {len(gold_row)} gold")
    num_words += len(gold_row)
    gold.update((index, *entity) for entity in bio_entities(gold_row))
    predicted.update((index, *entity) for entity in bio_entities(predicted_row))
  correct = len(gold & predicted)
  if num_words == 0:
    return SpanScores(_NAN, _NAN, _NAN, 0, 0, 0)
  precision = correct / len(predicted) if predicted else 0.0
  recall = correct / len(gold) if gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
  return SpanScores(precision, recall, f1, len(gold), len(predicted), correct)


# --- extractive QA spans -------------------------------------------------------------------


def _spans(predictions: ArrayLike, labels: ArrayLike,
           mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape or labels.ndim != 2 or labels.shape[1] != 2:
    raise ValueError(
        f"spans must be [N, 2] (start, end), got {predictions.shape} and {labels.shape}")
  if mask is None:
    return predictions, labels
  keep = np.asarray(mask) > 0
  if keep.shape == labels.shape:  # a per-position mask: an example counts if both are set
    keep = keep.all(axis=-1)
  if keep.shape != labels.shape[:1]:
    raise ValueError(f"mask {keep.shape} does not match {labels.shape[0]} spans")
  return predictions[keep], labels[keep]


def qa_exact_match(predictions: ArrayLike, labels: ArrayLike,
                   mask: ArrayLike | None = None) -> float:
  """Fraction of examples whose predicted (start, end) equals the gold span exactly."""
  predictions, labels = _spans(predictions, labels, mask)
  if labels.shape[0] == 0:
    return _NAN
  return float(np.mean(np.all(predictions == labels, axis=-1)))


def qa_span_f1(predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Mean token-overlap F1 of predicted and gold spans (SQuAD's F1 on token positions).

  Spans are inclusive ``[start, end]``; a prediction with ``end < start`` is empty and
  scores 0. Per example, F1 = 2 |overlap| / (|predicted| + |gold|), which equals
  2PR / (P + R) with P = |overlap| / |predicted| and R = |overlap| / |gold|.
  """
  predictions, labels = _spans(predictions, labels, mask)
  if labels.shape[0] == 0:
    return _NAN
  predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
  predicted_length = np.maximum(predictions[:, 1] - predictions[:, 0] + 1, 0)
  gold_length = np.maximum(labels[:, 1] - labels[:, 0] + 1, 0)
  overlap = np.maximum(np.minimum(predictions[:, 1], labels[:, 1])
                       - np.maximum(predictions[:, 0], labels[:, 0]) + 1, 0)
  total_length = predicted_length + gold_length
  f1 = np.where(total_length > 0, 2.0 * overlap / np.maximum(total_length, 1), 0.0)
  return float(np.mean(f1))


# --- multi-label classification ---------------------------------------------------------


def _multi_hot(probabilities: ArrayLike, labels: ArrayLike, mask: ArrayLike | None,
               threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """Predicted and gold [N, C] booleans of the masked-in examples."""
  probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels) > 0.5
  if probabilities.shape != labels.shape or labels.ndim != 2:
    raise ValueError(f"multi-label scores and labels must be [N, C], got {probabilities.shape} "
                     f"and {labels.shape}")
  keep = np.ones(labels.shape[0], bool) if mask is None else np.asarray(mask).reshape(-1) > 0
  return probabilities[keep] > threshold, labels[keep]


def micro_f1(probabilities: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None,
             threshold: float = 0.5) -> float:
  """F1 of all (example, label) decisions pooled: 2TP / (2TP + FP + FN); 0 if 0/0.

  Args:
    probabilities: ``[N, C]`` sigmoid outputs; a label is predicted above ``threshold``.
    labels: ``[N, C]`` multi-hot gold labels.
    mask: ``[N]``, examples that count.
  """
  predicted, gold = _multi_hot(probabilities, labels, mask, threshold)
  if gold.shape[0] == 0:
    return _NAN
  true_positives = np.sum(predicted & gold)
  denominator = np.sum(predicted) + np.sum(gold)
  return float(2.0 * true_positives / denominator) if denominator else 0.0


def multilabel_macro_f1(probabilities: ArrayLike, labels: ArrayLike,
                        mask: ArrayLike | None = None, threshold: float = 0.5) -> float:
  """Unweighted mean over all C labels of the per-label F1; a label never gold nor
  predicted scores 0 (sklearn's ``f1_score(average="macro")`` on multi-hot arrays)."""
  predicted, gold = _multi_hot(probabilities, labels, mask, threshold)
  if gold.shape[0] == 0:
    return _NAN
  true_positives = np.sum(predicted & gold, axis=0)
  denominator = np.sum(predicted, axis=0) + np.sum(gold, axis=0)
  per_label = np.where(denominator > 0, 2.0 * true_positives / np.maximum(denominator, 1), 0.0)
  return float(np.mean(per_label))


def subset_accuracy(probabilities: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None,
                    threshold: float = 0.5) -> float:
  """Fraction of examples whose predicted label set equals the gold set exactly."""
  predicted, gold = _multi_hot(probabilities, labels, mask, threshold)
  if gold.shape[0] == 0:
    return _NAN
  return float(np.mean(np.all(predicted == gold, axis=1)))


def best_threshold(probabilities: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
                   ) -> tuple[float, float]:
  """The threshold in 0.05, 0.10, ..., 0.95 with the best micro F1, and that F1.

  Tune it on validation and set the task's ``threshold`` to it; ties go to the threshold
  closest to 0.5.
  """
  grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
  scores = np.array([micro_f1(probabilities, labels, mask, t) for t in grid])
  if np.all(np.isnan(scores)):
    return _NAN, _NAN
  best = np.flatnonzero(scores >= np.nanmax(scores) - 1e-12)
  choice = best[np.argmin(np.abs(grid[best] - 0.5))]
  return float(grid[choice]), float(scores[choice])


def perplexity(loss_sum: float, count: float) -> float:
  """exp of the mean per-token cross-entropy; NaN without tokens, inf past float range."""
  if count <= 0:
    return _NAN
  mean_loss = float(loss_sum) / float(count)
  return math.exp(mean_loss) if mean_loss < 709.0 else math.inf  # exp(709.8) overflows


# --- dispatch for the evaluation loop -------------------------------------------------------

_UNIT_METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "mcc": mcc,
                 "pearson": pearson, "spearman": spearman}


def task_metrics(spec: TaskSpec, predictions: ArrayLike, labels: ArrayLike, mask: ArrayLike,
                 loss_sum: float, count: float) -> dict[str, float]:
  """Every metric in ``spec.metrics``, plus "loss", for one task's whole evaluation set.

  Args:
    spec: the task.
    predictions: ``spec.predict`` outputs concatenated over eval batches: class ids
      ``[N]`` / ``[N, L]``, floats ``[N]``, or spans ``[N, 2]``.
    labels: the task's labels, same layout as in the batch.
    mask: the task's label mask (``[N]`` or ``[N, L]``); only units with mask > 0 count.
    loss_sum: summed masked loss over the evaluation set (``TaskSpec.loss_sum`` totals).
    count: number of labelled units behind ``loss_sum``.

  Returns:
    ``{"loss": loss_sum / count, metric: value, ...}`` as Python floats. On a tagging
    task "span_f1" / "span_precision" / "span_recall" are entity-level over the BIO
    ``spec.label_names``; on a span_qa task "f1"/"span_f1" are token-overlap F1 of
    window spans (``jmtl.train.qa_eval`` replaces EM and "f1" by answer-text scores).

  Raises:
    ValueError: entity metrics without ``label_names``, or mismatched shapes (a metric
      the kind does not define already fails when the ``TaskSpec`` is built).
  """
  wants_entities = (spec.kind == TaskKind.TAGGING
                    and any(name.startswith("span_") for name in spec.metrics))
  if wants_entities and not spec.label_names:
    raise ValueError(f"task {spec.name!r}: entity-level span metrics need BIO label_names")
  predictions, labels, mask = np.asarray(predictions), np.asarray(labels), np.asarray(mask)
  if spec.kind == TaskKind.REGRESSION and predictions.size == labels.size:
    predictions = predictions.reshape(labels.shape)  # tolerate a trailing axis of 1
  results = {"loss": float(loss_sum) / float(count) if count > 0 else _NAN}
  try:
    entities = None
    if wants_entities:  # computed once for span_f1, span_precision and span_recall
      entities = entity_scores(predictions, labels, spec.label_names, mask)
    for name in spec.metrics:
      if name == "loss":
        continue
      if entities is not None and name.startswith("span_"):
        results[name] = float(getattr(entities, name.removeprefix("span_")))
      elif spec.kind == TaskKind.SPAN_QA:
        qa_metric = qa_exact_match if name == "exact_match" else qa_span_f1
        results[name] = qa_metric(predictions, labels, mask)
      elif spec.kind == TaskKind.MULTI_LABEL:
        results[name] = _multi_label_metric(name, spec, predictions, labels, mask)
      elif name == "perplexity":
        results[name] = perplexity(loss_sum, count)
      else:
        results[name] = _UNIT_METRICS[name](predictions, labels, mask)
  except ValueError as error:
    raise ValueError(f"task {spec.name!r}: {error}") from error
  return results


def _multi_label_metric(name: str, spec: TaskSpec, probabilities, labels, mask) -> float:
  if name in ("best_threshold", "tuned_micro_f1"):
    return best_threshold(probabilities, labels, mask)[name == "tuned_micro_f1"]
  metric = {"micro_f1": micro_f1, "macro_f1": multilabel_macro_f1,
            "subset_accuracy": subset_accuracy}[name]
  return metric(probabilities, labels, mask, spec.threshold)


# --- multi-task summary ---------------------------------------------------------------------


def delta_m(results: Mapping[str, float], baselines: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
  """Average relative change over single-task baselines, in percent (Maninis et al. 2019).

  ``Δm = 100 / T * sum_t (-1)^{l_t} (M_t - M_b,t) / M_b,t`` with ``l_t = 1`` when lower
  is better for task t, so a positive Δm is an improvement (Liu et al. 2021's convention).
  T is the number of tasks in ``results``; each has one metric (its main metric).

  Raises:
    ValueError: no task, a task without a baseline or direction, or a zero or
      non-finite baseline (the relative change is undefined).
  """
  if not results:
    raise ValueError("delta_m needs at least one task result")
  total = 0.0
  for task, value in results.items():
    if task not in baselines:
      raise ValueError(f"delta_m: no baseline for task {task!r} (baselines: {sorted(baselines)})")
    if task not in higher_is_better:
      raise ValueError(f"delta_m: no higher_is_better entry for task {task!r}")
    baseline = float(baselines[task])
    if baseline == 0 or not math.isfinite(baseline):
      raise ValueError(
          f"delta_m: baseline of task {task!r} is {baseline}; relative change undefined")
    sign = 1.0 if higher_is_better[task] else -1.0
    total += sign * (float(value) - baseline) / baseline
  return 100.0 * total / len(results)


def main_metric_results(tasks: Sequence[TaskSpec], table: Mapping[str, Mapping[str, float]]
                        ) -> tuple[dict[str, float], dict[str, bool]]:
  """Each task's main metric and direction from ``{task: {metric: value}}``, for ``delta_m``."""
  results, directions = {}, {}
  for spec in tasks:
    if spec.main_metric not in table.get(spec.name, {}):
      raise ValueError(f"task {spec.name!r}: main metric {spec.main_metric!r} missing from results")
    results[spec.name] = float(table[spec.name][spec.main_metric])
    directions[spec.name] = spec.higher_is_better
  return results, directions


def summarize_results(table: Mapping[str, Mapping[str, float]],
                      main_metrics: Mapping[str, str] | None = None,
                      delta: float | None = None, digits: int = 4) -> str:
  """A fixed-width text table of ``{task: {metric: value}}`` for the final print.

  Columns are "task", then "loss" if present, then the other metrics in first-seen
  order; a task without a metric shows "-". A task's main metric (``main_metrics``)
  carries a "*". ``delta`` adds a closing ``delta_m`` line.
  """
  metric_names = []
  for metrics in table.values():
    metric_names += [name for name in metrics if name not in metric_names]
  if "loss" in metric_names:
    metric_names.insert(0, metric_names.pop(metric_names.index("loss")))
  main_metrics = main_metrics or {}
  header = ["task", *(name + " " for name in metric_names)]  # the space lines up with "*"
  rows = []
  for task, metrics in table.items():
    cells = [task]
    for name in metric_names:
      cell = f"{float(metrics[name]):.{digits}f}" if name in metrics else "-"
      cells.append(cell + ("*" if main_metrics.get(task) == name else " "))
    rows.append(cells)
  widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
  lines = []
  for row in [header, *rows]:
    task_cell = row[0].ljust(widths[0])
    value_cells = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
    lines.append("  ".join([task_cell, *value_cells]).rstrip())
  lines.insert(1, "-" * (sum(widths) + 2 * (len(widths) - 1)))
  if main_metrics:
    lines.append("(* main metric)")
  if delta is not None:
    lines.append(f"delta_m: {delta:+.2f}%")
  return "\n".join(lines)

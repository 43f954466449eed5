"""Fixed-shape batches: length buckets, padding, label masks, and MLM masking.

Every batch has ``batch_size`` rows and a length ``L`` from a small set of
buckets, so a jitted step compiles at most ``len(buckets)`` times. Rows past the
examples (the last eval batch) are padding: ``attention_mask`` all 0 and every
label mask 0. The layout is the one documented in ``jmtl.tasks``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jmtl.tasks import TaskKind, TaskSpec


@dataclasses.dataclass
class Row:
  """One tokenized example before padding.

  Attributes:
    ids: int32 token ids (MLM rows already masked).
    type_ids: int32 segment ids.
    labels: task name -> int32 per-token labels (-1 = none) for token-level
      tasks, or a scalar (int or float) for sentence-level ones. A task missing
      here has no label on this row.
  """

  ids: np.ndarray
  type_ids: np.ndarray
  labels: dict[str, Any]


def length_buckets(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
  """Sorted bucket lengths up to ``max_len``, always ending at ``max_len``."""
  kept = sorted({int(b) for b in buckets if 0 < int(b) < max_len})
  return tuple(kept) + (max_len,)


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that fits a row of ``longest`` tokens."""
  for length in buckets:
    if longest <= length:
      return length
  raise ValueError(f"a row of {longest} tokens exceeds the largest bucket {buckets[-1]}")


def collate(rows: Sequence[Row], *, batch_size: int, length: int,
            tasks: Sequence[TaskSpec], pad_id: int) -> dict[str, np.ndarray]:
  """Pads ``rows`` into one batch holding the labels and masks of ``tasks``.

  Args:
    rows: at most ``batch_size`` rows, each at most ``length`` tokens.
    batch_size: rows of the batch; missing rows are padding.
    length: padded length ``L``.
    tasks: the tasks whose label and mask arrays the batch carries (a row
      without a label for a task gets mask 0 there).
    pad_id: id of [PAD].

  Returns:
    The batch dict of NumPy arrays (see ``jmtl.tasks`` for the layout).
  """
  if len(rows) > batch_size:
    raise ValueError(f"{len(rows)} rows for a batch of {batch_size}")
  batch = {"input_ids": np.full((batch_size, length), pad_id, np.int32),
           "attention_mask": np.zeros((batch_size, length), np.int32),
           "token_type_ids": np.zeros((batch_size, length), np.int32)}
  for task in tasks:
    shape = (batch_size, length) if task.token_level else (batch_size,)
    dtype = np.float32 if task.kind in (TaskKind.REGRESSION, TaskKind.MULTI_LABEL) else np.int32
    # span_qa reads token features but labels each row (window) with (start, end).
    label_shape = {TaskKind.SPAN_QA: (batch_size, 2),
                   TaskKind.MULTI_LABEL: (batch_size, task.num_labels)}.get(task.kind, shape)
    batch[task.label_key] = np.zeros(label_shape, dtype)
    batch[task.mask_key] = np.zeros(shape[:1] if task.kind == TaskKind.SPAN_QA else shape,
                                    np.float32)
  for r, row in enumerate(rows):
    n = len(row.ids)
    batch["input_ids"][r, :n] = row.ids
    batch["attention_mask"][r, :n] = 1
    batch["token_type_ids"][r, :n] = row.type_ids
    for task in tasks:
      value = row.labels.get(task.name)
      if value is None:
        continue
      if task.token_level and task.kind != TaskKind.SPAN_QA:
        labelled = value >= 0
        batch[task.label_key][r, :n] = np.where(labelled, value, 0)
        batch[task.mask_key][r, :n] = labelled
      else:
        batch[task.label_key][r] = value
        batch[task.mask_key][r] = 1.0
  return batch


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *, mask_id: int, vocab_size: int,
                special_ids: np.ndarray, rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
  """BERT's masked-LM corruption of one sequence, on the host.

  ``round(rate * n)`` (at least one) of the n non-special positions are chosen;
  80% become [MASK], 10% a random non-special token, 10% stay as they are.

  Returns:
    (inputs, labels): corrupted ids, and the original id at chosen positions
    with -1 elsewhere.
  """
  candidates = np.flatnonzero(~np.isin(ids, special_ids))
  labels = np.full(ids.shape, -1, np.int32)
  if candidates.size == 0:
    return ids.copy(), labels
  count = max(1, int(round(rate * candidates.size)))
  chosen = np.sort(rng.choice(candidates, size=count, replace=False))
  labels[chosen] = ids[chosen]
  inputs = ids.copy()
  action = rng.random(count)
  inputs[chosen[action < 0.8]] = mask_id
  swap = chosen[(action >= 0.8) & (action < 0.9)]
  if swap.size:
    # draw among non-special ids: specials are 0..4 in our vocabularies, but a
    # loaded vocab may place them anywhere, so resample the few that collide.
    replacement = rng.integers(0, vocab_size, size=swap.size)
    clash = np.isin(replacement, special_ids)
    while clash.any():
      replacement[clash] = rng.integers(0, vocab_size, size=int(clash.sum()))
      clash = np.isin(replacement, special_ids)
    inputs[swap] = replacement
  return inputs, labels


"""The ``Suite``: tokenized tasks, their ``TaskSpec``s, and fixed-shape iterators."""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import Any, Callable

import grain
import numpy as np

from jmtl.data.config import SPLITS, SourceConfig
from jmtl.data.errors import DataError
from jmtl.data.feed import batching, encode, samplers, tokenize
from jmtl.tasks import TaskKind, TaskSpec

TASK_LENGTHS = ("shared", "own")  # how a multi-input step pads its tasks (train_iterator)

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class _Source:
  """One input dataset of the suite, tokenized, with the tasks labelled on it."""

  config: SourceConfig
  tasks: tuple[TaskSpec, ...]
  splits: dict[str, encode.EncodedSplit]


class Suite:
  """Tasks of one suite, tokenized, with training and evaluation iterators.

  Attributes:
    name: suite name.
    layout: "same_input" (one input, every task labelled on it) or
      "multi_input" (one input dataset per task).
    tasks: the ``TaskSpec``s, in config order.
    sizes: task -> split -> number of examples.
    truncation: task -> split -> examples cut to fit ``max_len``.
    vocab_size, pad_id, mask_id, cls_id, sep_id, unk_id: tokenizer facts.
    max_len: longest sequence; buckets: the padded lengths batches use.
    tokenizer: the ``tokenizers.Tokenizer`` (without truncation).
    fingerprints: ``{"tokenizer": hex, task: hex, ...}``, what identifies the
      data (see ``jmtl.data.fingerprints``); a checkpoint records them.
  """

  def __init__(self, name: str, layout: str, sources: Sequence[_Source],
               wordpiece: tokenize.WordPiece, buckets: Sequence[int], *,
               fingerprints: Mapping[str, str]):
    self.name = name
    self._fingerprints = dict(fingerprints)
    self.layout = layout
    self._sources = tuple(sources)
    self._wordpiece = wordpiece
    self.tokenizer = wordpiece.tokenizer
    self.tasks = tuple(t for s in self._sources for t in s.tasks)
    self.vocab_size = wordpiece.vocab_size
    self.pad_id, self.mask_id = wordpiece.pad_id, wordpiece.mask_id
    self.cls_id, self.sep_id, self.unk_id = wordpiece.cls_id, wordpiece.sep_id, wordpiece.unk_id
    self.max_len = wordpiece.max_len
    self.buckets = batching.length_buckets(buckets, self.max_len)
    self.sizes = {t.name: {split: len(data) for split, data in s.splits.items()}
                  for s in self._sources for t in s.tasks}
    self.truncation = {t.name: {split: int(data.truncated.sum())
                                for split, data in s.splits.items()}
                       for s in self._sources for t in s.tasks}

  @property
  def fingerprints(self) -> dict[str, str]:
    return dict(self._fingerprints)

  @property
  def sources(self) -> tuple[_Source, ...]:
    """Input datasets: one per task (multi-input) or one for all (same-input)."""
    return self._sources

  def __repr__(self) -> str:
    return (f"Suite({self.name!r}, layout={self.layout!r}, tasks={[t.name for t in self.tasks]},"
            f" vocab_size={self.vocab_size}, max_len={self.max_len})")

  def row(self, source_index: int, split: str, example: int, *, epoch: int = 0,
          seed: int = 0) -> batching.Row:
    """One example as a ``Row``; MLM rows are masked from (seed, example, epoch)."""
    source = self._sources[source_index]
    data = source.splits[split]
    start, stop = data.offsets[example], data.offsets[example + 1]
    ids, type_ids = data.ids[start:stop], data.type_ids[start:stop]
    labels: dict[str, Any] = {}
    for task in source.tasks:
      if task.kind == TaskKind.TAGGING:
        labels[task.name] = data.token_labels[task.name][start:stop]
      elif task.kind == TaskKind.MLM:
        rng = np.random.default_rng([seed, source_index, example, epoch])
        ids, labels[task.name] = batching.mask_tokens(
            ids, rng, mask_id=self.mask_id, vocab_size=self.vocab_size,
            special_ids=self._wordpiece.special_ids)
      else:
        labels[task.name] = data.labels[task.name][example]
    return batching.Row(ids, type_ids, labels)

  def collate(self, rows: Sequence[batching.Row], batch_size: int,
              tasks: Sequence[TaskSpec] | None = None, length: int | None = None) -> Batch:
    longest = max((len(r.ids) for r in rows), default=1)
    length = length or batching.bucket_length(longest, self.buckets)
    return batching.collate(rows, batch_size=batch_size, length=length,
                            tasks=self.tasks if tasks is None else tasks, pad_id=self.pad_id)

  def train_iterator(self, batch_size: int | Mapping[str, int], *, sampler: str = "all",
                     temperature: float = 2.0, size_cap: float | None = None,
                     anneal: tuple[float, float, int] | None = None,
                     seed: int = 0, tasks: Sequence[str] | None = None,
                     task_lengths: str = "shared") -> TrainIterator:
    """An endless, checkpointable iterator over training batches.

    Same-input suites yield same-input batches with every task's labels (the
    sampler does not apply). Multi-input suites yield ``{task: batch}`` with
    ``sampler="all"`` (``batch_size`` may be a ``{task: size}`` mapping, and
    ``tasks`` limits which tasks are drawn), else one mixture batch in the
    same-input layout whose rows' tasks are drawn from the sampler. There,
    ``task_lengths`` says how the tasks of one step are padded: ``"shared"``, all
    to the bucket of the step's longest row (a jitted step compiles at most once
    per bucket), or ``"own"``, each to its own bucket (no tweet padded to an
    article's length; at most one compile per combination of buckets that occurs).
    """
    return TrainIterator(self, batch_size, sampler=sampler, temperature=temperature,
                         size_cap=size_cap, anneal=anneal, seed=seed, tasks=tasks,
                         task_lengths=task_lengths)

  def eval_batches(self, split: str, batch_size: int
                   ) -> Iterator[tuple[str | None, Batch]]:
    """Every example of ``split`` exactly once, in fixed-shape batches.

    Yields ``(None, batch)`` with all labels for a same-input suite, else
    ``(task_name, batch)``, one pass per task; those batches carry every task's
    label arrays (other tasks masked out), like training mixture batches.
    Padding rows of the last batch are masked out.
    """
    if split not in SPLITS:
      raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    for index, source in enumerate(self._sources):
      if split not in source.splits:
        continue
      name = None if self.layout == "same_input" else source.tasks[0].name
      examples = grain.MapDataset.range(len(source.splits[split]))
      batches = examples.batch(batch_size, batch_fn=lambda ids, index=index: self.collate(
          [self.row(index, split, int(i)) for i in ids], batch_size))
      for batch in batches:
        yield name, batch


class EpochOrder:
  """Position k of an endless stream -> (example index, epoch), reshuffled per epoch.

  The permutation of epoch e is ``default_rng([seed, stream, e]).permutation(n)``
  (grain's ``index_shuffle`` costs milliseconds per index on small datasets).
  The last two epochs' permutations are kept, as positions only move forward.
  """

  def __init__(self, size: int, seed: int, stream: int):
    self._size, self._seed, self._stream = size, seed, stream
    self._cache: dict[int, np.ndarray] = {}

  def __getitem__(self, position: int) -> tuple[int, int]:
    epoch, offset = divmod(position, self._size)
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        del self._cache[min(self._cache)]
      rng = np.random.default_rng([self._seed, self._stream, epoch])
      self._cache[epoch] = rng.permutation(self._size)
    return int(self._cache[epoch][offset]), epoch


class TrainIterator(grain.DatasetIterator):
  """Training batches as a pure function of (seed, step, per-task positions).

  ``get_state()`` is a JSON dict ``{"step", "positions", ...}``; ``set_state``
  restores it exactly; as a ``grain.DatasetIterator`` it also saves through
  Orbax. Each task reads its training examples in an ``EpochOrder``.
  """

  def __init__(self, suite: Suite, batch_size: int | Mapping[str, int], *, sampler: str,
               temperature: float, size_cap: float | None,
               anneal: tuple[float, float, int] | None, seed: int,
               tasks: Sequence[str] | None = None, task_lengths: str = "shared"):
    super().__init__()
    if task_lengths not in TASK_LENGTHS:
      raise DataError(f"task_lengths: expected one of {', '.join(TASK_LENGTHS)}, "
                      f"got {task_lengths!r}")
    self._own_lengths = task_lengths == "own"
    self._suite = suite
    self._seed = int(seed)
    known = [t.name for t in suite.tasks]
    names = known if tasks is None else list(tasks)
    if unknown := [n for n in names if n not in known]:
      raise DataError(f"tasks: {unknown} are not tasks of suite {suite.name!r} ({', '.join(known)})")
    if suite.layout == "same_input" or sampler != "all":
      if isinstance(batch_size, Mapping):
        raise DataError("batch_size: a same-input or mixture batch has one size, got a mapping")
      self._sizes = {None: int(batch_size)}
    else:
      sizes = batch_size if isinstance(batch_size, Mapping) else dict.fromkeys(names, batch_size)
      if unknown := sorted(set(sizes) - set(names)):
        raise DataError(f"batch_size: {unknown} are not tasks drawn here ({', '.join(names)})")
      if missing := [n for n in names if n not in sizes]:
        raise DataError(f"batch_size: no batch size for task(s) {missing}")
      self._sizes = {n: int(sizes[n]) for n in names}
    if any(b <= 0 for b in self._sizes.values()):
      raise DataError(f"batch_size: must be positive, got {batch_size}")
    train = {i: len(s.splits["train"]) for i, s in enumerate(suite.sources)}
    if suite.layout == "same_input":
      sampler = "all"
    self._sampler_name = sampler
    self._sampler = samplers.get(sampler, list(train.values()), temperature_value=temperature,
                                 size_cap=size_cap, anneal=anneal)
    self._streams = {i: EpochOrder(n, self._seed, i) for i, n in train.items()}
    self._step = 0
    self._positions = dict.fromkeys(train, 0)
    self._local_rows = None

  def read_rows(self, local_rows: Callable[[int], Sequence[int] | None] | None) -> None:
    """Build only rows ``local_rows(batch_size)`` of each batch (a process's share of a
    multi-process run's global batch; None: all rows). Positions, the padded length and the
    iterator's state stay the global batch's, so they are the same in every process."""
    self._local_rows = local_rows

  def _mine(self, size: int) -> list[int]:
    rows = self._local_rows(size) if self._local_rows is not None else None
    return list(range(size)) if rows is None else list(rows)

  def _take(self, source: int, count: int, keep: Container[int]
            ) -> tuple[dict[int, batching.Row], int]:
    """The next ``count`` rows of ``source``'s stream, the k-th only for k in ``keep``, as
    {k: row}; and the longest of all ``count`` rows in tokens."""
    start = self._positions[source]
    self._positions[source] = start + count
    offsets = self._suite.sources[source].splits["train"].offsets
    rows, longest = {}, 1
    for k, position in enumerate(range(start, start + count)):
      example, epoch = self._streams[source][position]
      longest = max(longest, int(offsets[example + 1] - offsets[example]))
      if k in keep:
        rows[k] = self._suite.row(source, "train", example, epoch=epoch, seed=self._seed)
    return rows, longest

  def __next__(self):
    suite = self._suite
    bucket = lambda longest: batching.bucket_length(longest, suite.buckets)
    if suite.layout == "same_input":
      mine = self._mine(self._sizes[None])
      rows, longest = self._take(0, self._sizes[None], set(mine))
      batch = suite.collate([rows[r] for r in mine], len(mine), length=bucket(longest))
    elif self._sampler is None:
      per_task = {}
      for index, source in enumerate(suite.sources):
        task = source.tasks[0]
        if task.name not in self._sizes:
          continue
        mine = self._mine(self._sizes[task.name])
        rows, most = self._take(index, self._sizes[task.name], set(mine))
        per_task[task.name] = (task, [rows[r] for r in mine], most)
      # Lengths come from the global batch's rows, so every process pads alike.
      shared = max(most for _, _, most in per_task.values())
      batch = {name: suite.collate(rows, len(rows), (task,),
                                   bucket(most if self._own_lengths else shared))
               for name, (task, rows, most) in per_task.items()}
    else:
      size = self._sizes[None]
      chosen = samplers.draw(self._sampler.probabilities(self._step), size, self._seed,
                             self._step)
      mine = self._mine(size)
      wanted, rows, longest = set(mine), {}, 1
      for source in np.unique(chosen):
        where = np.flatnonzero(chosen == source)
        taken, most = self._take(int(source), len(where),
                                 {k for k, r in enumerate(where) if r in wanted})
        rows.update({int(where[k]): row for k, row in taken.items()})
        longest = max(longest, most)
      batch = suite.collate([rows[r] for r in mine], len(mine), length=bucket(longest))
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    names = [s.tasks[0].name if len(s.tasks) == 1 else ",".join(t.name for t in s.tasks)
             for s in self._suite.sources]
    return {"step": self._step, "seed": self._seed, "sampler": self._sampler_name,
            "positions": {names[i]: int(p) for i, p in self._positions.items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    current = self.get_state()
    for key in ("seed", "sampler"):
      if state.get(key) != current[key]:
        raise DataError(f"iterator state: {key} {state.get(key)!r} differs from this "
                        f"iterator's {current[key]!r}")
    if set(state.get("positions", {})) != set(current["positions"]):
      raise DataError(f"iterator state: tasks {sorted(state.get('positions', {}))} differ "
                      f"from {sorted(current['positions'])}")
    lookup = {name: i for i, name in enumerate(current["positions"])}
    self._positions = {lookup[name]: int(p) for name, p in state["positions"].items()}
    self._step = int(state["step"])

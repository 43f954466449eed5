"""What a user should see of a suite before training on it.

``jmtl data prepare`` prints, per task and split, the examples, the labels with
their frequencies, truncation, and warnings for what silently hurts a run: a
validation/test label that train never shows, two labels that differ only by
case or whitespace (``Pos`` beside ``pos`` becomes a class of its own), and
labels rarer than ``min_count``. ``jmtl data inspect`` prints a few examples as
the model sees them: sub-words with the label each one carries.

Label counts are taken from the raw examples when a source is built (before
unseen labels are mapped to ``<unk>``) and kept in the manifest.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jmtl.tasks import TaskKind

SPLITS = ("train", "validation", "test")
# Label sets up to this size are printed in full; larger ones show the most frequent.
FULL_INVENTORY = 30
LARGE_SHOWN = 10


def count_labels(task_name: str, token_level: bool, by_split: Mapping[str, Sequence[Any]]
                 ) -> dict[str, dict[str, int]]:
  """split -> label -> occurrences (tags counted per word), most frequent first."""
  result = {}
  for split, examples in by_split.items():
    counts = collections.Counter()
    for example in examples:
      value = example.values[task_name]
      counts.update(value if token_level else [value])
    result[split] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
  return result


def _inventory(counts: Mapping[str, int]) -> str:
  items = [f"{label} {n}" for label, n in counts.items()]
  if len(items) > FULL_INVENTORY:
    return ", ".join(items[:LARGE_SHOWN]) + f", ... ({len(items) - LARGE_SHOWN} more)"
  return ", ".join(items)


def warnings_for(task: str, counts: Mapping[str, Mapping[str, int]],
                 label_names: Sequence[str], min_count: int) -> list[str]:
  """Warnings about one task's labels (see the module docstring)."""
  train = counts.get("train", {})
  found = []
  for split in SPLITS[1:]:
    unseen = {label: n for label, n in counts.get(split, {}).items() if label not in train}
    if unseen:
      listed = ", ".join(f"{label!r} ({n}x)" for label, n in unseen.items())
      found.append(f"{task}: {split} labels never seen in train: {listed}")
  groups = collections.defaultdict(list)
  for label in sorted(set(label_names) | {l for c in counts.values() for l in c}):
    groups["".join(label.split()).casefold()].append(label)
  for labels in groups.values():
    if len(labels) > 1:
      found.append(f"{task}: labels {', '.join(map(repr, labels))} differ only by case or "
                   "whitespace: each is a class of its own")
  rare = {label: train.get(label, 0) for label in label_names
          if label != "<unk>" and train.get(label, 0) < min_count}
  if rare:
    listed = ", ".join(f"{label!r} ({n}x)" for label, n in sorted(rare.items(), key=lambda kv: kv[1]))
    found.append(f"{task}: labels seen fewer than {min_count} times in train: {listed}")
  return found


def prepare_lines(suite, manifest: Mapping[str, Any], min_count: int) -> list[str]:
  """The ``jmtl data prepare`` report of a loaded ``Suite`` and its manifest."""
  lines, warnings = [], []
  entries = {t.name: e for s, e in zip(suite.sources, manifest["sources"]) for t in s.tasks}
  for spec in suite.tasks:
    sizes, cut = suite.sizes[spec.name], suite.truncation[spec.name]
    counted = ", ".join(f"{split} {sizes[split]}" for split in SPLITS if split in sizes)
    labels = f"{spec.num_labels} labels" if spec.label_names else {
        TaskKind.MLM: "masked LM", TaskKind.REGRESSION: "regression"}.get(spec.kind, "")
    lines.append(f"{suite.name}/{spec.name} ({spec.kind}): {counted} examples; {labels}")
    if spec.kind == TaskKind.SPAN_QA:  # rows are windows; the manifest counts questions
      questions = entries[spec.name]["sizes"]
      lines.append("  windows of " + ", ".join(f"{split} {questions[split]}" for split in SPLITS
                                               if split in questions) + " questions")
    if any(cut.values()):
      lines.append(f"  truncated to max_len={suite.max_len}: " + ", ".join(
          f"{split} {cut[split]}/{sizes[split]}" for split in SPLITS if split in cut))
    empty = entries[spec.name].get("empty_label_lists", {}).get(spec.name, {})
    if any(empty.values()):
      first = entries[spec.name].get("empty_label_first", {}).get(spec.name, {})
      warnings.append(f"{spec.name}: examples with an empty label list (kept: no label "
                      "applies): " + ", ".join(
                          f"{s} {n}" + (f" (first at {first[s]})" if s in first else "")
                          for s, n in empty.items() if n))
    counts = entries[spec.name].get("label_counts", {}).get(spec.name)
    if not spec.label_names:
      continue
    if counts is None:
      lines.append("  label counts: not recorded for this source (a named TFDS dataset)")
      continue
    for split in SPLITS:
      if split in counts:
        lines.append(f"  {split} labels: {_inventory(counts[split])}")
    warnings += warnings_for(spec.name, counts, spec.label_names, min_count)
  return lines + [f"warning: {w}" for w in warnings]


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
  """Rows of cells padded so each column lines up."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def inspect_lines(suite, split: str, count: int, tasks: Sequence[str] | None = None,
                  seed: int = 0) -> list[str]:
  """Up to ``count`` examples per input dataset of ``split``: sub-words, and under
  each the label it carries ("." for a sub-word or token without one)."""
  token = suite.tokenizer.id_to_token
  lines = []
  for index, source in enumerate(suite.sources):
    shown = [t for t in source.tasks if tasks is None or t.name in tasks]
    if not shown or split not in source.splits:
      continue
    for example in range(min(count, len(source.splits[split]))):
      row = suite.row(index, split, example, seed=seed)
      names = ", ".join(f"{t.name} ({t.kind})" for t in shown)
      lines.append(f"{names}, {split} example {example}:")
      grid = [["sub-word"] + [token(int(i)) for i in row.ids]]
      for spec in shown:
        value = row.labels[spec.name]
        if spec.kind == TaskKind.TAGGING:
          grid.append([spec.name] + [spec.label_names[v] if v >= 0 else "." for v in value])
        elif spec.kind == TaskKind.MLM:
          grid.append([spec.name] + [token(int(v)) if v >= 0 else "." for v in value])
        elif spec.kind == TaskKind.MULTI_LABEL:
          names = [spec.label_names[i] for i in np.flatnonzero(np.asarray(value) > 0)]
          lines.append(f"  {spec.name} = {{{', '.join(names)}}}")
        elif spec.kind == TaskKind.SPAN_QA:
          start, end = (int(v) for v in value)
          answer = " ".join(token(int(i)) for i in row.ids[start:end + 1]) if end else "-"
          lines.append(f"  {spec.name} = tokens {start}..{end}: {answer}")
        else:
          label = (spec.label_names[int(value)] if spec.label_names
                   else f"{float(np.asarray(value)):g}")
          lines.append(f"  {spec.name} = {label}")
      lines += ["  " + line for line in _columns(grid)]
  return lines


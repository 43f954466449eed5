"""Metric logs: JSONL in the workdir, optionally TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Callable

from jmtl.train import distributed


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
  if isinstance(value, dict):
    for key, inner in value.items():
      _flatten(f"{prefix}/{key}" if prefix else str(key), inner, out)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    out[prefix] = float(value)


class MetricLogger:
  """Appends one JSON line per record to ``<workdir>/metrics.jsonl``.

  With ``tensorboard=True`` the same scalars go to ``<workdir>/tensorboard`` through
  tensorboardX when it is installed; otherwise one line says how to get it.

  A resumed run (``resume_step`` > 0) first drops the records a killed run wrote past its
  last checkpoint, which the resumed run writes again, so each step is logged once; when the
  run had finished (``resume_step >= final_step``) its final evaluation is redone, so the
  evaluations at that step go too. TensorBoard gets ``purge_step`` for the same effect.

  In a multi-process run only process 0 logs; the others' loggers write nothing.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = False,
               warn: Callable[[str], None] = print, resume_step: int = 0,
               final_step: int | None = None):
    self._file = self._tb = None
    if not distributed.is_primary():
      return
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):  # a run killed before its first checkpoint restarts from 0
      redo_evals = final_step is not None and resume_step >= final_step
      _drop_records_after(path, resume_step, redo_evals)
    self._file = open(path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 purge_step=resume_step + 1 if resume_step else None)
      except ImportError:
        warn("train.tensorboard=True but tensorboardX is not installed: "
             "pip install tensorboardX (JSONL logs are written either way)")

  def write(self, record: dict[str, Any]) -> None:
    if self._file is None:
      return
    clean = json.loads(json.dumps(record, default=float),
                       parse_constant=lambda c: None)  # NaN/Inf -> null: valid JSON lines
    self._file.write(json.dumps(clean, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      scalars: dict[str, float] = {}
      _flatten(record.get("split", "train"), {k: v for k, v in record.items()
                                             if k not in ("step", "split")}, scalars)
      for tag, value in scalars.items():
        if math.isfinite(value):
          self._tb.add_scalar(tag, value, record["step"])

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def _drop_records_after(path: str, step: int, redo_evals: bool) -> None:
  """Rewrites ``path`` (atomically) without records past ``step`` (and without evaluation
  records at ``step`` when ``redo_evals``); a torn last line from a kill goes too."""
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      at = record.get("step", 0) if isinstance(record, dict) else 0
      if at > step or (redo_evals and at == step and record.get("split") != "train"):
        continue
      kept.append(line.rstrip("\n") + "\n")
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path) or ".", suffix=".tmp",
                                   delete=False) as f:
    f.writelines(kept)
  os.replace(f.name, path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]

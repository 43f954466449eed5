"""Metric logs: JSONL in the workdir, optionally TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable


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
  """

  def __init__(self, workdir: str, *, tensorboard: bool = False,
               warn: Callable[[str], None] = print):
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        warn("train.tensorboard=True but tensorboardX is not installed: "
             "pip install tensorboardX (JSONL logs are written either way)")

  def write(self, record: dict[str, Any]) -> None:
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
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]

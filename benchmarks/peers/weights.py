"""jmtl params <-> a flat ``.npz`` that the PyTorch twin of the model loads.

Keys are the params' paths joined by ``/`` (``encoder/block_0/mlp_in/kernel``,
``heads/task0/out/bias``), arrays keep jmtl's layouts (Dense kernels ``[in, out]``,
attention kernels ``[D, H, Dh]`` and ``[H, Dh, D]``): the torch side does every transpose,
so this file needs NumPy only and both halves can be tested apart.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

SEPARATOR = "/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """``{"a/b/c": array}`` from a nested mapping of arrays (float32 copies)."""
  flat = {}
  for key, value in tree.items():
    if SEPARATOR in key:
      raise ValueError(f"parameter name {key!r} contains {SEPARATOR!r}")
    path = f"{prefix}{SEPARATOR}{key}" if prefix else key
    if isinstance(value, Mapping):
      flat.update(flatten(value, path))
    else:
      flat[path] = np.asarray(value, np.float32)
  return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Inverse of ``flatten``."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split(SEPARATOR)
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def export_params(params: Mapping[str, Any], path: pathlib.Path | str) -> pathlib.Path:
  """Writes ``params`` (``{"encoder": ..., "heads": ...}``) to ``path`` (``.npz``)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **flatten(params))
  return path


def load_params(path: pathlib.Path | str) -> dict[str, Any]:
  """The nested params written by ``export_params`` (NumPy arrays)."""
  with np.load(path) as data:
    return unflatten({key: data[key] for key in data.files})

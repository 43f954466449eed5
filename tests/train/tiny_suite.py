"""A tiny generated multi-input suite (tagging + classification + MLM) for runner tests."""

import json
import os

import numpy as np

WORDS = "the cat dog sat ran on a mat big small red blue fast slow".split()


def write_tiny_suite(root: str, seed: int = 0, n_train: int = 48, n_eval: int = 16) -> str:
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)

  def sentence():
    return [str(w) for w in rng.choice(WORDS, rng.integers(3, 9))]

  def conll(path, n):
    with open(path, "w") as f:
      for _ in range(n):
        for w in sentence():
          tag = "B-ANI" if w in ("cat", "dog") else ("B-COL" if w in ("red", "blue") else "O")
          f.write(f"{w}\t{tag}\n")
        f.write("\n")

  def csv(path, n):
    with open(path, "w") as f:
      f.write("text,label\n")
      for _ in range(n):
        words = sentence()
        f.write(f"{' '.join(words)},{'animal' if {'cat', 'dog'} & set(words) else 'other'}\n")

  def text(path, n):
    with open(path, "w") as f:
      for _ in range(n):
        f.write(" ".join(sentence()) + "\n")

  for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
    conll(os.path.join(root, f"ner.{split}.tsv"), n)
    csv(os.path.join(root, f"topic.{split}.csv"), n)
    text(os.path.join(root, f"lm.{split}.txt"), n)
  files = lambda stem, ext: {s: f"{stem}.{s}.{ext}" for s in ("train", "validation", "test")}
  suite = {"name": "tiny", "layout": "multi_input", "tasks": [
      {"name": "ner", "kind": "tagging", "format": "conll", "files": files("ner", "tsv"),
       "columns": {"token": 0, "ner": 1}, "separator": "\t", "metrics": ["accuracy", "span_f1"],
       "main_metric": "span_f1"},
      {"name": "topic", "kind": "classification", "format": "csv", "files": files("topic", "csv"),
       "text": "text", "label": "label"},
      {"name": "lm", "kind": "mlm", "format": "text", "files": files("lm", "txt")},
  ]}
  path = os.path.join(root, "tiny_suite.json")
  with open(path, "w") as f:
    json.dump(suite, f)
  return path

"""Generated files for every task family (QA, multi-label, pairs, same-input label columns,
relations): small enough to train on in seconds, regular enough that a model can learn."""

from __future__ import annotations

import json
import os

import numpy as np

COLOURS = "red blue green black white".split()
ANIMALS = "cat dog fox owl bee".split()
FILLER = "the a big small old young fast slow near far by with and".split()


def _sentence(rng, n=6):
  return [str(w) for w in rng.choice(FILLER, n)]


def squad_file(path: str, rng, questions: int, version: str = "2.0") -> None:
  """Contexts naming an animal's colour; "what colour is the X": answer the colour word,
  unanswerable (v2.0) when X is not in the context."""
  articles = []
  for _ in range(questions):
    animal, other = rng.choice(ANIMALS, 2, replace=False)
    colour = str(rng.choice(COLOURS))
    words = _sentence(rng, 8) + ["the", str(animal), "is", colour] + _sentence(rng, 12)
    context = " ".join(words)
    start = context.index(f" {animal} is {colour}") + len(f" {animal} is ")
    qas = [{"id": f"q{len(articles)}a", "question": f"what colour is the {animal}",
            "answers": [{"text": colour, "answer_start": start}]}]
    if version == "2.0":
      qas.append({"id": f"q{len(articles)}u", "question": f"what colour is the {other}",
                  "answers": [], "is_impossible": True})
    articles.append({"title": f"t{len(articles)}", "paragraphs": [{"context": context,
                                                                    "qas": qas}]})
  with open(path, "w") as f:
    json.dump({"version": f"v{version}", "data": articles}, f)


def write_families(root: str, seed: int = 0, n_train: int = 40, n_eval: int = 12) -> dict:
  """Writes one suite JSON per family under ``root``; returns family -> suite path."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  suites = {}
  splits = (("train", n_train), ("validation", n_eval))
  for split, n in splits:
    squad_file(os.path.join(root, f"squad.{split}.json"), rng, n)
  suites["qa"] = {"name": "fam_qa", "layout": "multi_input", "tasks": [
      {"name": "qa", "kind": "span_qa", "format": "squad", "doc_stride": 4,
       "max_answer_length": 4,
       "files": {s: f"squad.{s}.json" for s, _ in splits}}]}
  multi_label_files(root, rng, splits)
  suites["multi_label"] = {"name": "fam_multi_label", "layout": "multi_input", "tasks": [
      {"name": "animals_csv", "kind": "multi_label", "format": "csv", "label": "animals",
       "label_separator": "|", "files": {s: f"animals.{s}.csv" for s, _ in splits},
       "metrics": ["micro_f1", "macro_f1", "best_threshold", "tuned_micro_f1"]},
      {"name": "animals_jsonl", "kind": "multi_label", "format": "jsonl", "label": "animals",
       "threshold": 0.4, "files": {s: f"animals.{s}.jsonl" for s, _ in splits}}]}
  paths = {}
  for family, suite in suites.items():
    paths[family] = os.path.join(root, f"{family}_suite.json")
    with open(paths[family], "w") as f:
      json.dump(suite, f, indent=1)
  return paths


def multi_label_files(root: str, rng, splits) -> None:
  """Sentences mentioning some animals; the labels are the animals mentioned (csv with "|",
  and the same as jsonl lists). Some sentences mention none: an empty label set."""
  for split, n in splits:
    rows = []
    for _ in range(n):
      animals = sorted({str(a) for a in rng.choice(ANIMALS, rng.integers(0, 3))})
      words = _sentence(rng, 5) + animals + _sentence(rng, 3)
      rng.shuffle(words)
      rows.append((" ".join(words), animals))
    with open(os.path.join(root, f"animals.{split}.csv"), "w") as f:
      f.write("text,animals\n")
      f.writelines(f"{text},{'|'.join(labels)}\n" for text, labels in rows)
    with open(os.path.join(root, f"animals.{split}.jsonl"), "w") as f:
      f.writelines(json.dumps({"text": text, "animals": labels}) + "\n" for text, labels in rows)

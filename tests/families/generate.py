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
       "max_answer_length": 4, "metrics": ["exact_match", "f1", "best_f1", "best_null_threshold"],
       "files": {s: f"squad.{s}.json" for s, _ in splits}}]}
  multi_label_files(root, rng, splits)
  suites["multi_label"] = {"name": "fam_multi_label", "layout": "multi_input", "tasks": [
      {"name": "animals_csv", "kind": "multi_label", "format": "csv", "label": "animals",
       "label_separator": "|", "files": {s: f"animals.{s}.csv" for s, _ in splits},
       "metrics": ["micro_f1", "macro_f1", "best_threshold", "tuned_micro_f1"]},
      {"name": "animals_jsonl", "kind": "multi_label", "format": "jsonl", "label": "animals",
       "threshold": 0.4, "files": {s: f"animals.{s}.jsonl" for s, _ in splits}}]}
  pair_files(root, rng, splits)
  suites["pairs"] = {"name": "fam_pairs", "layout": "multi_input", "tasks": [
      {"name": "nli", "kind": "classification", "format": "jsonl", "text": "premise",
       "text_pair": "hypothesis", "files": {s: f"pairs.{s}.jsonl" for s, _ in splits}},
      {"name": "sts", "kind": "regression", "format": "tsv", "text": "s1", "text_pair": "s2",
       "label": "score", "files": {s: f"sts.{s}.tsv" for s, _ in splits}}]}
  sentiment_file(root, rng, splits)
  suites["same_input"] = {
      "name": "fam_sentiment", "layout": "same_input",
      "source": {"format": "csv", "text": "review",
                 "files": {s: f"reviews.{s}.csv" for s, _ in splits}},
      "tasks": [{"name": "polarity", "kind": "classification", "label": "polarity"},
                {"name": "intensity", "kind": "regression", "label": "intensity"},
                {"name": "topic", "kind": "classification", "label": "topic"}]}
  relation_file(root, rng, splits)
  suites["relations"] = {"name": "fam_relations", "layout": "multi_input", "tasks": [
      {"name": "relation", "kind": "classification", "format": "jsonl", "text": "sentence",
       "label": "relation", "entity_spans": ["e1_start", "e1_end", "e2_start", "e2_end"],
       "entity_markers": ["<e1>", "</e1>", "<e2>", "</e2>"],
       "files": {s: f"relations.{s}.jsonl" for s, _ in splits}}]}
  suites["all"] = {"name": "fam_all", "layout": "multi_input", "tasks": [
      task for family in ("qa", "multi_label", "pairs", "relations")
      for task in suites[family]["tasks"]]}
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


def pair_files(root: str, rng, splits) -> None:
  """Sentence pairs: "same" if both mention the same animal (classification), and the
  share of animals in common as a similarity score (regression); jsonl and tsv."""
  for split, n in splits:
    rows = []
    for _ in range(n):
      a, b = rng.choice(ANIMALS, 2)
      first = " ".join(_sentence(rng, 3) + [str(a)] + _sentence(rng, 2))
      second = " ".join(_sentence(rng, 2) + [str(b)] + _sentence(rng, 3))
      rows.append((first, second, "same" if a == b else "different",
                   5.0 if a == b else float(rng.uniform(0, 2))))
    with open(os.path.join(root, f"pairs.{split}.jsonl"), "w") as f:
      f.writelines(json.dumps({"premise": p, "hypothesis": h, "label": y}) + "\n"
                   for p, h, y, _ in rows)
    with open(os.path.join(root, f"sts.{split}.tsv"), "w") as f:
      f.write("s1\ts2\tscore\n")
      f.writelines(f"{p}\t{h}\t{s:.3f}\n" for p, h, _, s in rows)


def sentiment_file(root: str, rng, splits) -> None:
  """One csv with three label columns on one input: polarity, intensity (0-4) and topic."""
  good, bad = ["good", "great", "fine"], ["bad", "awful", "poor"]
  for split, n in splits:
    with open(os.path.join(root, f"reviews.{split}.csv"), "w") as f:
      f.write("review,polarity,intensity,topic\n")
      for _ in range(n):
        positive, strength = bool(rng.integers(2)), int(rng.integers(1, 4))
        animal = str(rng.choice(ANIMALS))
        words = [str(w) for w in rng.choice(good if positive else bad, strength)]
        text = " ".join(_sentence(rng, 3) + [animal] + words + _sentence(rng, 2))
        f.write(f"{text},{'pos' if positive else 'neg'},{strength},{animal}\n")


def relation_file(root: str, rng, splits) -> None:
  """Two animals in a sentence, related by the verb between them; entity offsets given."""
  verbs = {"chases": "chase", "sees": "see", "follows": "follow"}
  for split, n in splits:
    with open(os.path.join(root, f"relations.{split}.jsonl"), "w") as f:
      for _ in range(n):
        a, b = (str(x) for x in rng.choice(ANIMALS, 2, replace=False))
        verb = str(rng.choice(list(verbs)))
        prefix = " ".join(_sentence(rng, 3))
        text = f"{prefix} the {a} {verb} the {b} " + " ".join(_sentence(rng, 2))
        e1 = text.index(f" {a} ") + 1
        e2 = text.index(f" {b} ", e1 + len(a)) + 1
        f.write(json.dumps({"sentence": text, "e1_start": e1, "e1_end": e1 + len(a),
                            "e2_start": e2, "e2_end": e2 + len(b),
                            "relation": verbs[verb]}) + "\n")

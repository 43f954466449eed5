"""Helpers shared by the data tests."""

import string
from pathlib import Path

import numpy as np

CONLL_TRAIN = """-DOCSTART- O

EU B-ORG
rejects O
German B-MISC
call O

Peter B-PER
Blackburn I-PER

BRUSSELS B-LOC
Peter B-PER
"""

CONLL_DEV = """Germany B-LOC
calls O

EU B-ORG
"""

CONLLU = """# sent_id = a1
# source = web
# text = Burda öyle mi ?
1\tBurda\tbur\tPRON\tPRD\tCase=Loc\t3\tnpadvmod\t_\t_
2-3\töylemi\t_\t_\t_\t_\t_\t_\t_\t_
2\töyle\töyle\tVERB\tNOMP\t_\t0\troot\t_\t_
3\tmi\tmı\tPRT\tRPQ\t_\t2\tprt\t_\t_
4\t?\t?\tPUNCT\t.\t_\t2\tp\t_\t_

# sent_id = a2
# source = wiki
1\tAnkara\tankara\tNOUN\tNNP\t_\t2\tnsubj\t_\t_
2\tbüyük\tbüyük\tADJ\tJJ\t_\t0\troot\t_\t_

"""


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocab_file(directory: Path, words=()) -> Path:
  """A BERT vocab.txt: specials, single characters (and ## forms), then ``words``."""
  chars = list(string.ascii_lowercase + string.digits + ".,?!'-") + list("öüçşğı")
  tokens = SPECIALS + chars + ["##" + c for c in chars] + list(words)
  path = directory / "vocab.txt"
  path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
  return path


def decode_rows(suite, batch):
  """Tokens of each row (without padding), as strings."""
  rows = []
  for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
    rows.append([suite.tokenizer.id_to_token(int(i)) for i in ids[mask > 0]])
  return rows


def all_eval(suite, split, batch_size=4):
  """Every (task, batch) of an eval pass, as a list."""
  return list(suite.eval_batches(split, batch_size))


def words_and_tags(suite, batch, task):
  """Per real row: (first-sub-word tokens, tag names) under the task's mask."""
  spec = {t.name: t for t in suite.tasks}[task]
  result = []
  for r in range(batch["input_ids"].shape[0]):
    mask = batch[spec.mask_key][r] > 0
    if not mask.any():
      continue
    tokens = [suite.tokenizer.id_to_token(int(i)) for i in batch["input_ids"][r][mask]]
    tags = [spec.label_names[int(i)] for i in batch[spec.label_key][r][mask]]
    result.append((tokens, tags))
  return result


def sentence_labels(suite, batches, task):
  spec = {t.name: t for t in suite.tasks}[task]
  values = []
  for _, batch in batches:
    keep = batch[spec.mask_key] > 0
    values.extend(np.asarray(batch[spec.label_key])[keep].tolist())
  return values

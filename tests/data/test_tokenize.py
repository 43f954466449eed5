"""WordPiece: deterministic training, vocab files, tag alignment, truncation."""

import numpy as np
import pytest

from data_helpers import vocab_file
from jmtl import data
from jmtl.data.feed import tokenize

TEXTS = ["the cat sat on the mat", "the dog sat on the log", "cats and dogs", "Peter Pan",
         "a mat and a log", "the cats sat", "dogs sat on logs"] * 3


def test_training_puts_specials_first_and_round_trips_through_its_json():
  first = tokenize.train(TEXTS, vocab_size=60, lowercase=True)
  from tokenizers import Tokenizer
  assert Tokenizer.from_str(first.to_str()).to_str() == first.to_str()
  vocab = first.get_vocab()
  assert [vocab[t] for t in tokenize.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert len(vocab) <= 60
  assert "[CLS]" == first.id_to_token(first.encode("the cat").ids[0])


def learned(texts, vocab_size):
  """Tokens of more than one character that training added (specials left out)."""
  vocab = tokenize.train(texts, vocab_size=vocab_size, lowercase=True).get_vocab()
  return sorted(t for t in vocab if len(t.removeprefix("##")) > 1 and not t.startswith("["))


def test_merges_follow_counts_then_the_pair_strings():
  # Worked by hand. Alphabet a b c x y z + ##b ##c ##y ##z + 5 specials = 15 tokens.
  # Pairs: (a,##b) 3, (a,##c) 2, (x,##y) 2, (##y,##z) 2.
  texts = ["ab ab ab ac ac", "xyz xyz"]
  assert learned(texts, 15) == []
  assert learned(texts, 16) == ["ab"]  # the most frequent pair
  # A three-way tie at 2: "##y" < "a" < "x" as strings, so (##y, ##z) first.
  assert learned(texts, 17) == ["##yz", "ab"]
  assert learned(texts, 18) == ["##yz", "ab", "ac"]
  # (x, ##yz) now has count 2 and is the only pair left.
  assert learned(texts, 19) == ["##yz", "ab", "ac", "xyz"]


def test_ties_do_not_depend_on_the_order_of_the_texts():
  # Each pair occurs once: the winner is the smaller pair of strings, whichever came first.
  assert learned(["ab ac"], 11) == learned(["ac ab"], 11) == learned(["ac", "ab"], 11) == ["ab"]
  lines = [line for line in TEXTS for _ in range(2)]
  shuffled = np.random.default_rng(0).permutation(lines).tolist()
  a = tokenize.train(lines, vocab_size=70, lowercase=True)
  b = tokenize.train(shuffled, vocab_size=70, lowercase=True)
  assert a.get_vocab() == b.get_vocab()


_TRAIN_AND_PRINT = """
import hashlib, json, sys
from jmtl.data.feed import tokenize
texts = json.load(open(sys.argv[1]))
tokenizer = tokenize.train(texts, vocab_size=int(sys.argv[2]), lowercase=True)
print(json.dumps(sorted(tokenizer.get_vocab().items())))
"""


def test_training_gives_the_same_vocabulary_in_separate_processes(tmp_path):
  import json
  import os
  import subprocess
  import sys
  # Many ties: every word occurs the same number of times.
  words = ["".join(chr(97 + (i * 7 + k * 3) % 26) for k in range(3 + i % 5)) for i in range(300)]
  corpus = tmp_path / "texts.json"
  corpus.write_text(json.dumps([" ".join(words[i:i + 12]) for i in range(0, 300, 12)]))
  vocabularies = []
  for seed in ("0", "1", "12345"):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    result = subprocess.run([sys.executable, "-c", _TRAIN_AND_PRINT, str(corpus), "120"],
                            capture_output=True, text=True, env=env, check=True)
    vocabularies.append(result.stdout)
  assert len(json.loads(vocabularies[0])) == 120
  assert vocabularies[0] == vocabularies[1] == vocabularies[2]


def test_lowercase_is_configurable():
  cased = tokenize.WordPiece(tokenize.train(TEXTS, vocab_size=80, lowercase=False), 16)
  uncased = tokenize.WordPiece(tokenize.train(TEXTS, vocab_size=80, lowercase=True), 16)
  tokens = lambda wp, text: [wp.tokenizer.id_to_token(int(i))
                             for i in wp.encode_texts([text])[0].ids[1:-1]]
  assert tokens(uncased, "Peter")[0][0] == "p"
  assert tokens(cased, "Peter")[0][0] == "P"


def test_vocab_file_ids_are_line_numbers(tmp_path):
  path = vocab_file(tmp_path, ["black", "##burn"])
  lines = path.read_text().splitlines()
  wordpiece = tokenize.WordPiece(tokenize.from_vocab_file(path, lowercase=True), 16)
  (encoded,) = wordpiece.encode_words([["Blackburn", "x"]])
  assert encoded.ids.tolist() == [2, lines.index("black"), lines.index("##burn"),
                                  lines.index("x"), 3]
  assert encoded.word_ids.tolist() == [-1, 0, 0, 1, -1]
  (tmp_path / "bad.txt").write_text("[PAD]\n[UNK]\nhello\n")
  with pytest.raises(data.DataError, match=r"special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
    tokenize.from_vocab_file(tmp_path / "bad.txt", lowercase=True)


def test_align_tags_labels_first_subword_only():
  word_ids = np.array([-1, 0, 0, 1, 2, 2, 2, -1])
  assert tokenize.align_tags(word_ids, [5, 6, 7]).tolist() == [-1, 5, -1, 6, 7, -1, -1, -1]
  # a word repeated after another word starts a new label (not merged by id)
  assert tokenize.align_tags(np.array([-1, 0, 1, -1]), [3, 4]).tolist() == [-1, 3, 4, -1]


def test_truncation_keeps_sep_and_is_flagged(tmp_path):
  wordpiece = tokenize.WordPiece(tokenize.from_vocab_file(vocab_file(tmp_path), lowercase=True), 5)
  short, long = wordpiece.encode_words([["a", "b"], ["a", "b", "c", "d", "e"]])
  assert not short.truncated and short.ids.tolist() == [2, wordpiece.tokenizer.token_to_id("a"),
                                                         wordpiece.tokenizer.token_to_id("b"), 3]
  assert long.truncated and len(long.ids) == 5 and long.ids[-1] == wordpiece.sep_id
  assert long.word_ids.tolist() == [-1, 0, 1, 2, -1]
  (pair,) = wordpiece.encode_texts(["a b c"], ["d e f"])
  assert pair.truncated and len(pair.ids) == 5 and pair.type_ids.tolist() == [0, 0, 0, 1, 1]
  (fits,) = wordpiece.encode_texts(["a"], ["b"])
  assert not fits.truncated and fits.type_ids.tolist() == [0, 0, 0, 1, 1]
  (huge,) = wordpiece.encode_texts(["a " * 1000])
  assert huge.truncated and len(huge.ids) == 5


def test_suite_counts_and_reports_truncation(write, data_dir, tmp_path, log):
  lines = ["a b", "a b c d e f g h", "c d", "e f g h a b c d e f"]
  path = write("lm.txt", "\n".join(lines) + "\n")
  config = {"name": "lm", "tasks": [{"name": "lm", "kind": "mlm", "format": "text",
                                     "files": {"train": str(path)}}]}
  suite = data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), max_len=8,
                          buckets=(4,), log=log)
  assert suite.truncation == {"lm": {"train": 2}}
  assert "lm/lm: truncated to max_len=8: train 2/4" in log
  assert suite.buckets == (4, 8)


def test_a_new_suite_reads_each_split_once(write, data_dir, monkeypatch):
  # Training the tokenizer and encoding both need the train split: decoding it twice cost a
  # quarter of preparing a large suite.
  from jmtl.data.feed import encode
  reads = []
  real_open = encode.open_split

  def counting_open(suite_dir, source, entry, split):
    reads.append((source.name, split))
    return real_open(suite_dir, source, entry, split)

  monkeypatch.setattr(encode, "open_split", counting_open)
  texts = {split: write(f"{split}.tsv", "s\tlabel\n" + "".join(
      f"{w} word {i}\t{i % 2}\n" for i in range(6)))
      for split, w in (("train", "alpha"), ("validation", "beta"), ("test", "gamma"))}
  config = {"name": "pairs", "tasks": [
      {"name": "topic", "kind": "classification", "format": "tsv", "text": "s",
       "label": "label", "files": {s: str(p) for s, p in texts.items()}},
      {"name": "lm", "kind": "mlm", "format": "text", "files": {"train": str(texts["train"])}}]}
  suite = data.load_suite(config, data_dir, vocab_size=40, max_len=8, log=lambda _: None)
  assert len(reads) == len(set(reads)) and ("topic", "train") in reads
  assert suite.sizes["topic"] == {"train": 6, "validation": 6, "test": 6}

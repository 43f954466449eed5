"""WordPiece: deterministic training, vocab files, tag alignment, truncation."""

import numpy as np
import pytest

from data_helpers import vocab_file
from jmtl import data
from jmtl.data import tokenize

TEXTS = ["the cat sat on the mat", "the dog sat on the log", "cats and dogs", "Peter Pan",
         "a mat and a log", "the cats sat", "dogs sat on logs"] * 3


def test_training_puts_specials_first_and_round_trips_through_its_json():
  # Not asserted: identical vocabularies from two trainings. tokenizers breaks ties between
  # equally frequent pairs by a per-process random hash order; a suite's tokenizer is trained
  # once and saved, so every run on a prepared suite uses the same one.
  first = tokenize.train(TEXTS, vocab_size=60, lowercase=True)
  from tokenizers import Tokenizer
  assert Tokenizer.from_str(first.to_str()).to_str() == first.to_str()
  vocab = first.get_vocab()
  assert [vocab[t] for t in tokenize.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert len(vocab) <= 60
  assert "[CLS]" == first.id_to_token(first.encode("the cat").ids[0])


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

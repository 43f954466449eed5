"""WordPiece tokenization through the ``tokenizers`` library.

A tokenizer is either trained on a suite's training text or read from a BERT
``vocab.txt`` (so a pretrained vocabulary drops in). Training is deterministic
(``jmtl.data.vocab`` counts and merges itself, breaking ties by the tokens), and
the learned vocabulary is numbered in a canonical order (special tokens first,
then sorted), so the same texts give the same ids in every process.

Sequences are ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` (segment ids 0/1),
truncated to ``max_len`` (longest-first for pairs); truncation is reported.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jmtl.data.vocab import count_words, learn
from jmtl.data.errors import DataError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# Text past this many characters per allowed token is cut before tokenizing: it
# would be truncated anyway, and long documents would dominate tokenizing time.
_CHARS_PER_TOKEN = 16


def _assemble(vocab: dict[str, int], *, lowercase: bool, strip_accents: bool | None
              ) -> Tokenizer:
  tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase,
                                                    strip_accents=strip_accents)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  return tokenizer


def train(texts: Iterable[str], *, vocab_size: int, lowercase: bool) -> Tokenizer:
  """Trains a WordPiece vocabulary; the same texts always give the same tokenizer.

  Accents are kept (``strip_accents=False``): stripping them would merge
  distinct Turkish letters (c/ç, s/ş, g/ğ).
  """
  counts = count_words(texts, lowercase=lowercase)
  learned = sorted(set(learn(counts, vocab_size=vocab_size,
                             special_tokens=SPECIAL_TOKENS)) - set(SPECIAL_TOKENS))
  ids = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + learned)}
  return _finish(_assemble(ids, lowercase=lowercase, strip_accents=False))


def from_vocab_file(path: str | os.PathLike, *, lowercase: bool) -> Tokenizer:
  """A BERT tokenizer from a ``vocab.txt`` (one token per line, id = line index).

  As in BERT, an uncased vocabulary also strips accents.
  """
  path = Path(path)
  if not path.exists():
    raise DataError(f"vocab_file {path}: does not exist")
  tokens = path.read_text(encoding="utf-8").splitlines()
  vocab = {token: i for i, token in enumerate(tokens) if token}
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise DataError(f"vocab_file {path}: special tokens {missing} are missing")
  return _finish(_assemble(vocab, lowercase=lowercase, strip_accents=None))


def _finish(tokenizer: Tokenizer) -> Tokenizer:
  cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
      special_tokens=[(CLS, cls_id), (SEP, sep_id)])
  # Added tokens are matched before pre-tokenizing, so "[MASK]" in text stays one token.
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  return tokenizer


def save(tokenizer: Tokenizer, path: Path) -> None:
  """Writes the tokenizer JSON atomically (a concurrent reader never sees half)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp",
                                   encoding="utf-8") as handle:
    handle.write(tokenizer.to_str())
  os.replace(handle.name, path)


def load(path: Path) -> Tokenizer:
  return Tokenizer.from_file(str(path))


@dataclasses.dataclass
class Encoded:
  """One tokenized example.

  Attributes:
    ids: int32 token ids, with [CLS] and [SEP].
    type_ids: int32 segment ids.
    word_ids: int32 word index of each position (-1 for special tokens), or None
      for text input.
    truncated: whether anything was cut to fit ``max_len``.
  """

  ids: np.ndarray
  type_ids: np.ndarray
  word_ids: np.ndarray | None
  truncated: bool


class WordPiece:
  """A ``tokenizers.Tokenizer`` with the ids and the max length a suite needs."""

  def __init__(self, tokenizer: Tokenizer, max_len: int):
    if max_len < 3:
      raise DataError(f"max_len: {max_len} leaves no room for text between [CLS] and [SEP]")
    # Single sequences are cut here after encoding (cheaper than the library's
    # overflow bookkeeping); pairs use its longest-first truncation.
    self._single = Tokenizer.from_str(tokenizer.to_str())
    self._single.no_truncation()
    self._single.no_padding()
    self._pair = Tokenizer.from_str(tokenizer.to_str())
    self._pair.enable_truncation(max_len, strategy="longest_first")
    self._pair.no_padding()
    self.tokenizer = self._single
    self.max_len = max_len
    ids = {t: self._single.token_to_id(t) for t in SPECIAL_TOKENS}
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        ids[PAD], ids[UNK], ids[CLS], ids[SEP], ids[MASK])
    self.vocab_size = self._single.get_vocab_size()
    self.special_ids = np.array(sorted(ids.values()), np.int32)

  def _cut(self, text: str) -> tuple[str, bool]:
    limit = self.max_len * _CHARS_PER_TOKEN
    return (text[:limit], True) if len(text) > limit else (text, False)

  def _fit(self, ids: list[int], word_ids: list[int | None] | None, cut: bool) -> Encoded:
    """Truncates one [CLS] ... [SEP] encoding to max_len, keeping the final [SEP]."""
    truncated = cut or len(ids) > self.max_len
    if len(ids) > self.max_len:
      ids = ids[:self.max_len - 1] + [self.sep_id]
      word_ids = None if word_ids is None else word_ids[:self.max_len - 1] + [None]
    ids = np.asarray(ids, np.int32)
    words = None if word_ids is None else np.array(
        [-1 if w is None else w for w in word_ids], np.int32)
    return Encoded(ids, np.zeros_like(ids), words, truncated)

  def encode_texts(self, texts: Sequence[str], pairs: Sequence[str] | None = None
                   ) -> list[Encoded]:
    cut = [self._cut(t) for t in texts]
    if pairs is None:
      encodings = self._single.encode_batch([t for t, _ in cut])
      return [self._fit(e.ids, None, c) for e, (_, c) in zip(encodings, cut)]
    cut_pairs = [self._cut(p) for p in pairs]
    encodings = self._pair.encode_batch([(t, p) for (t, _), (p, _) in zip(cut, cut_pairs)])
    return [Encoded(np.asarray(e.ids, np.int32), np.asarray(e.type_ids, np.int32), None,
                    bool(e.overflowing) or c or p)
            for e, (_, c), (_, p) in zip(encodings, cut, cut_pairs)]

  def encode_words(self, sentences: Sequence[Sequence[str]]) -> list[Encoded]:
    encodings = self._single.encode_batch([list(s) for s in sentences], is_pretokenized=True)
    return [self._fit(e.ids, e.word_ids, False) for e in encodings]


def align_tags(word_ids: np.ndarray, tags: Sequence[int] | np.ndarray) -> np.ndarray:
  """Word-level tags on sub-words: the first sub-word of each word gets its tag;
  later sub-words and special tokens get -1 (masked out)."""
  word_ids = np.asarray(word_ids)
  previous = np.concatenate([[-1], word_ids[:-1]])
  first = (word_ids >= 0) & (word_ids != previous)
  tags = np.asarray(tags, np.int32)
  return np.where(first, tags[np.where(first, word_ids, 0)], -1).astype(np.int32)

"""Deterministic WordPiece vocabulary training (BPE merges with "##" continuations).

The ``tokenizers`` trainer breaks ties between equally frequent merges by the ids
it gave symbols in hash-map order, which changes from process to process: the
same corpus gave different vocabularies, and a checkpoint silently met other ids.
This trainer follows the same algorithm (the one ``WordPieceTrainer`` runs: BPE
over words, non-initial symbols prefixed ``##``, stop at ``vocab_size``) but
counts and merges itself, breaking ties by the pair's strings, so the same texts
and settings give the same vocabulary in every process and on every machine.
Words come from the same BERT normalizer and pre-tokenizer the tokenizer uses.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import normalizers, pre_tokenizers

PREFIX = "##"


def count_words(texts: Iterable[str], *, lowercase: bool) -> Counter[str]:
  """Word frequencies after BERT normalization (accents kept) and pre-tokenization."""
  normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  counts: Counter[str] = Counter()
  for text in texts:
    counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
  return counts


def _merged(symbols: list[int], left: int, right: int, new: int) -> list[int]:
  """``symbols`` with each non-overlapping (left, right), scanned left to right, merged."""
  out, i = [], 0
  while i < len(symbols):
    if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
      out.append(new)
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return out


def learn(word_counts: Counter[str], *, vocab_size: int, special_tokens: Sequence[str]
          ) -> list[str]:
  """Learned tokens (specials first) of at most ``vocab_size`` entries.

  Starts from every character (and its ``##`` form where it occurs inside a
  word), then repeatedly merges the most frequent adjacent pair; among equally
  frequent pairs the smallest ``(left, right)`` strings win.
  """
  tokens = list(dict.fromkeys(special_tokens))
  ids = {t: i for i, t in enumerate(tokens)}

  def token_id(token: str) -> int:
    if token not in ids:
      ids[token] = len(tokens)
      tokens.append(token)
    return ids[token]

  words = sorted(word_counts)  # sorted: the alphabet's order cannot depend on input order
  alphabet = sorted({c for w in words for c in w})
  for char in alphabet:
    token_id(char)
  symbols = [[token_id(w[0])] + [token_id(PREFIX + c) for c in w[1:]] for w in words]
  counts = [word_counts[w] for w in words]

  pair_counts: Counter[tuple[int, int]] = Counter()
  where: dict[tuple[int, int], set[int]] = {}
  for index, word in enumerate(symbols):
    for pair in zip(word, word[1:]):
      pair_counts[pair] += counts[index]
      where.setdefault(pair, set()).add(index)
  key = lambda pair: (-pair_counts[pair], tokens[pair[0]], tokens[pair[1]], pair)
  heap = [key(p) for p in pair_counts]
  heapq.heapify(heap)

  while len(tokens) < vocab_size and heap:
    stored, _, _, pair = heapq.heappop(heap)
    actual = pair_counts[pair]
    if actual <= 0:
      continue
    if -stored != actual:  # its count fell since it was pushed: queue it at its real count
      heapq.heappush(heap, key(pair))
      continue
    left, right = tokens[pair[0]], tokens[pair[1]]
    new = token_id(left + right[len(PREFIX):] if right.startswith(PREFIX) else left + right)
    delta: Counter[tuple[int, int]] = Counter()
    for index in sorted(where.pop(pair, ())):
      old = symbols[index]
      fresh = _merged(old, pair[0], pair[1], new)
      if len(fresh) == len(old):
        continue  # a stale entry: an earlier merge already consumed this pair here
      count = counts[index]
      for p in zip(old, old[1:]):
        delta[p] -= count
      for p in zip(fresh, fresh[1:]):
        delta[p] += count
        where.setdefault(p, set()).add(index)
      symbols[index] = fresh
    # Pairs whose count rose are queued again; those that fell are requeued
    # lazily, when popped with their old count.
    for p in sorted(delta):
      pair_counts[p] += delta[p]
      if delta[p] > 0:
        heapq.heappush(heap, key(p))
  return tokens

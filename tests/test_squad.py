"""Extractive QA: official SQuAD normalisation and scores, best-span decoding, windows."""

import math

import numpy as np
import pytest

from jmtl import squad
from jmtl.data.feed import tokenize, windows


# --- official normalisation and scores (hand-written cases) --------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The Denver Broncos", "denver broncos"),
    ("  an   apple, a pear.  ", "apple pear"),
    ("Théâtre!", "théâtre"),  # only ASCII punctuation goes; accents stay
    ("the", ""),
    ("antelope thereafter", "antelope thereafter"),  # articles only as whole words
    ("rock-n-roll", "rocknroll"),  # punctuation is deleted, not turned into a space
])
def test_normalize_answer_matches_official_rules(text, expected):
  assert squad.normalize_answer(text) == expected


def test_exact_match_and_f1_hand_values():
  assert squad.exact_match("the Broncos!", "Broncos") == 1.0
  assert squad.exact_match("Denver Broncos", "Broncos") == 0.0
  # pred {denver, broncos}, gold {broncos}: P = 1/2, R = 1 -> F1 = 2/3
  assert squad.f1("Denver Broncos", "the Broncos") == pytest.approx(2 / 3)
  # bag of tokens: pred "a b b", gold "b b c" share two "b" -> P = R = 2/3
  assert squad.f1("x y y", "y y z") == pytest.approx(2 / 3)
  assert squad.f1("", "") == 1.0 and squad.f1("", "Broncos") == 0.0
  assert squad.f1("the", "") == 1.0  # normalises to empty: agrees with no-answer


def test_squad_scores_max_over_golds_and_unanswerable_as_empty():
  golds = {"q1": ["Denver Broncos", "Broncos"], "q2": [], "q3": ["Carolina"], "q4": ["x"]}
  predictions = {"q1": "Broncos", "q2": "", "q3": "the Carolina Panthers"}  # q4 missing
  scores = squad.squad_scores(predictions, golds)
  assert scores["exact_match"] == pytest.approx((1 + 1 + 0 + 0) / 4)
  assert scores["f1"] == pytest.approx((1 + 1 + 2 * 0.5 * 1 / 1.5 + 0) / 4)
  assert math.isnan(squad.squad_scores({}, {})["f1"])


# --- decoding -------------------------------------------------------------------------------


def _window(question, starts):
  starts = np.asarray(starts)
  return squad.Window(question, starts, np.where(starts >= 0, starts + 1, -1))


def test_decode_picks_best_valid_span_not_two_argmaxes():
  # One window: [CLS] q [SEP] c0 c1 c2 [SEP]; context chars "abc", one char per token.
  window = _window(0, [-1, -1, -1, 0, 1, 2, -1])
  start = np.array([[0, 9, 0, 1, 0, 5, 0]], float)   # argmax start is the question token
  end = np.array([[0, 0, 0, 4, 3, 0, 8]], float)     # argmax end is [SEP]
  # valid spans: (3,3)=5 (3,4)=4 (4,4)=3 (5,5)=5 (3,5)=1 (4,5)=0 -> first best (3, 3) "a"
  (answer,) = squad.decode(start, end, [window], ["abc"])
  assert answer.text == "a" and answer.score == 5.0
  # (5,3) would score 5 + 9 = 14 but ends before it starts; (5,5) = 7 is the best valid.
  start[0, 3], end[0, 3], end[0, 5] = -20.0, 9.0, 2.0
  (answer,) = squad.decode(start, end, [window], ["abc"])
  assert answer.text == "c"


def test_decode_respects_max_answer_length():
  window = _window(0, [-1, 0, 1, 2, 3, -1])
  start = np.array([[0, 5, 0, 0, 0, 0]], float)
  end = np.array([[0, 0, 0, 0, 5, 0]], float)
  assert squad.decode(start, end, [window], ["abcd"])[0].text == "abcd"
  # with at most 2 tokens: (1,1)=5, (1,2)=5 ties, (3,4)=5, first is (1,1)
  assert squad.decode(start, end, [window], ["abcd"], max_answer_length=2)[0].text == "a"


def test_decode_across_windows_answer_split_between_two_windows():
  # Context "abcdef" in two windows: w0 holds chars 0-3, w1 holds chars 2-5 (overlap "cd").
  # The answer "de" is cut in w0 (only "d" is there); w1 holds it whole and wins.
  w0 = _window(0, [-1, -1, 0, 1, 2, 3, -1])
  w1 = _window(0, [-1, -1, 2, 3, 4, 5, -1])
  start = np.array([[1, 0, 0, 0, 0, 3, 0], [1, 0, 0, 4, 0, 0, 0]], float)
  end = np.array([[1, 0, 0, 0, 0, 3, 0], [1, 0, 0, 0, 4, 0, 0]], float)
  (answer,) = squad.decode(start, end, [w0, w1], ["abcdef"])
  assert (answer.text, answer.score) == ("de", 8.0)
  assert answer.null_score == 2.0  # min over windows of the [CLS] start + end


def test_decode_unanswerable_with_null_threshold():
  window = _window(0, [-1, 0, 1, -1])
  start = np.array([[6, 2, 0, 0]], float)
  end = np.array([[6, 0, 2, 0]], float)  # null 12 > best span 4
  assert squad.decode(start, end, [window], ["ab"])[0].text == "ab"  # v1.1 always answers
  assert squad.decode(start, end, [window], ["ab"], null_threshold=0.0)[0].text == ""
  assert squad.decode(start, end, [window], ["ab"], null_threshold=10.0)[0].text == "ab"


def test_best_null_threshold_tunes_on_validation():
  answers = [squad.Answer("Broncos", 5.0, 1.0),   # gap -4, answerable
             squad.Answer("Paris", 2.0, 4.0),     # gap 2, unanswerable
             squad.Answer("Rome", 3.0, 3.5)]      # gap 0.5, answerable
  golds = [["Broncos"], [], ["Rome"]]
  threshold, score = squad.best_null_threshold(answers, golds)
  assert score == pytest.approx(1.0) and 0.5 <= threshold < 2.0


# --- windows ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece():
  words = "who won the game the denver broncos beat carolina in a close game on sunday".split()
  tokenizer = tokenize.train([" ".join(words)] * 3, vocab_size=200, lowercase=True)
  return tokenize.WordPiece(tokenizer, max_len=12)


def test_windows_overlap_and_map_answers_through_offsets(wordpiece):
  context = "The Denver Broncos beat Carolina in a close game on Sunday"
  question = "who won"
  answer = (context.index("Carolina"), context.index("Carolina") + len("Carolina"))
  rows = windows.make_windows(wordpiece, [question], [context], [answer], doc_stride=3,
                              max_query_len=4)
  assert len(rows.ids) > 1 and all(len(r) <= 12 for r in rows.ids)
  assert (rows.question == 0).all()
  holding = [i for i, (s, e) in enumerate(rows.spans) if s > 0]
  assert holding, "some window holds the answer whole"
  for i in holding:
    s, e = rows.spans[i]
    assert context[rows.char_starts[i][s]:rows.char_ends[i][e]] == "Carolina"
    assert rows.type_ids[i][s] == 1
  # Decoding the gold spans as one-hot logits gives back the answer text.
  width = max(len(r) for r in rows.ids)
  start = np.full((len(rows.ids), width), -5.0)
  end = np.full((len(rows.ids), width), -5.0)
  i = holding[0]
  start[i, rows.spans[i][0]] = end[i, rows.spans[i][1]] = 5.0
  found = [squad.Window(0, cs, ce) for cs, ce in zip(rows.char_starts, rows.char_ends)]
  assert squad.decode(start, end, found, [context])[0].text == "Carolina"


def test_windows_count_answers_cut_off_and_unanswerable(wordpiece):
  context = "The Denver Broncos beat Carolina in a close game on Sunday"
  answer = (context.index("Broncos"), len(context))  # longer than any window
  rows = windows.make_windows(wordpiece, ["who"], [context], [answer], doc_stride=2,
                              max_query_len=4)
  assert (rows.spans == 0).all() and rows.cut_off == len(rows.ids)
  rows = windows.make_windows(wordpiece, ["who"], [context], [None], doc_stride=2,
                              max_query_len=4)
  assert (rows.spans == 0).all() and rows.cut_off == 0


def test_best_null_threshold_matches_brute_force_and_beats_zero():
  rng = np.random.default_rng(0)
  answers = [squad.Answer(str(rng.choice(["cat", "dog"])), float(rng.normal()),
                          float(rng.normal())) for _ in range(40)]
  golds = [[] if rng.random() < 0.4 else [str(rng.choice(["cat", "dog"]))] for _ in range(40)]
  ids = [str(i) for i in range(40)]

  def f1_at(threshold):
    texts = {i: "" if a.null_score - a.score > threshold else a.text
             for i, a in zip(ids, answers)}
    return squad.squad_scores(texts, dict(zip(ids, golds)))["f1"]

  threshold, best = squad.best_null_threshold(answers, golds)
  assert best == pytest.approx(f1_at(threshold))
  assert best >= max(f1_at(t) for t in np.linspace(-4, 4, 81)) - 1e-12

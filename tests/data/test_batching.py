"""Buckets, padding and masks of one batch, and host-side MLM masking."""

import numpy as np
import pytest

from jmtl.data.feed import batching
from jmtl.tasks import TaskSpec

TAG = TaskSpec("pos", "tagging", 4)
CLS = TaskSpec("topic", "classification", 3)
REG = TaskSpec("score", "regression")


def test_buckets():
  assert batching.length_buckets((16, 32, 64), 48) == (16, 32, 48)
  assert batching.length_buckets((128, 16), 64) == (16, 64)
  assert batching.bucket_length(16, (16, 32)) == 16
  assert batching.bucket_length(17, (16, 32)) == 32
  with pytest.raises(ValueError):
    batching.bucket_length(33, (16, 32))


def test_collate_pads_and_masks_by_hand():
  rows = [batching.Row(np.array([2, 7, 8, 3]), np.zeros(4, np.int32),
                       {"pos": np.array([-1, 1, -1, -1]), "topic": 2}),
          batching.Row(np.array([2, 9, 3]), np.array([0, 1, 1]), {"score": 0.5})]
  batch = batching.collate(rows, batch_size=3, length=6, tasks=(TAG, CLS, REG), pad_id=0)
  np.testing.assert_array_equal(batch["input_ids"], [[2, 7, 8, 3, 0, 0], [2, 9, 3, 0, 0, 0],
                                                     [0] * 6])
  np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1, 0, 0],
                                                          [1, 1, 1, 0, 0, 0], [0] * 6])
  np.testing.assert_array_equal(batch["token_type_ids"][1], [0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(batch["pos"], [[0, 1, 0, 0, 0, 0], [0] * 6, [0] * 6])
  np.testing.assert_array_equal(batch["pos_mask"], [[0, 1, 0, 0, 0, 0], [0] * 6, [0] * 6])
  np.testing.assert_array_equal(batch["topic"], [2, 0, 0])
  np.testing.assert_array_equal(batch["topic_mask"], [1, 0, 0])
  np.testing.assert_array_equal(batch["score_mask"], [0, 1, 0])
  assert batch["score"].dtype == np.float32 and batch["score"][1] == 0.5
  assert batch["pos_mask"].dtype == np.float32 and batch["input_ids"].dtype == np.int32
  assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "pos", "pos_mask",
                        "topic", "topic_mask", "score", "score_mask"}


def test_mask_tokens_is_deterministic_and_follows_80_10_10():
  special = np.array([0, 1, 2, 3, 4])
  vocab, mask_id, length = 1000, 4, 42
  chosen = masked = randomised = kept = candidates = 0
  for example in range(1500):
    rng = np.random.default_rng([0, example])
    ids = np.concatenate([[2], rng.integers(5, vocab, length - 2), [3]])
    inputs, labels = batching.mask_tokens(ids, np.random.default_rng([1, example]),
                                          mask_id=mask_id, vocab_size=vocab, special_ids=special)
    again = batching.mask_tokens(ids, np.random.default_rng([1, example]), mask_id=mask_id,
                                 vocab_size=vocab, special_ids=special)
    np.testing.assert_array_equal(inputs, again[0])
    picked = labels >= 0
    assert not picked[0] and not picked[-1]  # [CLS] and [SEP] are never chosen
    np.testing.assert_array_equal(labels[picked], ids[picked])
    np.testing.assert_array_equal(inputs[~picked], ids[~picked])
    assert picked.sum() == round(0.15 * (length - 2))
    candidates += length - 2
    chosen += picked.sum()
    masked += (inputs[picked] == mask_id).sum()
    kept += (inputs[picked] == ids[picked]).sum()
    randomised += ((inputs[picked] != mask_id) & (inputs[picked] != ids[picked])).sum()
    assert not np.isin(inputs[picked & (inputs != mask_id)], special).any()
  for count, share in ((masked, 0.8), (kept, 0.1 + 0.1 / (vocab - 5)), (randomised, 0.1)):
    sigma = np.sqrt(chosen * share * (1 - share))
    assert abs(count - chosen * share) < 4 * sigma, (count, chosen * share)


def test_mask_tokens_without_candidates():
  inputs, labels = batching.mask_tokens(np.array([2, 3]), np.random.default_rng(0), mask_id=4,
                                        vocab_size=10, special_ids=np.array([0, 1, 2, 3, 4]))
  assert inputs.tolist() == [2, 3] and labels.tolist() == [-1, -1]

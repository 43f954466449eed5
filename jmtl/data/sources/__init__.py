"""Getting corpora into the data_dir: pinned packages, built-in suites, format
readers, and the store that builds each suite atomically. Knows nothing of
tokens or batches (that is ``jmtl.data.feed``, which reads from here)."""

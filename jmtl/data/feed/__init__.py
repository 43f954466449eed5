"""Feeding the model from a built suite: WordPiece, token caches, fixed-shape
batches, task samplers and the ``Suite`` pipeline. Reads ``jmtl.data.sources``;
nothing there imports from here."""

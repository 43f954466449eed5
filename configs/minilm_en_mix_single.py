"""Single-task baselines for configs/minilm_en_mix.py: each task fine-tunes its own MiniLM with
the same budget (steps, batch, learning rate), written to <workdir>/baselines.json for the Δm%
of multi-task runs (--config.baselines=<workdir>/baselines.json). About twice the wall time of
one multi-task run: the BBC baseline costs what the multi-task run costs."""

import os

from jmtl.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "minilm_en_mix.py"))
  config.single_task = True
  return config

"""Single-task baselines on ud_tr: each task trained alone with the same budget, written
to <workdir>/baselines.json for the Δm% of multi-task runs
(--config.baselines=<workdir>/baselines.json)."""

import os

from jmtl.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "ud_tr.py"))
  config.single_task = True
  return config

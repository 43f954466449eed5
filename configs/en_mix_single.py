"""Single-task baselines on en_mix: each task trained alone with the same budget, written
to <workdir>/baselines.json for the Δm% of multi-task runs
(--config.baselines=<workdir>/baselines.json)."""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(__file__), "default.py")
  spec = importlib.util.spec_from_file_location("default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.single_task = True
  return config

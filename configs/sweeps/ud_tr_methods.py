"""The eleven-method comparison of en_mix_methods.py (same balancers and hyperparameters, 3
seeds, single-task baselines per seed) on ud_tr (Turkish UD, same input, 4 tasks), on the base
config configs/ud_tr.py, at 300 steps of 32 sentences: what 2 CPU cores fit in an hour for 45
trainings. The committed tables under benchmarks/results/sweep_methods_ud_tr/ come from it.

  jmtl sweep --sweep configs/sweeps/ud_tr_methods.py --dir runs/ud_tr_methods
  jmtl sweep report runs/ud_tr_methods
"""

import os

from jmtl.config import load_config


def get_config():
  here = os.path.dirname(__file__)
  config = load_config(os.path.join(here, "en_mix_methods.py"))
  config.config = os.path.join(here, "..", "ud_tr.py")
  config.suites = ("ud_tr",)
  config.overrides = ("train.steps=300", "train.checkpoint_every=300")
  return config

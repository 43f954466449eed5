"""The six methods whose defects issue 12 fixed (EW, PCGrad, GradNorm, MGDA, IMTL-G, Nash-MTL) on
en_mix (WNUT-16 NER, BBC topics, PTB masked LM; multi-input), with the single-task baselines
trained by the sweep, all at the budget of configs/default.py (1000 steps), one seed: the grid
of core_ud_tr.py on another suite and base config.

  jmtl sweep --sweep configs/sweeps/core_en_mix.py --dir runs/core_en_mix --workers 2
  jmtl sweep report runs/core_en_mix
"""

import os

from jmtl.config import load_config


def get_config():
  here = os.path.dirname(__file__)
  config = load_config(os.path.join(here, "core_ud_tr.py"))
  config.config = os.path.join(here, "..", "default.py")
  config.suites = ("en_mix",)
  return config

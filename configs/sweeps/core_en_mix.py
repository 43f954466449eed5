"""The six methods whose defects issue 12 fixed (EW, PCGrad, GradNorm, MGDA, IMTL-G, Nash-MTL) on
en_mix (WNUT-16 NER, BBC topics, PTB masked LM; multi-input), with the single-task baselines
trained by the sweep, all at the budget of configs/default.py (1000 steps), one seed.

  jmtl sweep --sweep configs/sweeps/core_en_mix.py --dir runs/core_en_mix --workers 2
  jmtl sweep report runs/core_en_mix
"""

import os

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.config = os.path.join(os.path.dirname(__file__), "..", "default.py")
  config.balancers = [("equal_weight", {}), ("pcgrad", {}), ("gradnorm", {}), ("mgda", {}),
                      ("imtl_g", {}), ("nash_mtl", {})]
  config.seeds = (0,)
  config.suites = ("en_mix",)
  config.baselines = True
  config.overrides = ("train.steps=1000",)
  return config

"""The six methods whose defects issue 12 fixed (EW, PCGrad, GradNorm, MGDA, IMTL-G, Nash-MTL) on
ud_tr (Turkish UD, same input, 4 tasks), with the single-task baselines trained by the sweep, all
at the budget of configs/ud_tr.py (1000 steps of 32 sentences), one seed.

  jmtl sweep --sweep configs/sweeps/core_ud_tr.py --dir runs/core_ud_tr --workers 2
  jmtl sweep report runs/core_ud_tr
"""

import os

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.config = os.path.join(os.path.dirname(__file__), "..", "ud_tr.py")
  config.balancers = [("equal_weight", {}), ("pcgrad", {}), ("gradnorm", {}), ("mgda", {}),
                      ("imtl_g", {}), ("nash_mtl", {})]
  config.seeds = (0,)
  config.suites = ("ud_tr",)
  config.baselines = True
  config.overrides = ("train.steps=1000",)
  return config

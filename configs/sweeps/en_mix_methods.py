"""A method comparison on en_mix: eleven balancers x 3 seeds, same budget per run, with the
single-task baselines trained inside the sweep (per seed) for Δm%.

  jmtl sweep --sweep configs/sweeps/en_mix_methods.py --dir runs/sweep_en_mix [--workers N]
  jmtl sweep report runs/sweep_en_mix

Any flag narrows or widens it: --config.seed=0 (one seed), --config.train.steps=300,
--config.balancer.name=equal_weight,pcgrad (replaces the balancer list).

Budget: 36 runs of 1000 steps; two at a time on 2 CPU cores a run took a median 13 minutes
(520-640 ms a step), so about 4 hours with --workers 2. Do not shorten it to 300 steps as
configs/sweeps/ud_tr_methods.py does: on en_mix the from-scratch encoder's WNUT-16 span F1 is
still 0.0 at step 300, and Δm% divides by the baselines' metric. Results of this sweep:
benchmarks/results/sweep_methods_en_mix/.
"""

import os

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.config = os.path.join(os.path.dirname(__file__), "..", "default.py")
  config.balancers = [
      ("equal_weight", {}), ("pcgrad", {}), ("gradnorm", {}), ("mgda", {}),
      ("cagrad", {"c": 0.4}), ("imtl_g", {}), ("nash_mtl", {}), ("upgrad", {}), ("famo", {}),
      ("uncertainty", {}), ("rlw", {}),
  ]
  config.seeds = (0, 1, 2)
  config.suites = ("en_mix",)
  config.baselines = True
  config.overrides = ("train.steps=1000",)  # the budget: identical for every run
  return config

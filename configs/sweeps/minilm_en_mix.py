"""MiniLM multi-task fine-tuning on en_mix (WNUT-16 NER + BBC topics) under four balancers, with
the single-task baselines of the same budget trained by the sweep, for issue 11's Δm%:

  jmtl sweep --sweep configs/sweeps/minilm_en_mix.py --dir runs/minilm_en_mix
  jmtl sweep report runs/minilm_en_mix

The budget: 200 steps of 8 BBC articles (cut at 256 tokens, not configs/minilm_en_mix.py's
512) and 16 tweets, one seed. BBC topics are decided by an article's opening, so the cut costs
little accuracy; use configs/minilm_en_mix.py itself when the hours are there. The committed
results (benchmarks/results/minilm_en_mix/) padded the tweets to the articles' length, as every
multi-input step did before data.task_lengths existed; the sweep keeps doing so to reproduce
them (a run took ~20 minutes on 2 idle cores). data.task_lengths=own makes the same batches
without that padding, for a faster step: benchmarks/results/task_lengths_minilm.md.
"""

import os

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.config = os.path.join(os.path.dirname(__file__), "..", "minilm_en_mix.py")
  # With two tasks UPGrad's update equals PCGrad's (a conflicting gradient's projection onto
  # the other's normal plane already lies in their dual cone), so MGDA is the third method.
  config.balancers = [("equal_weight", {}), ("pcgrad", {}), ("upgrad", {}), ("mgda", {})]
  config.seeds = (0,)
  config.suites = ("en_mix",)
  config.baselines = True
  config.overrides = (  # the budget: identical for every run
      "train.steps=200", "optimizer.warmup_steps=20", "train.log_every=25",
      "data.max_len=256", "data.buckets=(64,128,256)",
      "data.batch_size={'wnut16_ner':16,'bbc_topic':8}", "data.task_lengths=shared")
  return config

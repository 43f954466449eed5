"""MiniLM (sentence-transformers all-MiniLM-L6-v2, fetched offline through pip) fine-tuned on
en_mix: WNUT-16 NER and BBC topics, multi-input, every task each step, equal weights.

This is the config for real results (the default from-scratch encoder is a quick demo).
max_len 512 (the model's position table): BBC articles have a median of 422 MiniLM tokens, so
64% fit whole (at 256 only ~10% would). Tweets stay in the 64-token bucket.

The PTB masked-LM task of en_mix is left out: its 30,522-way output layer over every token costs
as much as the whole 6-layer encoder, and MiniLM is already pre-trained; add it back with
--config.data.tasks='("wnut16_ner","bbc_topic","ptb_mlm")'.

Budget on 2 CPU cores: 300 steps of (8 BBC articles x 512 + 8 tweets x 64; data.task_lengths
= "own" keeps the tweets at 64 tokens): 6.6 s a step measured on 2 idle cores (0.57x the
11.7 s of padding the tweets to 512 too; benchmarks/results/task_lengths_minilm.md), so 33
minutes of steps, plus compiles (one per BBC bucket met) and evaluation: an estimated 40
minutes, not timed as a whole run. The single-task baselines (configs/minilm_en_mix_single.py)
take about as long, BBC being nearly all of both. For a shorter budget that still gets BBC
to 0.96, see configs/sweeps/minilm_en_mix.py (200 steps at 256 tokens: 3.0 s a step).
"""

from jmtl.config import base_config


def get_config():
  config = base_config()
  config.data.suite = "en_mix"
  config.data.tasks = ("wnut16_ner", "bbc_topic")
  config.data.max_len = 512
  config.data.buckets = (64, 128, 256, 512)
  config.data.batch_size = 8
  config.data.task_lengths = "own"  # tweets stay at 64 tokens beside 512-token articles
  config.data.eval_batch_size = 16
  config.model.encoder = "bert"
  config.model.pretrained = "minilm"
  config.model.pooling = "mean"
  config.model.head_hidden = 128
  config.balancer.name = "equal_weight"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 30
  config.optimizer.weight_decay = 0.01
  config.train.steps = 300
  config.train.log_every = 10
  config.train.eval_every = 0
  config.train.checkpoint_every = 100
  return config

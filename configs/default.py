"""Default: the offline en_mix suite (WNUT-16 NER, BBC topics, masked LM on PTB text),
multi-input with every task each step, equal weights. ~5 minutes on 2 CPU cores."""

from jmtl.config import base_config


def get_config():
  config = base_config()
  config.data.suite = "en_mix"
  config.data.batch_size = 16
  config.balancer.name = "equal_weight"
  config.train.steps = 1000
  config.train.eval_every = 500
  config.train.checkpoint_every = 250
  return config

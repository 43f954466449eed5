"""Turkish UD (same input): UPOS, DEPREL, head distance and web-vs-wiki source, on the same
sentences, one forward for all tasks. ~5 minutes on 2 CPU cores."""

from jmtl.config import base_config


def get_config():
  config = base_config()
  config.data.suite = "ud_tr"
  config.data.batch_size = 32
  config.balancer.name = "equal_weight"
  config.train.steps = 1000
  config.train.eval_every = 500
  config.train.checkpoint_every = 250
  return config

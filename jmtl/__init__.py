"""jmtl: functional multi-task learning for NLP in JAX/Flax."""

from jmtl import balancers
from jmtl.gradients import multi_input_jacobian
from jmtl.gradients import same_input_jacobian
from jmtl.gradients import same_input_representation
from jmtl.gradients import task_losses
from jmtl.gradients import weighted_loss_grads
from jmtl.models import BertConfig
from jmtl.models import EncoderConfig
from jmtl.models import MultiTaskModel
from jmtl.predict import Predictor
from jmtl.tasks import TaskKind
from jmtl.tasks import TaskSpec
from jmtl.train.parallel import make_train_step
from jmtl.train.state import TrainState
from jmtl.train.state import create_train_state

__version__ = "0.1.0"


def __getattr__(name: str):
  # jmtl.embed(texts, pretrained=...): loads the tokenizer and data stack only when used.
  if name == "embed":
    from jmtl.pretrained.embedding import embed
    return embed
  raise AttributeError(f"module 'jmtl' has no attribute {name!r}")

"""Flax modules: the shared encoder, task heads and the multi-task model."""

from jmtl.models.bert import BertConfig
from jmtl.models.encoder import Encoder
from jmtl.models.encoder import EncoderConfig
from jmtl.models.heads import Head
from jmtl.models.multitask import MultiTaskModel
from jmtl.models.multitask import count_params

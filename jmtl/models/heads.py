"""Task heads: one small Flax module per task kind."""

from __future__ import annotations

import flax.linen as nn

from jmtl.models.matmul import Dense
from jmtl.models.precision import at_least_float32
from jmtl.tasks import TaskKind, TaskSpec


class Head(nn.Module):
  """Maps encoder features to one task's outputs.

  Sentence-level kinds read the pooled vector ``[B, P]``; token-level kinds read token
  features ``[B, L, D]``. Outputs: classification and multi_label ``[B, C]``, regression ``[B]``, tagging and
  mlm ``[B, L, C]``, span_qa ``[B, L, 2]`` (start and end logits). The head computes in
  its inputs' and params' dtype (``jmtl.models.precision``); its outputs are (at least)
  float32, so every loss and softmax over them is.
  """

  spec: TaskSpec
  hidden: int = 64

  @nn.compact
  def __call__(self, tokens, pooled):
    return at_least_float32(self._outputs(tokens, pooled))

  def _outputs(self, tokens, pooled):
    spec = self.spec
    match spec.kind:
      case TaskKind.CLASSIFICATION | TaskKind.REGRESSION | TaskKind.MULTI_LABEL:
        h = nn.relu(Dense(self.hidden, name="hidden")(pooled))
        out = Dense(spec.num_labels, name="out")(h)
        return out[..., 0] if spec.kind == TaskKind.REGRESSION else out
      case TaskKind.TAGGING | TaskKind.SPAN_QA:
        return Dense(spec.num_labels, name="out")(tokens)
      case TaskKind.MLM:
        h = nn.gelu(Dense(tokens.shape[-1], name="transform")(tokens))
        h = nn.LayerNorm(name="norm")(h)
        return Dense(spec.num_labels, name="out")(h)
    raise ValueError(f"task {spec.name!r}: no head for kind {spec.kind!r}")


"""Per-task losses and gradients of the shared params, all inside one traced function.

What a balancer needs, computed for any model that implements the model protocol
(``jmtl.models.protocol``):

* ``same_input_jacobian``: one forward of the shared params, each task's loss and its
  gradient w.r.t. the shared representation, then ONE ``vmap`` over the shared vjp with the
  T representation cotangents: per-task gradients of the shared params ``[T, ...]``.
* ``multi_input_jacobian``: one batch per task; each task has its own forward and backward,
  so exact per-task gradients cost what one summed backward costs. Tasks' batches may differ
  in rows and length.
* ``same_input_representation``: per-task gradients w.r.t. the shared representation plus
  the vjp that turns a combined cotangent into parameter gradients with one backward
  (rep-grad, as MGDA-UB).
* ``weighted_loss_grads``: the weighted loss sum and one backward, for methods that need no
  per-task gradients.
* ``*_compact_jacobian``: the exact per-task gradients with the token table's part kept as
  per-token rows (see ``_compact``), for Gram methods.
* ``aux_loss_grads``: the model's auxiliary losses (protocol ``aux_loss_sum``) and their
  gradient, which the step adds outside the balancer.

Which of these a train step uses is chosen in one table, ``jmtl.train.grad_paths.PATHS``.
"""

from jmtl.gradients._compact import CompactTaskGradients
from jmtl.gradients._compact import gather_rows
from jmtl.gradients._compact import multi_input_compact_jacobian
from jmtl.gradients._compact import same_input_compact_jacobian
from jmtl.gradients._compact import split_token_table
from jmtl.gradients._compact import token_table_gradient
from jmtl.gradients._compact import token_table_gram
from jmtl.gradients._compact import with_token_table
from jmtl.gradients._task import RepresentationGradients
from jmtl.gradients._task import aux_loss_grads
from jmtl.gradients._task import TaskGradients
from jmtl.gradients._task import host_every_task_present
from jmtl.gradients._task import is_multi_input
from jmtl.gradients._task import label_counts
from jmtl.gradients._task import loss_denominators
from jmtl.gradients._task import multi_input_jacobian
from jmtl.gradients._task import same_input_jacobian
from jmtl.gradients._task import same_input_representation
from jmtl.gradients._task import task_losses
from jmtl.gradients._task import weighted_loss_grads

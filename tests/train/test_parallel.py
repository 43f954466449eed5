"""pmap and mesh-sharded steps reach the parameters of a single-device run, through steps
with every task labelled, one task absent from the global batch, and one task absent from
some devices' rows only.

Each case runs in a subprocess with ``--xla_force_host_platform_device_count=N``, since the
device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from device_env import fake_devices_env

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    sys.path.insert(0, {tests!r})
    from tiny_model import TINY, make_batch
    from jmtl.balancers import get
    from jmtl.models import MultiTaskModel
    from jmtl.tasks import TaskSpec
    from jmtl.train.parallel import make_train_step
    from jmtl.train.state import create_train_state

    tasks = (TaskSpec("topic", "classification", 3), TaskSpec("pos", "tagging", 5),
             TaskSpec("score", "regression"))
    layout, method, grad_mode, n, absent = {layout!r}, {method!r}, {grad_mode!r}, {n}, {absent!r}
    model = MultiTaskModel(TINY, tasks, layout=layout)
    def batch_at(step):
      if layout == "multi_input":
        batch = {{s.name: make_batch((s,), batch_size=8, seed=100 * step + i)
                 for i, s in enumerate(tasks)}}
      else:
        batch = make_batch(tasks, batch_size=8, seed=step)
      of = lambda name: batch[name] if layout == "multi_input" else batch
      if step == 1 and absent:  # "score" absent from the global batch: the masked step
        of("score")["score_mask"][:] = 0
      if step == 2:  # "pos" labelled on the first device's rows only: every task present
        of("pos")["pos_mask"][n // 2 * (8 // n):] = 0
      return batch
    # SGD, not Adam: attention key biases have an exactly-zero gradient, and Adam would
    # blow their 1e-10 reduction-order noise up to full-size steps.
    optimizer = optax.sgd(0.1, momentum=0.9)
    balancer = get(method, num_tasks=len(tasks))
    final = {{}}
    for parallelism in ("none", "pmap", "sharded"):
      state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch_at(0), 0))()
      step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode,
                             parallelism=parallelism, num_devices=n)
      state = step.place_state(state)
      final[parallelism + "_every_task_present"] = []
      for s in range(4):
        batch = step.place_batch(batch_at(s))
        final[parallelism + "_every_task_present"].append(
            step.jitted_for(batch) is step._fn_every_task_present)
        state, metrics = step(state, batch)
      state = step.gather_state(state)
      leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state.params)]
      final[parallelism] = np.concatenate(leaves).tolist()
      final[parallelism + "_devices"] = len(jax.devices())
    print("RESULT" + json.dumps(final))
""")


def _run(layout, method, grad_mode, n, absent):
  env = fake_devices_env(n)
  code = SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), layout=layout,
                       method=method, grad_mode=grad_mode, n=n, absent=absent)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
  return json.loads(line[len("RESULT"):])


# absent: step 1 lacks a task globally, so the masked step compiles too (three layouts x two
# steps). Global presence is summed over devices the same way for every method, so two
# cases (a Gram method on multi-input batches, a loss method with state on 4 devices) run it.
@pytest.mark.parametrize("layout,method,grad_mode,n,absent", [
    ("same_input", "pcgrad", "exact", 2, False),
    ("same_input", "gradnorm", "exact", 4, False),
    ("multi_input", "pcgrad", "exact", 2, True),
    ("same_input", "mgda", "rep", 2, False),
    ("same_input", "dwa", "exact", 4, True),
])
def test_pmap_and_sharded_match_single_device(layout, method, grad_mode, n, absent):
  import numpy as np
  final = _run(layout, method, grad_mode, n, absent)
  assert final["none_devices"] == n
  for parallelism in ("none", "pmap", "sharded"):  # step 2 lacks "pos" on some devices only,
    # and the host reads the global batch: every task is present
    assert final[parallelism + "_every_task_present"] == [True, not absent, True, True], \
        parallelism
  reference = np.asarray(final["none"])
  for parallelism in ("pmap", "sharded"):
    np.testing.assert_allclose(np.asarray(final[parallelism]), reference, rtol=1e-5, atol=1e-5,
                               err_msg=f"{parallelism} on {n} devices drifted from one device")

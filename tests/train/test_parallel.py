"""pmap and mesh-sharded steps reach the parameters of a single-device run.

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
    layout, method, grad_mode, n = {layout!r}, {method!r}, {grad_mode!r}, {n}
    model = MultiTaskModel(TINY, tasks, layout=layout)
    def batch_at(step):
      if layout == "multi_input":
        return {{s.name: make_batch((s,), batch_size=8, seed=100 * step + i)
                for i, s in enumerate(tasks)}}
      return make_batch(tasks, batch_size=8, seed=step)
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
      for s in range(4):
        state, metrics = step(state, step.place_batch(batch_at(s)))
      state = step.gather_state(state)
      leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state.params)]
      final[parallelism] = np.concatenate(leaves).tolist()
      final[parallelism + "_devices"] = len(jax.devices())
    print("RESULT" + json.dumps(final))
""")


def _run(layout, method, grad_mode, n):
  env = fake_devices_env(n)
  code = SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), layout=layout,
                       method=method, grad_mode=grad_mode, n=n)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
  return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("layout,method,grad_mode,n", [
    ("same_input", "pcgrad", "exact", 2),
    ("same_input", "gradnorm", "exact", 4),
    ("multi_input", "pcgrad", "exact", 2),
    ("same_input", "mgda", "rep", 2),
    ("same_input", "dwa", "exact", 4),
])
def test_pmap_and_sharded_match_single_device(layout, method, grad_mode, n):
  import numpy as np
  final = _run(layout, method, grad_mode, n)
  assert final["none_devices"] == n
  reference = np.asarray(final["none"])
  for parallelism in ("pmap", "sharded"):
    np.testing.assert_allclose(np.asarray(final[parallelism]), reference, rtol=1e-5, atol=1e-5,
                               err_msg=f"{parallelism} on {n} devices drifted from one device")

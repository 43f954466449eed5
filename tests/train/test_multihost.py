"""Two processes on 127.0.0.1 (2 CPU devices each) train like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from device_env import fake_devices_env

WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    from jmtl.train.parallel import initialize_distributed
    if num_processes > 1:
      initialize_distributed(f"127.0.0.1:{{port}}", num_processes, process_id, local_devices=2)
    else:
      import jax; jax.config.update("jax_num_cpu_devices", 4)
    import jax, numpy as np, optax
    from tiny_model import TINY, make_batch
    from jmtl.balancers import get
    from jmtl.models import MultiTaskModel
    from jmtl.tasks import TaskSpec
    from jmtl.train.parallel import make_train_step
    from jmtl.train.state import create_train_state
    tasks = (TaskSpec("topic", "classification", 3), TaskSpec("pos", "tagging", 5))
    model = MultiTaskModel(TINY, tasks)
    optimizer = optax.sgd(0.1, momentum=0.9)
    balancer = get("pcgrad", num_tasks=2)
    state = create_train_state(model, balancer, optimizer, make_batch(tasks, 8), 0)
    step = make_train_step(model, balancer, optimizer, parallelism="sharded")
    state = step.place_state(state)
    rows = 8 // num_processes
    for s in range(3):
      batch = make_batch(tasks, batch_size=8, seed=s)
      local = {{k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}}
      state, metrics = step(state, step.place_batch(local))
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x.addressable_data(0))), state.params)
    flat = np.concatenate([x.ravel() for x in jax.tree.leaves(params)]).tolist()
    print("RESULT" + json.dumps({{"devices": len(jax.devices()), "params": flat}}), flush=True)
    # Skip the atexit jax.distributed shutdown barrier: on this jax it can wait forever
    # once both processes are done (seen on CPU/gloo over loopback).
    import os; os._exit(0)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _results(num_processes):
  tests = os.path.dirname(os.path.dirname(__file__))
  env = fake_devices_env(1)
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(tests=tests), str(i),
                             str(num_processes), port], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
           for i in range(num_processes)]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-4000:]
    outs.append(json.loads(next(l for l in stdout.splitlines() if l.startswith("RESULT"))[6:]))
  return outs


def test_two_processes_match_one_process_with_four_devices():
  (single,) = _results(1)
  two = _results(2)
  assert single["devices"] == 4 and all(r["devices"] == 4 for r in two)
  np.testing.assert_allclose(two[0]["params"], single["params"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(two[0]["params"], two[1]["params"])

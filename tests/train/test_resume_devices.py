"""Exact resume under pmap on 2 fake devices, and resuming a 2-device checkpoint on 1 device."""

import json
import os
import subprocess
import sys
import textwrap

from device_env import fake_devices_env

SCRIPT = textwrap.dedent("""
    import faulthandler, json, os, sys
    faulthandler.dump_traceback_later(840, exit=True)  # a hang shows where it is
    sys.path.insert(0, {here!r})
    import jax, numpy as np
    from test_loop import tiny_config, _restore
    from tiny_suite import write_tiny_suite
    from jmtl.train import loop
    root = {root!r}
    path = write_tiny_suite(root)
    data_dir = os.path.join(root, "data_dir")
    devnull = open(os.devnull, "w")
    def run(workdir, steps, parallelism):
      c = tiny_config(path, data_dir, steps=steps, checkpoint_every=3, parallelism=parallelism)
      c.balancer.name = "pcgrad"
      loop.train_and_evaluate(c, os.path.join(root, workdir), out=devnull)
      return c
    import shutil
    full = run("full", 6, "pmap")
    run("split", 3, "pmap")
    # The same step-3 checkpoint, written from 2 devices, resumes on 2 devices and on 1.
    shutil.copytree(os.path.join(root, "split"), os.path.join(root, "moved"))
    run("split", 6, "pmap")
    a, b = _restore(os.path.join(root, "full"), full)[1], _restore(os.path.join(root, "split"), full)[1]
    same = all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    moved = run("moved", 6, "none")
    print("RESULT" + json.dumps({{"devices": len(jax.devices()), "bit_identical": same,
                                  "moved_step": _restore(os.path.join(root, "moved"), moved)[0]}}))
""")


def test_pmap_resume_bit_identical_and_device_count_change(tmp_path):
  env = fake_devices_env(2)
  code = SCRIPT.format(here=os.path.dirname(__file__), root=str(tmp_path))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=900, cwd=os.path.dirname(__file__))
  assert out.returncode == 0, out.stderr[-4000:]
  result = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))[6:])
  assert result["devices"] == 2
  assert result["bit_identical"]
  assert result["moved_step"] == 6

"""The README's library example runs as written (the block is read from README.md)."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def library_block() -> str:
  text = open(README).read()
  section = text[text.index("## As a library"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_library_example_runs_and_trains(capsys):
  namespace = {}
  exec(compile(library_block(), "README.md (As a library)", "exec"), namespace)
  state, metrics, model = namespace["state"], namespace["metrics"], namespace["model"]
  assert int(state.step) == 3
  losses = np.asarray(metrics["losses"])
  assert losses.shape == (len(model.names),) and np.isfinite(losses).all()
  # UPGrad's direction agrees with every task's gradient (non-negative inner products).
  grads = np.asarray(namespace["task_grads"]["w"], np.float64)
  direction = np.asarray(namespace["direction"]["w"], np.float64)
  assert (grads @ direction >= -1e-6).all()
  assert "topic" in capsys.readouterr().out

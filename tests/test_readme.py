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


def user_model_block() -> str:
  text = open(README).read()
  section = text[text.index("**Your own Flax model**"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_user_model_example_trains_through_make_train_step():
  namespace = {}
  exec(compile(user_model_block(), "README.md (Your own Flax model)", "exec"), namespace)
  state, metrics = namespace["state"], namespace["metrics"]
  assert int(state.step) == 20
  losses = np.asarray(metrics["losses"])
  assert losses.shape == (2,) and np.isfinite(losses).all()
  weights = np.asarray(metrics["weights"])
  assert np.all(weights >= -1e-6) and abs(weights.sum() - 1) < 1e-5  # MGDA: on the simplex
  # Both tasks learned: the losses of the first step are higher than those of the last.
  jmtl = namespace["jmtl"]
  fresh = jmtl.create_train_state(namespace["model"], namespace["balancer"],
                                  namespace["optimizer"], namespace["batch"], seed=0)
  _, first = namespace["step"](fresh, namespace["batch"])
  assert np.all(losses < np.asarray(first["losses"]))

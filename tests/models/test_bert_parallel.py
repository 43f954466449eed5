"""The BERT encoder, loaded from a Hugging Face folder, on 2 fake CPU devices: pmap and
jit + NamedSharding steps reach the parameters of a one-device run for the loss and
compact-Gram paths, and ``train_and_evaluate`` with ``model.encoder=bert`` and
``model.pretrained=<folder>`` resumed from its step-3 checkpoint ends bit-identical to an
uninterrupted run (the resume does not reload the pretrained weights over the trained ones).

One subprocess does it all (the device count is fixed when JAX starts; one start is cheaper).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from device_env import fake_devices_env

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import faulthandler, json, os, sys
    faulthandler.dump_traceback_later(1700, exit=True)  # a hang shows where it is
    sys.path[:0] = [{tests!r}, os.path.join({tests!r}, "train")]
    import jax, numpy as np, optax
    from bert_reference import tiny_tensors, write_checkpoint
    from tiny_model import make_batch
    from jmtl import pretrained
    from jmtl.balancers import get
    from jmtl.models import MultiTaskModel
    from jmtl.tasks import TaskSpec
    from jmtl.train.parallel import make_train_step
    from jmtl.train.state import create_train_state

    root = {root!r}
    tensors = tiny_tensors(seed=11)
    folder = str(write_checkpoint(os.path.join(root, "bert"), tensors, prefix="bert."))
    loaded = pretrained.load(folder, pooling="pooler", dropout=0.0, attention_dropout=0.0,
                             data_dir=os.path.join(root, "cache"), log=lambda m: None)
    tasks = (TaskSpec("tags", "tagging", 5), TaskSpec("topic", "classification", 3),
             TaskSpec("score", "regression"))
    result = {{"devices": len(jax.devices()), "parallel": {{}}}}
    # (method, hparams, grad_mode, layout): the loss path on multi-input batches and the
    # compact Gram path (token-table rows gathered across devices) on same-input ones. BERT's
    # rep-grad path is checked on one device in test_bert_grad_paths.py, and its 2-device
    # wrapper (model-independent) by test_parallel.py and test_architecture_runs.py.
    for method, hparams, grad_mode, layout in (
        ("constant", {{"weights": (0.3, 1.0, 0.6)}}, "exact", "multi_input"),
        ("pcgrad", {{}}, "exact", "same_input")):
      model = MultiTaskModel(loaded.config, tasks, layout=layout, head_hidden=8)
      def batch_at(step):
        if layout == "multi_input":
          return {{s.name: make_batch((s,), batch_size=8, seed=100 * step + i)
                  for i, s in enumerate(tasks)}}
        return make_batch(tasks, batch_size=8, seed=step)
      optimizer = optax.sgd(0.1, momentum=0.9)  # see tests/train/test_parallel.py: not Adam
      balancer = get(method, num_tasks=len(tasks), **hparams)
      final = {{}}
      for parallelism in ("none", "pmap", "sharded"):
        state = jax.jit(lambda: create_train_state(model, balancer, optimizer, batch_at(0), 0))()
        params = dict(state.params)
        params["encoder"] = pretrained.with_pretrained(state.params["encoder"], loaded.params)
        state = state.replace(params=params)
        step = make_train_step(model, balancer, optimizer, grad_mode=grad_mode,
                               parallelism=parallelism, num_devices=2)
        state = step.place_state(state)
        for s in range(3):
          state, metrics = step(state, step.place_batch(batch_at(s)))
        state = step.gather_state(state)
        final[parallelism] = np.concatenate(
            [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state.params)]).tolist()
      result["parallel"][f"{{method}}/{{grad_mode}}/{{layout}}"] = final

    # Resume on one device: 6 steps straight, and 3 + 3 from the step-3 checkpoint.
    from test_loop import tiny_config, _restore
    from tiny_suite import write_tiny_suite
    from jmtl.train import loop
    suite = write_tiny_suite(os.path.join(root, "suite"))
    devnull = open(os.devnull, "w")
    def run(workdir, steps):
      c = tiny_config(suite, os.path.join(root, "data_dir"), steps=steps, checkpoint_every=3)
      c.model.update(dict(encoder="bert", pretrained=folder, pooling="pooler"))
      c.balancer.name = "pcgrad"
      loop.train_and_evaluate(c, os.path.join(root, workdir), out=devnull)
      return c
    full = run("full", 6)
    run("split", 3)
    run("split", 6)
    (step_a, a, _), (step_b, b, _) = (_restore(os.path.join(root, w), full) for w in ("full", "split"))
    table = np.asarray(a.params["encoder"]["token_embedding"]["embedding"])
    result["resume"] = {{
        "steps": [int(step_a), int(step_b)],
        "bit_identical": all(np.array_equal(np.asarray(x), np.asarray(y))
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))),
        # Trained from the checkpoint's weights, not from a fresh init (tiny_tensors: N(0, 0.3)).
        "table_moved": float(np.max(np.abs(table - tensors["embeddings.word_embeddings.weight"])))}}
    print("RESULT" + json.dumps(result))
""")


def test_bert_pmap_sharded_match_one_device_and_resume_is_exact(tmp_path):
  env = fake_devices_env(2)
  code = SCRIPT.format(tests=TESTS, root=str(tmp_path))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=1800, cwd=TESTS)
  assert out.returncode == 0, out.stderr[-4000:]
  result = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))[6:])
  assert result["devices"] == 2
  assert len(result["parallel"]) == 2
  for case, final in result["parallel"].items():
    reference = np.asarray(final["none"])
    for parallelism in ("pmap", "sharded"):
      np.testing.assert_allclose(np.asarray(final[parallelism]), reference, rtol=1e-5, atol=1e-5,
                                 err_msg=f"BERT {case}: {parallelism} on 2 devices drifted")
  resume = result["resume"]
  assert resume["steps"] == [6, 6]
  assert resume["bit_identical"], "the resumed BERT run differs from the uninterrupted one"
  assert 0 < resume["table_moved"] < 0.05, resume

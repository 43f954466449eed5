"""The jmtl command end to end, on a tiny generated suite, in subprocesses."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
from tiny_suite import write_tiny_suite  # noqa: E402

TINY_OVERRIDES = [
    "--config.data.max_len=16", "--config.data.buckets=(16,)", "--config.data.vocab_size=200",
    "--config.data.batch_size=4", "--config.data.eval_batch_size=8", "--config.model.width=16",
    "--config.model.depth=1", "--config.model.num_heads=2", "--config.model.mlp_width=32",
    "--config.model.pooled_width=16", "--config.model.head_hidden=8",
    "--config.optimizer.warmup_steps=2", "--config.train.log_every=2",
    "--config.train.eval_every=0",
    "--config.train.log_cosines=False",  # diagnostics compile a second program; see test_loop
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  return write_tiny_suite(str(root)), str(root / "data_dir")


def jmtl(*args, check=None, **kwargs):
  out = subprocess.run([sys.executable, "-m", "jmtl.cli", *args], capture_output=True,
                       text=True, timeout=600, **kwargs)
  if check is not None:
    assert out.returncode == check, out.stdout[-3000:] + out.stderr[-3000:]
  return out


def train_args(tiny, workdir, *extra):
  suite, data_dir = tiny
  return ["train", "--config", "configs/default.py", "--workdir", workdir,
          f"--config.data.suite={suite}", f"--config.data.data_dir={data_dir}", *TINY_OVERRIDES,
          *extra]


def test_train_then_eval(tiny, tmp_path):
  workdir = str(tmp_path / "run")
  out = jmtl(*train_args(tiny, workdir, "--config.train.steps=4",
                         "--config.train.checkpoint_every=2", "--config.balancer.name=pcgrad"),
             check=0)
  assert "validation at step 4" in out.stdout and "span_f1" in out.stdout
  out = jmtl("eval", "--config", "configs/default.py", "--workdir", workdir,
             *train_args(tiny, workdir)[5:], "--config.balancer.name=pcgrad", "--checkpoint", "2",
             check=0)
  assert "validation at step 2" in out.stdout
  # The run describes itself: no --config, the suite named relatively from its folder.
  suite, _ = tiny
  out = jmtl("eval", "--workdir", workdir, "--split", "test",
             "--config.data.suite=tiny_suite.json", cwd=os.path.dirname(suite),
             env={**os.environ, "PYTHONPATH": os.getcwd()}, check=0)
  assert "test at step 4" in out.stdout
  out = jmtl("train", "--workdir", workdir, "--config.train.steps=6", check=0)
  assert "resumed from step 4" in out.stdout and "validation at step 6" in out.stdout
  out = jmtl("train", "--workdir", workdir, "--config.model.width=32", check=2)
  assert "identity keys differ:\n  model.width: the run has 16, this config has 32" in out.stderr
  assert "Traceback" not in out.stderr


def test_train_with_a_batch_size_per_task(tiny, tmp_path):
  # The mapping must survive the copies train_and_evaluate makes of the config (a deepcopy
  # turns a dict into a ConfigDict), and name only the run's tasks: the suite's third task
  # is not drawn (both failed the MiniLM sweep's baselines once).
  workdir = str(tmp_path / "run")
  out = jmtl(*train_args(tiny, workdir, "--config.train.steps=2",
                         "--config.data.tasks=('ner','topic')",
                         "--config.data.batch_size={'ner': 2, 'topic': 4}"), check=0)
  assert "validation at step 2" in out.stdout and "lm" not in out.stdout.split("validation")[-1]
  with open(os.path.join(workdir, "run.json")) as f:
    assert json.load(f)["config"]["data"]["batch_size"] == {"ner": 2, "topic": 4}
  # Its single-task baselines: each task alone, at its own batch size.
  baselines = str(tmp_path / "baselines")
  jmtl(*train_args(tiny, baselines, "--config.train.steps=2", "--config.single_task=True",
                   "--config.data.tasks=('ner','topic')",
                   "--config.data.batch_size={'ner': 2, 'topic': 4}"), check=0)
  for task, size in (("ner", 2), ("topic", 4)):
    with open(os.path.join(baselines, task, "run.json")) as f:
      assert json.load(f)["config"]["data"]["batch_size"] == {task: size}


@pytest.mark.parametrize("extra,message", [
    (["--config.balancer.name=pcgrads"], "unknown balancer 'pcgrads'.*did you mean 'pcgrad'.*Valid names:.*mgda"),
    (["--config.balancer.name=gradnorm", "--config.balancer.alpah=1"], "gradnorm.*does not take.*alpah.*alpha"),
    (["--config.train.stepz=3"], "unknown config key 'train.stepz'"),
    (["--config.data.suite=/nonexistent/suite.json"], "suite file /nonexistent/suite.json: does not exist"),
    (["--config.data.tasks=(\"nope\",)"], "data.tasks names \\['nope'\\] not in suite"),
])
def test_bad_input_is_one_clear_error(tiny, tmp_path, extra, message):
  import re
  fresh_data = str(tmp_path / "data")
  out = jmtl(*train_args(tiny, str(tmp_path / "run"), *extra,
                         f"--config.data.data_dir={fresh_data}"), check=2)
  assert re.search(message, out.stderr), out.stderr
  assert "Traceback" not in out.stderr
  # Found before any build or workdir: nothing is left behind.
  assert not os.path.exists(tmp_path / "run") and not os.path.exists(fresh_data)


def test_train_without_config_on_a_new_workdir(tmp_path):
  out = jmtl("train", "--workdir", str(tmp_path / "new"), check=2)
  assert "pass --config to start a run" in out.stderr


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny, tmp_path):
  import resource
  workdir = str(tmp_path / "full")
  jmtl(*train_args(tiny, workdir, "--config.train.steps=2", "--config.train.checkpoint_every=2"),
       check=0)
  # Files may grow to 32 KB: the run's small files fit, a checkpoint's array data does not
  # (EFBIG, as a full disk's ENOSPC, comes from the writes of Orbax's background thread).
  limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))
  out = jmtl("train", "--workdir", workdir, "--config.train.steps=4", preexec_fn=limit, check=2)
  # Orbax's writer threads print their own tracebacks first; the run ends on one message.
  error = out.stderr[out.stderr.rindex("jmtl: error:"):]
  assert error.startswith("jmtl: error: could not write a checkpoint in "), out.stderr[-2000:]
  assert "File too large (errno 27)" in error
  assert "the checkpoints already written are intact (steps [2])" in error
  assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == ["2"]
  out = jmtl("train", "--workdir", workdir, "--config.train.steps=4", check=0)
  assert "resumed from step 2" in out.stdout and "validation at step 4" in out.stdout


def test_workdir_that_is_a_file(tiny, tmp_path):
  target = tmp_path / "file"
  target.write_text("keep me")
  out = jmtl(*train_args(tiny, str(target)), check=2)
  assert "is a file" in out.stderr and target.read_text() == "keep me"


def test_nan_stop_policy_stops_before_saving_a_bad_step(tiny, tmp_path):
  workdir = str(tmp_path / "nan")
  # A huge learning rate without clipping blows the losses up to inf/NaN within a few steps.
  out = jmtl(*train_args(tiny, workdir, "--config.train.steps=200",
                         "--config.train.checkpoint_every=1", "--config.train.nan_policy=stop",
                         "--config.optimizer.learning_rate=1e30", "--config.optimizer.clip_norm=0",
                         "--config.optimizer.schedule=constant", "--config.optimizer.name=sgd"),
             check=2)
  assert "non-finite loss or gradient at step" in out.stderr
  bad_step = int(out.stderr.split("at step ")[1].split()[0])
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert saved and max(saved) < bad_step


def test_ctrl_c_then_resume(tiny, tmp_path):
  workdir = tmp_path / "interrupted"
  args = train_args(tiny, str(workdir), "--config.train.steps=100000",
                    "--config.train.checkpoint_every=5")
  # Started as a script's background job is: with SIGINT ignored (inherited). jmtl train
  # re-arms it; before, Ctrl-C and a sweep's stop never reached such a run.
  command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "jmtl.cli", *args])
  proc = subprocess.Popen(["sh", "-c", f"trap '' INT; exec {command}"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:
    ckpt = workdir / "checkpoints"
    if ckpt.is_dir() and any(d.isdigit() for d in os.listdir(ckpt)):
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=600)  # a hang guard: loaded CI machines are slow
  assert proc.returncode == 130, stderr[-3000:]
  assert "interrupted at step" in stdout
  saved = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  out = jmtl(*train_args(tiny, str(workdir), f"--config.train.steps={saved + 2}",
                         "--config.train.checkpoint_every=5"), check=0)
  assert f"resumed from step {saved}" in out.stdout
  assert f"validation at step {saved + 2}" in out.stdout


def test_sigterm_and_an_inherited_ignored_sigint_become_keyboard_interrupts():
  """What ``jmtl train`` installs: SIGTERM (a scheduler's preemption) stops the run as Ctrl-C
  does, and SIGINT works even when the process inherited it ignored."""
  from jmtl.interrupts import interrupt_on_signals
  saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGINT):
      with pytest.raises(KeyboardInterrupt), interrupt_on_signals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler runs at the next bytecode; never sleeps this long
    # and the handlers from before come back (main() is also called in-process)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) == saved[signal.SIGTERM]
  finally:
    for signum, handler in saved.items():
      signal.signal(signum, handler)


def test_data_prepare_unknown_suite_is_an_error(tmp_path):
  out = jmtl("data", "prepare", "no_such_suite", "--data_dir", str(tmp_path), check=2)
  assert "no_such_suite" in out.stderr and "Traceback" not in out.stderr


def test_bench_unknown_name_lists_available(tmp_path):
  out = jmtl("bench", "no_such_bench", check=2)
  assert "no benchmark 'no_such_bench'" in out.stderr

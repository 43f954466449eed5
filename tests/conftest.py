"""Fixtures shared by the engine tests, and a compilation cache for every test process."""

import os

import pytest

# The CLI and multi-device tests start many processes that compile the same programs: a
# persistent cache (inherited through the environment) lets later ones load them instead.
# Every program is cached, however fast its compile: the balancer tests jit hundreds of small
# updates that other tests (and the other xdist worker) compile again; caching them cut
# test_step.py + test_cli.py from 355 to 307 s and test_all_methods.py from 206 to 182 s of
# CPU (one process each, cold cache, against the 0.5 s threshold used before).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The xdist workers and every process a test starts run as the `jmtl` command does, with
# glibc's huge pages for XLA's large temporaries (jmtl.hugepages); `python -m jmtl.cli`
# subprocesses then need no restart of their own. (This process itself started without it.)
from jmtl import hugepages  # noqa: E402

os.environ.update(hugepages.environment_with_hugepages(os.environ) or {})

from device_env import with_test_flags  # noqa: E402  (before jax reads XLA_FLAGS)

os.environ["XLA_FLAGS"] = with_test_flags(os.environ.get("XLA_FLAGS", ""))

from jmtl.models import MultiTaskModel  # noqa: E402
from tiny_model import TASKS, TINY  # noqa: E402


@pytest.fixture
def model():
  return MultiTaskModel(TINY, TASKS)

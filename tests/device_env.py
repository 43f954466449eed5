"""XLA flags for every test process, and the environment of test subprocesses that need N fake
CPU devices (``--xla_force_host_platform_device_count``), so no test drops the other flags.

Tests run small programs a few steps each, so XLA's compile time dominates the suite: LLVM
optimisation level 0 cut a cold run of tests/models/test_architectures.py from 301 s to 193 s
(user CPU 252 s -> 169 s) on this 2-core machine. It changes code generation only, never the
program's semantics (no fast-math); users' runs keep XLA's default level.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def with_test_flags(flags: str) -> str:
  """``flags`` plus the test flags (once)."""
  return flags if TEST_XLA_FLAGS in flags else f"{flags} {TEST_XLA_FLAGS}".strip()


def fake_devices_env(devices: int, drop=()) -> dict[str, str]:
  """This process's environment (minus ``drop``) on the CPU platform with ``devices`` devices."""
  env = {k: v for k, v in os.environ.items() if k not in drop}
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
                      if devices > 1 else TEST_XLA_FLAGS)
  return env

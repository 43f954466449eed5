"""The ``jmtl`` command's restart with ``glibc.malloc.hugetlb=1`` (``jmtl.hugepages``): when it
happens, what it keeps (PID, arguments, stdin, the user's other tunables), and that glibc then
backs large blocks with huge pages on this machine (the page faults the restart is for)."""

import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

from jmtl import cli, hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("setting, offered", [("always [madvise] never\n", True),
                                              ("[always] madvise never\n", True),
                                              ("always madvise [never]\n", False)])
def test_transparent_hugepages_offered_reads_the_kernel_setting(tmp_path, setting, offered):
  path = tmp_path / "enabled"
  path.write_text(setting)
  assert hugepages.transparent_hugepages_offered(str(path)) is offered
  assert hugepages.transparent_hugepages_offered(str(tmp_path / "missing")) is False


def test_environment_adds_the_tunable_only_when_it_can_help_and_nobody_chose():
  env = hugepages.environment_with_hugepages({"PATH": "/bin"}, platform="linux",
                                             thp_offered=True)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  other = hugepages.environment_with_hugepages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, platform="linux", thp_offered=True)
  assert other["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  for environ, platform, offered in (
      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux", True),  # the user's choice
      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "linux", True),  # restarted already
      ({"JMTL_HUGEPAGES": "0"}, "linux", True),
      ({}, "linux", False),
      ({}, "darwin", True)):
    assert hugepages.environment_with_hugepages(environ, platform=platform,
                                                thp_offered=offered) is None, environ


def test_the_installed_command_restarts_before_it_parses(monkeypatch):
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    assert tomllib.load(f)["project"]["scripts"]["jmtl"] == "jmtl.cli:run"

  class Restarted(Exception):
    pass

  def restart(env):
    raise Restarted(env)

  monkeypatch.setattr(hugepages, "restart", restart)
  monkeypatch.setattr(hugepages, "transparent_hugepages_offered", lambda: True)
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("JMTL_HUGEPAGES", raising=False)
  monkeypatch.setattr(sys, "argv", ["jmtl", "--no-such-option"])  # parsing would exit 2
  with pytest.raises(Restarted) as restarted:
    cli.run()
  assert restarted.value.args[0]["GLIBC_TUNABLES"] == hugepages.TUNABLE


CHILD = textwrap.dedent("""
    import os, sys
    print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
    from jmtl import hugepages
    hugepages.restart_with_hugepages()
    print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.stdin.read(), flush=True)
""")


def test_a_restart_keeps_the_pid_arguments_stdin_and_other_tunables():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JMTL_HUGEPAGES")}
  env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"
  out = subprocess.run([sys.executable, "-c", CHILD, "one", "two"], input="text on stdin",
                       capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 0, out.stderr
  lines = [line.split(" ", 3) for line in out.stdout.splitlines()]
  starts = [line for line in lines if line[0] == "start"]
  (after,) = [line for line in lines if line[0] == "after"]
  if hugepages.transparent_hugepages_offered():
    assert len(starts) == 2 and starts[0][1] == starts[1][1] == after[1]  # one restart, same PID
    assert after[2] == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
  else:  # nothing to gain: no restart, environment untouched
    assert len(starts) == 1 and after[2] == "glibc.malloc.arena_max=4"
  assert all(line[3].startswith("['one', 'two']") for line in starts)
  assert after[3] == "text on stdin"


FAULTS = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # 64 MiB, above glibc's mmap threshold: mapped and unmapped each time
      block = libc.malloc(64 << 20)  # (not NumPy: it madvises its large arrays itself)
      ctypes.memset(block, 1, 64 << 20)
      libc.free(block)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")


@pytest.mark.skipif(not hugepages.transparent_hugepages_offered(),
                    reason="the kernel offers no transparent huge pages (the restart is skipped)")
def test_with_the_tunable_glibc_backs_large_blocks_with_huge_pages():
  """What the restart is for, on this machine: 16,384 page faults per 64 MiB block without it
  (one per 4 KiB page), a few dozen with it (one per 2 MiB page)."""
  base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  faults = {}
  for name, env in (("default", base), ("hugepages", {**base, "GLIBC_TUNABLES": hugepages.TUNABLE})):
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    faults[name] = float(out.stdout)
  assert faults["default"] > 15_000, faults
  assert faults["hugepages"] < faults["default"] / 20, faults

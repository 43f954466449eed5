"""Huge pages for XLA's per-step buffers: the ``jmtl`` command restarts itself once with
glibc's ``glibc.malloc.hugetlb=1`` tunable.

Why: XLA:CPU allocates a step's temporaries afresh on every call (95 MiB for the
peer-benchmark model's equal-weight step). Blocks that large are above glibc's mmap threshold
(32 MiB at most), so each step maps them, touches every 4 KiB page once (a minor page fault
each: 24,118 a step) and unmaps them again. With the tunable, glibc asks the kernel for
transparent huge pages on those mappings (``madvise(MADV_HUGEPAGE)``) and the faults fall to
~100 a step, 2 MiB at a time: that step takes 0.66x the time (160 -> 105 ms, AMD EPYC, one
thread) and ``jmtl train configs/default.py`` 0.69x. Unlike turning mmap off (``mallopt``,
tried and dropped: 1.5-3x peak memory), nothing is kept between steps, so peak memory stays
within 3% (``benchmarks/malloc_hugepages.py``, ``benchmarks/results/malloc_hugepages.md``).

glibc reads its tunables only when a process starts, hence the restart; it happens before
JAX or any data is touched, keeps the PID, arguments and open files (stdin included), and is
skipped when the kernel offers no transparent huge pages, when ``GLIBC_TUNABLES`` already
says anything about ``glibc.malloc.hugetlb`` (the user's choice wins, and a restarted process
never restarts again) or when ``JMTL_HUGEPAGES=0``. glibc before 2.35 and other C libraries
ignore the tunable. Code that imports jmtl as a library runs in the user's own process: start
it with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to get the same effect.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JMTL_HUGEPAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_hugepages_offered(setting_path: str = THP_SETTING) -> bool:
  """True when the kernel gives transparent huge pages to madvised memory: its setting reads
  ``[always]`` or ``[madvise]`` (not ``[never]``, and not a kernel without THP)."""
  try:
    with open(setting_path, encoding="ascii") as f:
      setting = f.read()
  except OSError:
    return False
  return "[always]" in setting or "[madvise]" in setting


def environment_with_hugepages(environ: Mapping[str, str], *, platform: str = sys.platform,
                               thp_offered: bool | None = None) -> dict[str, str] | None:
  """The environment to restart with, or None when the process should go on as it is."""
  if platform != "linux" or environ.get(OPT_OUT, "1") == "0":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in current:
    return None
  if not (transparent_hugepages_offered() if thp_offered is None else thp_offered):
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (current, TUNABLE)))}


def restart_with_hugepages() -> None:
  """Replaces this process by the same command with the tunable set (see the module
  docstring); returns only when no restart is wanted."""
  env = environment_with_hugepages(os.environ)
  if env is not None:
    restart(env)


def restart(env: Mapping[str, str]) -> None:
  """Replaces this process by the same command line (interpreter options included) in
  ``env``: same PID and open files; never returns."""
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], dict(env))

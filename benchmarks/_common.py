"""Timing, table and JSON helpers shared by the benchmarks.

The machine these run on is small and shared, so every helper here is built for ratios
measured in one run: variants are timed round robin (round k of every variant before round
k+1 of any), each step is timed on its own, and summaries are medians.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RESULTS = pathlib.Path(__file__).parent / "results"


def pin_threads(num_threads: int | None) -> list[int]:
  """Restricts this process to the first ``num_threads`` CPUs; returns the CPUs it may use.

  Affinity, unlike each framework's own knob, binds every thread pool of the process (XLA's
  Eigen pool, PyTorch's intra-op pool) to the same cores, so both frameworks compete for
  the same hardware. ``None`` keeps the current set.
  """
  available = sorted(os.sched_getaffinity(0))
  if num_threads is not None:
    if not 1 <= num_threads <= len(available):
      raise ValueError(f"--threads must be in [1, {len(available)}], got {num_threads}")
    os.sched_setaffinity(0, available[:num_threads])
  return sorted(os.sched_getaffinity(0))


def xla_thread_flags(num_threads: int) -> str:
  """``XLA_FLAGS`` fragment for ``num_threads`` intra-op threads (set before importing jax).

  XLA's CPU client sizes its pool by the CPUs the process may use, so the count itself comes
  from ``pin_threads``; one thread also turns off Eigen's own multi-threading. (A bare
  ``intra_op_parallelism_threads=N`` is no XLA flag: the flag parser stops at it and drops
  every flag after it.)
  """
  return f"--xla_cpu_multi_thread_eigen={'false' if num_threads == 1 else 'true'}"


MALLOC_CHOICES = ("hugepages", "default")


def add_malloc_arguments(parser) -> None:
  """``--malloc`` (this process: jmtl) and ``--peer-malloc`` (the PyTorch worker). jmtl's
  default is how the ``jmtl`` command runs (``jmtl.hugepages``), PyTorch's is glibc's own, as
  its users run it; ``--peer-malloc hugepages`` gives both the same allocator settings."""
  parser.add_argument("--malloc", choices=MALLOC_CHOICES, default="hugepages",
                      help="jmtl's process: glibc.malloc.hugetlb=1 as the jmtl command sets "
                      "it, or glibc's default")
  parser.add_argument("--peer-malloc", choices=MALLOC_CHOICES, default="default",
                      help="the PyTorch worker's malloc (default: glibc's own)")


def malloc_environment(choice: str) -> dict[str, str]:
  """This process's environment for a process started with ``choice``: any hugetlb tunable
  replaced by the one ``jmtl.hugepages`` sets ("hugepages") or removed, with jmtl commands
  told not to add it back ("default"); other tunables are kept."""
  from jmtl import hugepages
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
  tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
              if t and not t.startswith("glibc.malloc.hugetlb")]
  if choice == "hugepages":
    tunables.append(hugepages.TUNABLE)
  else:
    env[hugepages.OPT_OUT] = "0"
  if tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables)
  return env


def apply_malloc(choice: str) -> dict[str, str | None]:
  """Restarts this process when its malloc settings differ from ``choice`` (call it before
  JAX starts); returns what the process runs with, for the results' metadata."""
  from jmtl import hugepages
  env = malloc_environment(choice)
  if (env.get("GLIBC_TUNABLES") or None) != (os.environ.get("GLIBC_TUNABLES") or None):
    hugepages.restart(env)
  os.environ.update(env)  # the opt-out, for jmtl commands started from here
  return {"malloc": choice, "glibc_tunables": os.environ.get("GLIBC_TUNABLES") or None,
          "transparent_hugepages": hugepages.transparent_hugepages_offered()}


def malloc_sentence(malloc: dict | None) -> str:
  """One line for a report: each side's malloc settings (older results have none)."""
  if not malloc:
    return "malloc: glibc's default on both sides (before jmtl.hugepages)."
  jmtl = malloc["jmtl"]
  return (f"malloc: jmtl {jmtl['malloc']} (GLIBC_TUNABLES={jmtl['glibc_tunables']}, "
          f"transparent huge pages offered: {jmtl['transparent_hugepages']}), PyTorch "
          f"{malloc['torch']}.")


def interleaved_times(steps: Mapping[str, Callable[[], Any]], *, rounds: int,
                      steps_per_round: int = 1, warmup: int = 1,
                      on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
  """Wall-clock seconds of every call of every step, timed round robin.

  Each callable runs one step and returns only when its results are ready (the caller
  blocks, e.g. with ``jax.block_until_ready``). ``warmup`` untimed rounds come first; then
  ``rounds`` rounds of ``steps_per_round`` timed calls of each variant in turn, so a slow
  spell of the machine hits every variant alike.
  """
  for _ in range(warmup):
    for step in steps.values():
      step()
  times: dict[str, list[float]] = {name: [] for name in steps}
  for round_index in range(rounds):
    for name, step in steps.items():
      for _ in range(steps_per_round):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
    if on_round is not None:
      on_round(round_index)
  return times


def summarize(samples: Sequence[float]) -> dict[str, float]:
  """Median and quartiles (seconds) of a sample."""
  ordered = sorted(samples)
  if len(ordered) >= 2:
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
  else:
    q1 = q3 = ordered[0]
  return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "n": len(ordered)}


def median_of_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> float:
  """Median over rounds of ``numerator[k] / denominator[k]``, pairing samples taken together.

  A robust companion of the ratio of medians: a slow spell that hits both variants of the
  same round cancels out.
  """
  pairs = list(zip(numerator, denominator))
  return statistics.median(n / d for n, d in pairs)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub Markdown table; floats are printed as given (format them first)."""
  cells = [[str(c) for c in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
            for i, h in enumerate(headers)]
  line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
  separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(headers), separator, *(line(r) for r in cells)])


def _cpu_model() -> str | None:
  """The processor's name: kernel speed differs several-fold between CPU models."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def machine_info() -> dict[str, Any]:
  """What the numbers depend on: CPUs, load at the time, Python and platform."""
  return {
      "cpus_visible": os.cpu_count(),
      "cpus_allowed": len(os.sched_getaffinity(0)),
      "cpu_model": _cpu_model(),
      "load_average_1_5_15": list(os.getloadavg()),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }


def peak_rss_mib() -> float:
  """This process's peak resident set (VmHWM), in MiB.

  Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``execve`` from the parent, so
  a child of a large process would report the parent's peak.
  """
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024  # kB
  raise RuntimeError("no VmHWM in /proc/self/status")


def write_json(path: pathlib.Path | str, payload: Any) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
  return path


def format_ratio(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.2f}x"


def format_ms(seconds: float | None) -> str:
  return "n/a" if seconds is None else f"{1e3 * seconds:.1f}"

"""Suggesting the nearest valid name for a typo, worded the same way wherever jmtl refuses one
(balancers, architectures, suite keys)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, valid: Iterable[str]) -> str | None:
  """The valid name closest to ``name``, if one is close enough to be a typo of it."""
  close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
  return close[0] if close else None


def unknown(kind: str, name: str, valid: Iterable[str]) -> str:
  """``unknown KIND 'NAME'; did you mean 'X'? Valid names: a, b`` (the hint for a near miss)."""
  valid = [str(v) for v in valid]
  close = nearest(name, valid)
  hint = f"; did you mean {close!r}?" if close else "."
  return f"unknown {kind} {name!r}{hint} Valid names: {', '.join(valid)}"

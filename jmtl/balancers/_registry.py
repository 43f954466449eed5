"""The registry of balancing methods: ``get(name, num_tasks, **hparams)`` and what each needs.

Every factory registered here is wrapped by `with_presence`, so every method, whoever wrote
it, leaves absent tasks out of balancing the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable

from jmtl.names import unknown
from jmtl.balancers._base import Balancer
from jmtl.balancers._base import Needs
from jmtl.balancers._presence import with_presence

_REGISTRY: dict[str, Callable[..., Balancer]] = {}
_INFO: dict[str, "MethodInfo"] = {}


@dataclasses.dataclass(frozen=True)
class MethodInfo:
  """What a runner must know about a method before training starts.

  ``needs`` is the default hyperparameters' (GradVac's ``granularity="leaf"`` needs the
  Jacobian). ``param_shaped_state``: the state holds buffers shaped like the gradients the
  method receives, so it cannot balance a representation whose shape changes between
  batches (rep-grad over length buckets).
  """
  name: str
  needs: Needs
  paper: str
  param_shaped_state: bool


def register(name: str, paper: str, *, param_shaped_state: bool = False,
             handles_presence: bool = False):
  """Registers a factory ``f(num_tasks, **hparams) -> Balancer`` under ``name``.

  The factory is returned wrapped by `with_presence` (unless ``handles_presence``: the
  factory's balancer takes ``present`` itself, e.g. when an hparam is per task), so calling
  it directly gives the same balancer as ``get``.
  """
  def decorator(factory):
    if name in _REGISTRY:
      raise ValueError(f"balancer {name!r} registered twice")
    if handles_presence or getattr(factory, "_handles_presence", False):
      build = factory
    else:
      @functools.wraps(factory)
      def build(num_tasks, **hparams):
        return with_presence(lambda k: factory(k, **hparams), num_tasks)
    build._handles_presence = True
    _REGISTRY[name] = build
    _INFO[name] = (paper, param_shaped_state)
    return build
  return decorator


def names() -> tuple[str, ...]:
  """Every registered balancer name, sorted."""
  return tuple(sorted(_REGISTRY))


def papers() -> dict[str, str]:
  """``{name: paper}`` for every registered balancer."""
  return {name: _INFO[name][0] for name in names()}


def info(name: str) -> MethodInfo:
  """`MethodInfo` of the method registered as ``name`` (KeyError as `get`)."""
  paper, param_shaped_state = _INFO[_known(name)]
  return MethodInfo(name=name, needs=_REGISTRY[name](4).needs, paper=paper,
                    param_shaped_state=param_shaped_state)


def _known(name: str) -> str:
  if name not in _REGISTRY:
    raise KeyError(unknown("balancer", name, names()))
  return name


def get(name: str, num_tasks: int, **hparams) -> Balancer:
  """The balancer registered as ``name``, built with ``hparams``.

  Raises:
    KeyError: unknown name; the message lists the valid names.
    TypeError: an hparam the method does not take.
  """
  factory = _REGISTRY[_known(name)]
  try:
    inspect.signature(factory).bind(num_tasks, **hparams)
  except TypeError:
    valid = [p for p in inspect.signature(factory).parameters if p != "num_tasks"]
    bad = sorted(set(hparams) - set(valid))
    raise TypeError(
        f"balancer {name!r} does not take {bad or hparams}; its hyperparameters: {valid}") from None
  return factory(num_tasks, **hparams)

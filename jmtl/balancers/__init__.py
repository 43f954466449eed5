"""Gradient-balancing and loss-weighting methods as pure ``Balancer(init, update)`` pairs."""

import importlib as _importlib
import pkgutil as _pkgutil

from jmtl.balancers._base import Balancer
from jmtl.balancers._base import applied_weights
from jmtl.balancers._base import flatten_tasks
from jmtl.balancers._base import from_gram_weights
from jmtl.balancers._base import from_loss_weights
from jmtl.balancers._base import gram_matrix
from jmtl.balancers._base import unflatten_like_task
from jmtl.balancers._base import weighted_sum
from jmtl.balancers._optax import as_optax
from jmtl.balancers._presence import with_presence
from jmtl.balancers._registry import MethodInfo
from jmtl.balancers._registry import get
from jmtl.balancers._registry import info
from jmtl.balancers._registry import names
from jmtl.balancers._registry import papers
from jmtl.balancers._registry import register

# Every private method module registers its factories on import.
_INFRASTRUCTURE = {"_base", "_optax", "_presence", "_registry", "_solvers"}
for _module in _pkgutil.iter_modules(__path__):
  if _module.name.startswith("_") and _module.name not in _INFRASTRUCTURE:
    _importlib.import_module(f"{__name__}.{_module.name}")

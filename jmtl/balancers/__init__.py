"""Gradient-balancing and loss-weighting methods as pure ``Balancer(init, update)`` pairs."""

import importlib as _importlib
import pkgutil as _pkgutil

from jmtl.balancers._base import Balancer
from jmtl.balancers._base import flatten_tasks
from jmtl.balancers._base import from_gram_weights
from jmtl.balancers._base import from_loss_weights
from jmtl.balancers._base import get
from jmtl.balancers._base import gram_matrix
from jmtl.balancers._base import names
from jmtl.balancers._base import papers
from jmtl.balancers._base import register
from jmtl.balancers._base import unflatten_like_task
from jmtl.balancers._base import weighted_sum

# Every private method module registers its factories on import.
for _module in _pkgutil.iter_modules(__path__):
  if _module.name.startswith("_") and _module.name != "_base":
    _importlib.import_module(f"{__name__}.{_module.name}")

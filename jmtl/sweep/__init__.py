"""Sweeps: grids of ``jmtl train`` runs (balancers x seeds x suites x config keys), their
result tables with spread over seeds, and plots. Entry points are the ``jmtl sweep``,
``jmtl sweep report`` and ``jmtl plot`` commands (``jmtl.sweep.command``); modules import
lazily so ``jmtl --help`` stays fast."""

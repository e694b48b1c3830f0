"""Training and evaluation engines (Ignite), metrics and the run report.

Modules: ``trainer`` (the multi-task trainer and evaluator), ``metrics`` (per-task metric accumulators and their
Ignite adapter), ``inferers`` (how evaluation calls the network: test-time mirroring), ``report`` (``report.md``
and PNG plots from a run's history and test results). Import them directly, e.g.
``from ctmtl.engines.metrics import MultiTaskMetrics``.
"""

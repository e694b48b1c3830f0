"""The MONAI bundle ``chest_ct_multitask``: where it is, and the Python helpers its configs call.

- :mod:`ctmtl.bundle.paths`: :func:`bundle_path` (the shipped bundle), :func:`resolve_manifests` (the
  ``dataset_manifest`` value: paths or ids, checked before any data is read), :func:`prediction_manifests`
  (inference inputs), :func:`data_summary` (what a run trained on, for ``metrics.json``).
- :mod:`ctmtl.bundle.trained`: :func:`export_trained_bundle` (a run's self-contained bundle root),
  :func:`load_weights` (strict), :class:`SegmentationExport` (the segmentation path for ``ckpt_export``),
  :func:`plan_stages` / :func:`plan_epochs`, :func:`add_log_file`.
- :mod:`ctmtl.bundle.workflow`: :func:`run_workflow`, the same wiring as ``python -m monai.bundle run`` for Python
  callers, with ctmtl's one-line errors.
"""

from ctmtl.bundle.paths import (
    BUNDLE_NAME,
    bundle_path,
    config_file,
    data_summary,
    prediction_manifests,
    resolve_manifests,
)
from ctmtl.bundle.trained import (
    SegmentationExport,
    add_log_file,
    export_trained_bundle,
    load_weights,
    plan_epochs,
    plan_stages,
)
from ctmtl.bundle.workflow import run_workflow
from ctmtl.engines.handlers import BatchShardSampler
from ctmtl.engines.trainer import is_main_process

__all__ = [
    "BUNDLE_NAME",
    "BatchShardSampler",
    "SegmentationExport",
    "add_log_file",
    "bundle_path",
    "config_file",
    "data_summary",
    "export_trained_bundle",
    "is_main_process",
    "load_weights",
    "plan_epochs",
    "plan_stages",
    "prediction_manifests",
    "resolve_manifests",
    "run_workflow",
]

"""Exporting trained models: MONAI Label bundles, one per head (:mod:`ctmtl.export.label`), and the transforms
their configs name (:mod:`ctmtl.export.components`)."""

from ctmtl.export.components import (
    BoxesToROId,
    InvertBoxesd,
    LabelDetector,
    LabelMapd,
    RunChaind,
)
from ctmtl.export.label import (
    LABEL_HEADS,
    LabelHead,
    export_label,
    head_network_def,
    head_state_dict,
    label_bundle_configs,
    verify_label_bundle,
)

__all__ = [
    "LABEL_HEADS",
    "BoxesToROId",
    "InvertBoxesd",
    "LabelDetector",
    "LabelHead",
    "LabelMapd",
    "RunChaind",
    "export_label",
    "head_network_def",
    "head_state_dict",
    "label_bundle_configs",
    "verify_label_bundle",
]

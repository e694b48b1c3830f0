"""Losses: per-task losses with missing-label masks, task weighting strategies and the multi-task loss."""

from ctmtl.losses.multitask import MultiTaskLoss
from ctmtl.losses.tasks import (
    SEG_LOSSES,
    TASK_LOSSES,
    ClassificationLoss,
    DetectionLoss,
    ReconstructionLoss,
    SegmentationLoss,
    TaskLoss,
    labelled,
)
from ctmtl.losses.weighting import WEIGHTINGS, FixedWeighting, TaskWeighting, UncertaintyWeighting, build_weighting

__all__ = [
    "SEG_LOSSES",
    "TASK_LOSSES",
    "WEIGHTINGS",
    "ClassificationLoss",
    "DetectionLoss",
    "FixedWeighting",
    "MultiTaskLoss",
    "ReconstructionLoss",
    "SegmentationLoss",
    "TaskLoss",
    "TaskWeighting",
    "UncertaintyWeighting",
    "build_weighting",
    "labelled",
]

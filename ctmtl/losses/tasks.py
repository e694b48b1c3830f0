"""Per-task losses that count only the samples carrying the task's label.

Each loss takes the network's output for its task and the collated batch (docs/architecture.md, "Batch") and
keeps the samples ``i`` with ``batch["has"][task][i]`` True (Ferreira et al. 2024): the others add no loss and no
gradient. When no sample of the batch carries the label, the loss is exactly 0, still attached to the output's
graph so that ``backward()`` stays valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, GeneralizedDiceLoss
from torch import Tensor, nn

from ctmtl.constants import SHORT_TASKS
from ctmtl.errors import ConfigError

__all__ = [
    "SEG_LOSSES",
    "TASK_LOSSES",
    "ClassificationLoss",
    "DetectionLoss",
    "ReconstructionLoss",
    "SegmentationLoss",
    "TaskLoss",
    "labelled",
]

CLASS, SEG, RECON, DET = SHORT_TASKS


def labelled(batch: Mapping[str, Any], task: str, device: torch.device | None = None) -> Tensor:
    """``batch["has"][task]`` as a bool tensor ``B`` (on ``device``): which samples carry the task's label."""
    has = batch.get("has", {})
    if task not in has:
        raise ValueError(f"batch['has'] has no entry for task {task!r} (has {sorted(has)}); see docs/architecture.md.")
    return torch.as_tensor(has[task], dtype=torch.bool, device=device)


class TaskLoss(nn.Module):
    """A loss over the labelled samples of one task; subclasses implement :meth:`compute` on those samples.

    The masking is ctmtl's own (MONAI's losses have no per-sample label mask): the labelled samples are selected
    before the MONAI / PyTorch loss runs, so the others contribute neither to the value nor to the gradient.
    """

    task: str = ""

    def forward(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """Scalar loss; exactly 0 (with a graph) when no sample carries the label."""
        has = labelled(batch, self.task, pred.device)
        if has.shape[0] != pred.shape[0]:
            raise ValueError(f"{self.task}: batch['has'] has {has.shape[0]} samples, the output {pred.shape[0]}.")
        if not bool(has.any()):
            return pred.sum() * 0.0
        return self.compute(pred[has], batch, has)

    def has_labels(self, batch: Mapping[str, Any]) -> bool:
        """Whether any sample of ``batch`` carries this task's label."""
        return bool(labelled(batch, self.task).any())

    def compute(self, pred: Tensor, batch: Mapping[str, Any], has: Tensor) -> Tensor:
        raise NotImplementedError


class ClassificationLoss(TaskLoss):
    """Cross-entropy of ``B x N`` logits against ``batch["class"]`` (int64 ``B``), or softmax focal loss
    (MONAI ``FocalLoss``) with ``focal=True``.

    Args:
        focal: use the focal loss instead of cross-entropy.
        gamma: focal loss exponent.
        weight: optional per-class weights (``N``).
        label_smoothing: cross-entropy label smoothing.
    """

    task = CLASS

    def __init__(
        self, focal: bool = False, gamma: float = 2.0, weight: Any = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.label_smoothing = label_smoothing
        self.focal = (
            FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, weight=weight) if focal else None
        )

    def compute(self, pred: Tensor, batch: Mapping[str, Any], has: Tensor) -> Tensor:
        target = torch.as_tensor(batch["class"], device=pred.device)[has].long()
        if self.focal is not None:  # MONAI's loss wants spatial dims: B x N x 1 logits, B x 1 x 1 labels
            return self.focal(pred[..., None], target[:, None, None])
        return F.cross_entropy(pred, target, weight=self.weight, label_smoothing=self.label_smoothing)


#: segmentation losses by name, all MONAI
SEG_LOSSES: dict[str, type[nn.Module]] = {
    "generalized_dice": GeneralizedDiceLoss,
    "dice": DiceLoss,
    "dice_focal": DiceFocalLoss,
    "dice_ce": DiceCELoss,
}


class SegmentationLoss(TaskLoss):
    """A MONAI segmentation loss of ``B x C x H x W`` logits against ``batch["mask"]`` (int64 ``B x 1 x H x W``).

    With ``seg_channels=1`` the target is ``mask > 0`` (merged lesions) and the loss applies a sigmoid; with
    ``K + 1`` channels the target is the label map, one-hot encoded, and the loss applies a softmax.

    Args:
        loss: a name of :data:`SEG_LOSSES` (the papers use ``generalized_dice``).
        seg_channels: channels of the network's ``seg`` output.
        kwargs: further arguments of the MONAI loss (e.g. ``batch=True``, ``lambda_dice``).
    """

    task = SEG

    def __init__(self, loss: str = "generalized_dice", seg_channels: int = 1, **kwargs: Any) -> None:
        super().__init__()
        if loss not in SEG_LOSSES:
            raise ConfigError(f"unknown segmentation loss {loss!r}; choose one of {', '.join(SEG_LOSSES)}")
        self.seg_channels = seg_channels
        activation = {"sigmoid": True} if seg_channels == 1 else {"softmax": True, "to_onehot_y": True}
        self.loss = SEG_LOSSES[loss](**activation, **kwargs)

    def compute(self, pred: Tensor, batch: Mapping[str, Any], has: Tensor) -> Tensor:
        if pred.shape[1] != self.seg_channels:
            raise ValueError(f"seg output has {pred.shape[1]} channels, the loss was built for {self.seg_channels}.")
        mask = torch.as_tensor(batch["mask"], device=pred.device)[has]
        target = (mask > 0).to(pred.dtype) if self.seg_channels == 1 else mask.long()
        return self.loss(pred, target)


class ReconstructionLoss(TaskLoss):
    """Mean squared error between the ``B x 1 x H x W`` reconstruction and ``batch["image"]``."""

    task = RECON

    def compute(self, pred: Tensor, batch: Mapping[str, Any], has: Tensor) -> Tensor:
        return F.mse_loss(pred, torch.as_tensor(batch["image"], device=pred.device)[has])


class DetectionLoss(TaskLoss):
    """Weighted sum of the detection head's training losses (the dict ``out["det"]``).

    The head drops samples without detection labels itself (their target is ``None``, see
    :func:`ctmtl.networks.detection_targets`) and returns exact zeros when none is left.

    Args:
        weights: optional weight per loss name (default 1 each).
    """

    task = DET

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(weights or {})

    def forward(self, pred: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:  # type: ignore[override]
        if not isinstance(pred, Mapping) or not pred:
            raise ValueError(
                "the detection loss needs the head's training output (a dict of losses); "
                f"got {type(pred).__name__} (is the network in eval mode?)."
            )
        return sum(self.weights.get(name, 1.0) * value for name, value in pred.items())


#: the default loss class of each task
TASK_LOSSES: dict[str, type[TaskLoss]] = {
    CLASS: ClassificationLoss,
    SEG: SegmentationLoss,
    RECON: ReconstructionLoss,
    DET: DetectionLoss,
}

"""Inferers for the multi-task network: how evaluation and prediction call it.

:class:`FlipInferer` is test-time augmentation by mirroring (nnU-Net's default at inference): the network also sees
the image flipped along the given spatial axes, each answer is mapped back onto the original image, and the answers
are merged per head. It is a MONAI ``Inferer``, so it slots in where the bundle configs name ``SimpleInferer``
(``inferer`` of ``evaluate.json``, ``inference.json`` and the validation of ``train.json``); with no axes it is
exactly one plain forward pass.

Merging, by the form of each head's output (:class:`ctmtl.networks.MultiTaskNet`):

- dense maps (``seg`` logits, ``recon``; ``B x C x H x W`` like the input): flipped back, then averaged;
- per-image vectors (``class`` logits, ``B x K``): averaged;
- detections (B lists of dicts ``boxes`` ``N x 4`` xyxy pixels, ``labels``, ``scores`` [, ``masks``
  ``N x 1 x H x W``]): boxes (and masks) flipped back, the views' detections pooled per image and reduced by
  torchvision's class-wise NMS, at most ``detections_per_img`` kept, highest score first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torchvision.ops import batched_nms

from ctmtl.errors import ConfigError

__all__ = ["FlipInferer"]


class FlipInferer(Inferer):
    """Test-time mirroring of a 2D network with multi-task outputs (see the module docstring for the merging).

    Args:
        spatial_axes: spatial axes to mirror, each its own extra view: ``0`` is H (up-down), ``1`` is W (left-right,
            the training augmentation's ``RandFlipd(spatial_axis=1)``). Empty: one plain forward pass.
        nms_thresh: IoU above which pooled detections of one label suppress each other (the detection heads' own
            box selection uses 0.5).
        detections_per_img: detections kept per image after merging.

    ``__call__(inputs, network, *args, **kwargs)``: ``inputs`` is ``B x C x H x W``; ``network(inputs, *args,
    **kwargs)`` returns a dict of head outputs, or one output (a tensor or a list of detection dicts).
    """

    def __init__(self, spatial_axes: Sequence[int] = (1,), nms_thresh: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__()
        axes = tuple(int(a) for a in spatial_axes)
        if any(a not in (0, 1) for a in axes) or len(set(axes)) != len(axes):
            raise ConfigError(f"test-time flip axes must be distinct spatial axes of a 2D image (0: H, 1: W), got {tuple(spatial_axes)}")
        if not 0.0 < float(nms_thresh) <= 1.0 or int(detections_per_img) < 1:
            raise ConfigError(f"FlipInferer: nms_thresh in (0, 1] and detections_per_img >= 1, got {nms_thresh}, {detections_per_img}")
        self.spatial_axes = axes
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        outputs = network(inputs, *args, **kwargs)
        if not self.spatial_axes:
            return outputs
        views = [outputs]
        for axis in self.spatial_axes:
            flipped = network(torch.flip(inputs, dims=(axis - 2,)), *args, **kwargs)
            views.append(_unflip(flipped, axis, inputs.shape[-2:]))
        return self._merge(views, inputs)

    def _merge(self, views: list[Any], inputs: torch.Tensor) -> Any:
        first = views[0]
        if isinstance(first, Mapping):
            return {key: self._merge([v[key] for v in views], inputs) for key in first}
        if isinstance(first, torch.Tensor):
            return torch.stack(views).mean(0)
        if isinstance(first, Sequence) and all(isinstance(d, Mapping) and "boxes" in d for d in first):
            return [self._merge_detections([v[i] for v in views]) for i in range(len(first))]
        raise TypeError(f"FlipInferer cannot merge a network output of type {type(first).__name__}")

    def _merge_detections(self, views: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pooled = {key: torch.cat([v[key] for v in views]) for key in views[0]}
        keep = batched_nms(pooled["boxes"].float(), pooled["scores"].float(), pooled["labels"], self.nms_thresh)
        keep = keep[: self.detections_per_img]  # batched_nms orders by decreasing score
        return {key: value[keep] for key, value in pooled.items()}


def _unflip(output: Any, axis: int, size: Sequence[int]) -> Any:
    """A network answer for the image flipped along spatial ``axis``, mapped back onto the original image of
    spatial ``size`` ``(H, W)``: dense maps flipped, boxes and instance masks mirrored, vectors as they are."""
    if isinstance(output, Mapping):
        if "boxes" in output:
            return _unflip_detections(output, axis, size)
        return {key: _unflip(value, axis, size) for key, value in output.items()}
    if isinstance(output, torch.Tensor):
        dense = output.ndim >= 3 and tuple(output.shape[-2:]) == tuple(size)
        return torch.flip(output, dims=(axis - 2,)) if dense else output
    if isinstance(output, Sequence):
        return [_unflip(item, axis, size) for item in output]
    raise TypeError(f"FlipInferer cannot map back a network output of type {type(output).__name__}")


def _unflip_detections(found: Mapping[str, torch.Tensor], axis: int, size: Sequence[int]) -> dict[str, torch.Tensor]:
    out = dict(found)
    boxes = found["boxes"].clone()
    lo, hi = (1, 3) if axis == 0 else (0, 2)  # xyxy: axis 0 (H) moves y, axis 1 (W) moves x
    boxes[:, lo], boxes[:, hi] = size[axis] - found["boxes"][:, hi], size[axis] - found["boxes"][:, lo]
    out["boxes"] = boxes
    if "masks" in found:
        out["masks"] = torch.flip(found["masks"], dims=(axis - 2,))
    return out

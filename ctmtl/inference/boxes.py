"""Detected boxes back onto the input: from the network's grid to pixels of the stored slice, and to world mm.

Boxes are ctmtl's (``docs/architecture.md``): ``xyxy`` pixels, x = column (W axis), y = row (H axis), on pixel
edges (a box around columns 3..7 is ``x1 = 3, x2 = 8``). :func:`invert_boxes` undoes the geometric steps a
chain recorded in a sample's ``meta["geometry"]`` (resize, pad/crop, orientation), last step first, as
:func:`ctmtl.transforms.geometry.invert_geometry` does for images. The box arithmetic is MONAI's
(``monai.apps.detection.transforms.box_ops``), which orders a box's coordinates by array axis; the boxes are
swapped into that order (:class:`ctmtl.transforms.SwapBoxAxes`) on the way in and back on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes, flip_boxes, resize_boxes, rot90_boxes
from monai.utils import convert_to_tensor

from ctmtl.errors import DataError
from ctmtl.transforms.geometry import SwapBoxAxes

__all__ = ["invert_boxes", "boxes_to_world", "RAS_TO_LPS"]

#: RAS (NIfTI, ctmtl's affines) -> LPS (DICOM patient coordinates): x and y change sign
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _boxes(boxes: Any) -> torch.Tensor:
    """``N x 4`` float32 tensor of boxes given as a tensor, an array or a list of 4-sequences."""
    if not isinstance(boxes, torch.Tensor):
        boxes = np.asarray(boxes, dtype=np.float32)
    return convert_to_tensor(boxes, dtype=torch.float32, track_meta=False).reshape(-1, 4)


def invert_boxes(boxes: Any, meta: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """Map ``N x 4`` boxes on a sample's output grid onto the slice as stored in its file.

    Args:
        boxes: ``N x 4`` xyxy pixels on the chain's output grid (e.g. a detector's boxes on a 256 x 256 input).
        meta: the sample's ``meta`` (``geometry``, ``original_shape``).

    Returns:
        ``(boxes, kept)``: float32 ``K x 4`` xyxy pixels of the stored ``H0 x W0`` slice (clipped to it), and the
        int64 indices ``K`` of the input boxes kept, to select their scores and labels (a box left with no area
        inside the slice after undoing a crop is dropped).

    Raises:
        DataError: a geometry step this function does not know.
    """
    b = SwapBoxAxes()(_boxes(boxes)).double()  # MONAI's (row, column) order
    kept = torch.arange(b.shape[0])
    for op in reversed(list(meta.get("geometry", []))):
        kind, size_in, size_out = op["op"], tuple(op["in"]), tuple(op["out"])
        if kind == "resize":
            b = resize_boxes(b, size_out, size_in)
        elif kind == "pad_crop":
            oy, ox = op["offset"]
            b = b - torch.tensor([oy, ox, oy, ox], dtype=b.dtype)  # MONAI has no plain box shift
            b[:, 0::2] = b[:, 0::2].clamp(0, size_in[0])
            b[:, 1::2] = b[:, 1::2].clamp(0, size_in[1])
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, kept = b[keep], kept[keep]
        elif kind == "orient":  # forward was fliplr(rot90(slice, k)): undo the flip, then rotate back
            if op.get("flip_lr"):
                b = flip_boxes(b, size_out, 1)
            b = rot90_boxes(b, size_out, int(op.get("k", 0)), axes=(1, 0))
        else:
            raise DataError(f"invert boxes of entry {meta.get('entry_id')!r}: unknown geometry step {kind!r}")
    shape = list(meta.get("original_shape", []))[:2]
    if shape:
        b[:, 0::2] = b[:, 0::2].clamp(0, shape[0])
        b[:, 1::2] = b[:, 1::2].clamp(0, shape[1])
    return SwapBoxAxes()(b.float()), kept


def boxes_to_world(boxes: Any, affine: Any, index: int | Sequence[int]) -> np.ndarray:
    """World bounding boxes of ``N x 4`` slice boxes of a volume (the slab of slice ``index``).

    Args:
        boxes: ``N x 4`` xyxy pixels of the stored slice (x = column = voxel axis 1, y = row = voxel axis 0),
            on pixel edges.
        affine: the volume's ``4 x 4`` voxel -> world affine (voxel centres at integer indices).
        index: the slice (voxel axis 2) of every box, one int or one per box.

    Returns:
        float64 ``N x 6`` ``[x_min, y_min, z_min, x_max, y_max, z_max]`` in the affine's world space (RAS mm for
        ctmtl's readers): the axis-aligned box around the box's corners, from the slab ``index +- 0.5``.
    """
    b = _boxes(boxes).double()
    k = torch.as_tensor(index, dtype=torch.float64).reshape(-1).expand(b.shape[0])
    # edges -> voxel coordinates: pixel edge e is voxel coordinate e - 0.5 (NIfTI voxel centres are integers)
    voxel = torch.stack([b[:, 1] - 0.5, b[:, 0] - 0.5, k - 0.5, b[:, 3] - 0.5, b[:, 2] - 0.5, k + 0.5], dim=1)
    return np.asarray(apply_affine_to_boxes(voxel, torch.as_tensor(np.asarray(affine, dtype=np.float64))), dtype=np.float64)

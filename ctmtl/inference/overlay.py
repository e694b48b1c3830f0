"""Overlay pictures of a prediction: a slice with the lesion mask's contour and the detected boxes.

The contour is MONAI's ``LabelToContour`` of the mask, blended onto the slice by ``monai.visualize.blend_images``;
the boxes and their scores are drawn with PIL (MONAI has no 2D box drawing). Small slices are enlarged by an
integer factor (nearest neighbour) so that a 32 px test image still shows its boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import LabelToContour
from monai.visualize import blend_images

__all__ = ["overlay_image", "MIN_OVERLAY_SIDE"]

#: slices smaller than this (pixels, shorter side) are enlarged by an integer factor for the picture
MIN_OVERLAY_SIDE = 256
_BOX_COLOUR = (255, 215, 0)


def overlay_image(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] = (),
    labels: Sequence[str] = (),
    path: str | Path | None = None,
) -> Any:
    """Draw one slice with its mask contour and boxes.

    Args:
        image: float ``(H, W)`` in [0, 1] (values outside are clipped), rows x columns as stored.
        mask: integer ``(H, W)`` lesion labels (0 background), or ``None``.
        boxes: ``xyxy`` pixels of ``image`` (x = column).
        labels: a caption per box (e.g. ``"lesion 0.87"``).
        path: where to save the PNG (optional).

    Returns:
        the RGB ``PIL.Image`` (``W x H`` in PIL's terms, i.e. ``(H, W, 3)`` as an array, times the enlargement).
    """
    from PIL import Image, ImageDraw

    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if mask is not None and np.any(mask):
        labels_map = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None]
        edge = torch.as_tensor(LabelToContour()(labels_map)) > 0
        # hsv colour of label v at (v - 1) / 3: 1 red, 2 green, 3 blue; opaque on the contour only
        colour = torch.where(edge, (labels_map - 1).clamp(min=0) / 3.0, torch.zeros_like(labels_map))
        rgb = blend_images(torch.as_tensor(img)[None], colour, alpha=edge.float(), cmap="hsv", rescale_arrays=False,
                           transparent_background=False)
        rgb = torch.as_tensor(rgb).permute(1, 2, 0).numpy()
    else:
        rgb = np.repeat(img[..., None], 3, axis=-1)
    picture = Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    scale = max(1, min(8, int(np.ceil(MIN_OVERLAY_SIDE / max(1, min(img.shape))))))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=_BOX_COLOUR, width=max(1, scale // 2))
        if i < len(labels):
            draw.text((x1 + 2, max(0.0, y1 - 11)), str(labels[i]), fill=_BOX_COLOUR)
    if path is not None:
        picture.save(str(path))
    return picture

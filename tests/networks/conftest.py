"""Synthetic slices for the network tests: bright ellipses on a noisy background, with masks, boxes and classes."""

from __future__ import annotations

import pytest
import torch

from ctmtl.constants import SHORT_TASKS


def synthetic_batch(n: int = 8, size: int = 64, seed: int = 0) -> dict:
    """A collated batch (docs/architecture.md) of ``n`` slices: 1-3 bright ellipses each on noise.

    ``class`` is the number of ellipses minus 1 (0..2), ``mask`` marks the ellipses (label 1), ``boxes`` are their
    tight xyxy pixel boxes (x = column), ``box_labels`` 1. Every sample carries every label.
    """
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images, masks, classes, boxes = [], [], [], []
    for i in range(n):
        count = i % 3 + 1
        image = 0.15 + 0.05 * torch.randn(size, size, generator=g)
        mask = torch.zeros(size, size, dtype=torch.int64)
        sample_boxes = []
        cells = torch.randperm(4, generator=g)[:count]  # one ellipse per quadrant: no overlaps
        for cell in cells.tolist():
            ry, rx = (torch.rand(2, generator=g) * 0.12 * size + 0.08 * size).tolist()
            cy = (cell // 2 + 0.5) * size / 2 + (torch.rand(1, generator=g).item() - 0.5) * 0.1 * size
            cx = (cell % 2 + 0.5) * size / 2 + (torch.rand(1, generator=g).item() - 0.5) * 0.1 * size
            inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
            mask[inside] = 1
            image[inside] = 0.75 + 0.05 * torch.randn(int(inside.sum()), generator=g)
            ys, xs = inside.nonzero(as_tuple=True)
            sample_boxes.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
        images.append(image.clamp(0, 1)[None])
        masks.append(mask[None])
        classes.append(count - 1)
        boxes.append(torch.tensor(sample_boxes, dtype=torch.float32))
    return {
        "image": torch.stack(images),
        "mask": torch.stack(masks),
        "class": torch.tensor(classes),
        "boxes": boxes,
        "box_labels": [torch.ones(len(b), dtype=torch.int64) for b in boxes],
        "has": {task: torch.ones(n, dtype=torch.bool) for task in SHORT_TASKS},
        "meta": [{"entry_id": f"synthetic-{i}"} for i in range(n)],
    }


@pytest.fixture
def batch() -> dict:
    return synthetic_batch()

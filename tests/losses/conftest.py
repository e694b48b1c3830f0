"""Batches for the loss tests."""

from __future__ import annotations

import pytest
import torch

from ctmtl.constants import SHORT_TASKS


def _make_batch(n=4, size=32, has=None, seed=0):
    """A collated batch (docs/architecture.md) of ``n`` slices, each with a square lesion (label 1 or 2)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size, dtype=torch.int64)
    for i in range(n):
        y, x = torch.randint(2, size // 2, (2,), generator=g).tolist()
        mask[i, 0, y : y + 8, x : x + 8] = 1 + i % 2
    image = torch.where(mask > 0, 0.8, 0.1) + 0.01 * torch.rand(n, 1, size, size, generator=g)
    flags = {task: torch.ones(n, dtype=torch.bool) for task in SHORT_TASKS}
    flags.update({task: torch.as_tensor(v, dtype=torch.bool) for task, v in (has or {}).items()})
    return {
        "image": image,
        "mask": mask,
        "class": torch.arange(n) % 3,
        "boxes": [torch.zeros(0, 4) for _ in range(n)],
        "box_labels": [torch.zeros(0, dtype=torch.int64) for _ in range(n)],
        "has": flags,
    }


@pytest.fixture
def make_batch():
    """The :func:`_make_batch` factory (tests build batches with different label flags)."""
    return _make_batch

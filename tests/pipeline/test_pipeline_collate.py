"""multitask_collate: exactly the batch contract of docs/architecture.md."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from ctmtl.data.pipeline import multitask_collate
from ctmtl.errors import DataError


def _sample(i, mask=False, cls=None, boxes=None):
    s = {"image": MetaTensor(torch.full((1, 8, 8), i / 10)), "meta": {"entry_id": f"e{i}", "slice": i}}
    if mask:
        s["mask"] = torch.ones(1, 8, 8, dtype=torch.int64)
    if cls is not None:
        s["class"] = torch.tensor(cls)
    if boxes is not None:
        s["boxes"] = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        s["box_labels"] = torch.ones(len(s["boxes"]), dtype=torch.int64)
    s["tasks"] = {"class": cls is not None, "seg": mask, "recon": True, "det": boxes is not None}
    return s


def test_batch_contract():
    samples = [_sample(0, mask=True), _sample(1, cls=2), _sample(2, boxes=[[1, 2, 3, 4], [0, 0, 5, 5]]), _sample(3, boxes=[])]
    b = multitask_collate(samples)
    assert set(b) == {"image", "mask", "class", "boxes", "box_labels", "has", "meta"}
    assert b["image"].shape == (4, 1, 8, 8) and b["image"].dtype == torch.float32
    assert type(b["image"]) is torch.Tensor  # plain tensors in batches
    assert b["mask"].shape == (4, 1, 8, 8) and b["mask"].dtype == torch.int64
    assert b["mask"][0].sum() == 64 and b["mask"][1:].sum() == 0  # zeros where no mask
    assert b["class"].tolist() == [0, 2, 0, 0] and b["class"].dtype == torch.int64
    assert [tuple(x.shape) for x in b["boxes"]] == [(0, 4), (0, 4), (2, 4), (0, 4)]
    assert all(x.dtype == torch.float32 for x in b["boxes"]) and all(x.dtype == torch.int64 for x in b["box_labels"])
    assert [len(x) for x in b["box_labels"]] == [0, 0, 2, 0]
    assert b["has"]["seg"].tolist() == [True, False, False, False]
    assert b["has"]["class"].tolist() == [False, True, False, False]
    assert b["has"]["det"].tolist() == [False, False, True, True]  # an empty box list is a (negative) label
    assert b["has"]["recon"].tolist() == [True] * 4 and b["has"]["seg"].dtype == torch.bool
    assert [m["entry_id"] for m in b["meta"]] == ["e0", "e1", "e2", "e3"]


def test_mixed_sizes_are_an_error_naming_the_samples():
    a, b = _sample(0), _sample(1)
    b["image"] = torch.zeros(1, 16, 16)
    with pytest.raises(DataError, match="'e0' slice 0.*'e1' slice 1"):
        multitask_collate([a, b])

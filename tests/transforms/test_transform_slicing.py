"""3D -> 2D: the selection modes, box-to-slice joining by UID, per-slice meta, and index errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmtl.errors import DataError
from ctmtl.transforms import SelectSlicesd


def _entry(depth=8, lesion=(2, 3), boxes=None, uids=None, slices=None):
    img = MetaTensor(torch.rand(1, 16, 12, depth), affine=torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0], dtype=torch.float64)))
    mask = torch.zeros(1, 16, 12, depth, dtype=torch.int64)
    for k in lesion:
        mask[0, 4:8, 3:6, k] = 1
    d = {"image": img, "mask": mask, "class": "covid-19", "meta": {"entry_id": "e", "geometry": []}}
    if boxes is not None:
        d["boxes"] = boxes
    if uids is not None:
        d["slice_uids"] = uids
    if slices is not None:
        d["slices"] = slices
    return d


def _slices(out):
    return [s["meta"]["slice"] for s in out]


def test_all_slices_as_a_list_of_2d_samples():
    d = _entry()
    out = SelectSlicesd()(d)
    assert isinstance(out, list) and _slices(out) == list(range(8))
    s = out[3]
    assert s["image"].shape == (1, 16, 12) and s["mask"].shape == (1, 16, 12)
    torch.testing.assert_close(s["image"].as_tensor(), d["image"].as_tensor()[..., 3])
    assert s["class"] == "covid-19" and "slices" not in s and "boxes" not in s
    assert float(s["image"].affine[2, 3]) == pytest.approx(3 * 2.5)  # origin moved to the slice
    s["meta"]["geometry"].append({"op": "x"})
    assert out[4]["meta"]["geometry"] == [] and d["meta"]["geometry"] == []  # each slice has its own meta


def test_entry_slices_restrict_the_candidates():
    assert _slices(SelectSlicesd()(_entry(slices=[1, 3, 5]))) == [1, 3, 5]


def test_lesion_mode_keeps_slices_with_a_non_zero_mask():
    assert _slices(SelectSlicesd(mode="lesion")(_entry(lesion=(2, 3, 6)))) == [2, 3, 6]


def test_balanced_mode_adds_evenly_spread_lesion_free_slices():
    out = SelectSlicesd(mode="balanced", ratio=1.0)(_entry(depth=12, lesion=(5, 6)))
    chosen = _slices(out)
    lesion = [k for k in chosen if k in (5, 6)]
    assert lesion == [5, 6] and len(chosen) == 4
    assert chosen[0] == 0 and chosen[-1] == 11  # spread from the first to the last lesion-free slice
    assert _slices(SelectSlicesd(mode="balanced", ratio=1.0)(_entry(depth=12, lesion=(5, 6)))) == chosen  # deterministic


def test_annotated_mode_joins_boxes_by_uid():
    uids = [f"1.2.{k}" for k in range(8)]
    boxes = [
        {"slice": 0, "box": [1, 2, 5, 6], "label": "A", "sop_uid": "1.2.4"},  # UID wins over the slice index
        {"box": [2, 2, 6, 6], "label": "A", "sop_uid": "1.2.6"},
        {"box": [0, 0, 3, 3], "label": "A", "sop_uid": "1.2.6"},
    ]
    out = SelectSlicesd(mode="annotated")(_entry(boxes=boxes, uids=uids))
    assert _slices(out) == [4, 6]
    assert [len(s["boxes"]) for s in out] == [1, 2]
    assert out[0]["meta"]["slice_uid"] == "1.2.4"


def test_slices_without_boxes_get_an_empty_list_when_the_entry_has_boxes():
    out = SelectSlicesd()(_entry(boxes=[{"slice": 2, "box": [1, 1, 4, 4], "label": "lesion"}]))
    assert [len(s["boxes"]) for s in out] == [0, 0, 1, 0, 0, 0, 0, 0]


def test_forced_single_slice():
    out = SelectSlicesd(mode="lesion")(dict(_entry(lesion=(2,)), slice=5))
    assert _slices(out) == [5]


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="slice 9 is beyond the 8 slice"):
        SelectSlicesd()(_entry(slices=[1, 9]))
    flat = _entry(depth=1, lesion=())
    with pytest.raises(DataError, match="slice axis"):
        SelectSlicesd()(dict(flat, slices=[0, 1, 2]))
    with pytest.raises(DataError, match="not a slice of the series"):
        SelectSlicesd()(_entry(boxes=[{"box": [1, 1, 4, 4], "label": "A", "sop_uid": "9.9"}], uids=[f"1.{k}" for k in range(8)]))
    with pytest.raises(DataError, match="needs boxes"):
        SelectSlicesd(mode="annotated")(_entry())
    no_mask = _entry()
    del no_mask["mask"]
    with pytest.raises(DataError, match="needs a mask or boxes"):
        SelectSlicesd(keys=["image", "mask"], mode="lesion", allow_missing_keys=True)(no_mask)

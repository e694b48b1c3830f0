"""Labels: merged / multi-class masks, boxes from masks (connected components per class), VOC boxes to
tensors, class indices, and the task record (a missing label stays missing)."""

from __future__ import annotations

import pytest
import torch

from ctmtl.errors import DataError
from ctmtl.transforms import (
    BoxesFromMask,
    BoxesFromMaskd,
    BoxesToTensor,
    BoxesToTensord,
    ClassToIndex,
    ClassToIndexd,
    MergeLesionLabels,
    MergeLesionLabelsd,
    RecordTasksd,
)


def _mask():
    m = torch.zeros(1, 20, 30, dtype=torch.int64)
    m[0, 2:5, 3:8] = 1  # ground-glass, component 1
    m[0, 10:14, 20:26] = 1  # ground-glass, component 2
    m[0, 12:18, 5:9] = 2  # consolidation
    m[0, 18:20, 10:20] = 3  # effusion
    return m


def test_merge_or_keep_lesion_labels():
    m = _mask()
    merged = MergeLesionLabels(merge=True)(m)
    assert merged.dtype == torch.int64 and set(merged.unique().tolist()) == {0, 1}
    assert torch.equal(merged != 0, m != 0)
    kept = MergeLesionLabelsd(keys="mask", merge=False)({"mask": m.float()})["mask"]
    assert kept.dtype == torch.int64 and set(kept.unique().tolist()) == {0, 1, 2, 3}


def test_out_of_range_labels_are_an_error():
    with pytest.raises(DataError, match="label values 0..7"):
        MergeLesionLabels()(torch.tensor([[[0, 7]]]))


def test_boxes_from_mask_one_per_component_and_class():
    boxes, labels = BoxesFromMask()(_mask())
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    expected = {(3, 2, 8, 5), (20, 10, 26, 14), (5, 12, 9, 18), (10, 18, 20, 20)}  # xyxy, x = column, end exclusive
    assert {tuple(int(v) for v in b) for b in boxes} == expected
    assert labels.tolist() == [1, 1, 1, 1]
    _, labels = BoxesFromMask(class_labels=True)(_mask())
    assert sorted(labels.tolist()) == [1, 1, 2, 3]
    boxes, _ = BoxesFromMask(min_area=21)(_mask())
    assert len(boxes) == 2  # the 15- and 20-pixel components are dropped, the two of 24 pixels kept
    empty, none = BoxesFromMask()(torch.zeros(1, 8, 8, dtype=torch.int64))
    assert empty.shape == (0, 4) and none.shape == (0,)


def test_boxes_from_mask_do_not_replace_annotations_and_record_their_settings():
    d = BoxesFromMaskd(min_area=2)({"mask": _mask(), "meta": {}})
    assert len(d["boxes"]) == 4 and d["meta"]["boxes_from_mask"]["min_area"] == 2
    given = torch.tensor([[1.0, 1.0, 4.0, 4.0]])
    d = BoxesFromMaskd()({"mask": _mask(), "boxes": given, "box_labels": torch.tensor([1]), "meta": {}})
    assert torch.equal(d["boxes"], given) and "boxes_from_mask" not in d["meta"]
    assert "boxes" not in BoxesFromMaskd()({"image": torch.zeros(1, 4, 4)})  # no mask: no detection label


def test_voc_boxes_to_tensors():
    boxes = [{"box": [10, 20, 40, 60], "label": "A"}, {"box": [0, 0, 64, 64], "label": "G"}]
    b, labels = BoxesToTensor()(boxes, size=(64, 64))
    assert b.dtype == torch.float32 and b.shape == (2, 4) and labels.tolist() == [1, 1]
    _, labels = BoxesToTensor(classes=["A", "B", "E", "G"])(boxes)
    assert labels.tolist() == [1, 4]
    d = BoxesToTensord(keys="boxes")({"image": torch.zeros(1, 64, 64), "boxes": []})
    assert d["boxes"].shape == (0, 4) and d["box_labels"].shape == (0,)
    with pytest.raises(DataError, match="outside the 64 x 64 image"):
        BoxesToTensor()([{"box": [10, 20, 90, 60], "label": "A"}], size=(64, 64))
    with pytest.raises(DataError, match="not one of the detection classes"):
        BoxesToTensor(classes=["A"])([{"box": [1, 2, 3, 4], "label": "Z"}])
    with pytest.raises(DataError, match="degenerate"):
        BoxesToTensor()([[5, 5, 5, 9]])


def test_class_to_index():
    assert ClassToIndex()("cancer").item() == 2 and ClassToIndex()("cancer").dtype == torch.int64
    assert ClassToIndexd(keys="class")({"class": "non-covid", "meta": {"classes": ["non-covid", "covid-19"]}})["class"].item() == 0
    with pytest.raises(DataError, match="not one of"):
        ClassToIndex()("flu")


def test_task_record_and_missing_labels_stay_missing():
    d = RecordTasksd()({"image": torch.zeros(1, 4, 4), "class": torch.tensor(1), "meta": {}})
    assert d["tasks"] == {"class": True, "seg": False, "recon": True, "det": False}
    assert "mask" not in d and "boxes" not in d
    # labels of tasks the entry does not list are removed; a listed task without its label stays False
    d = RecordTasksd()(
        {
            "image": torch.zeros(1, 4, 4),
            "mask": torch.zeros(1, 4, 4, dtype=torch.int64),
            "boxes": torch.zeros(0, 4),
            "box_labels": torch.zeros(0, dtype=torch.int64),
            "meta": {"tasks": ["detection", "reconstruction", "classification"]},
        }
    )
    assert "mask" not in d and "boxes" in d
    assert d["tasks"] == {"class": False, "seg": False, "recon": True, "det": True}

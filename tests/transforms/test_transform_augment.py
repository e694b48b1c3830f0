"""Training augmentation (the ``train_augment`` chain): image, mask and boxes move together; masks stay
integer; boxes match the augmented objects (IoU > 0.7); missing labels stay missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.box_utils import box_iou

from ctmtl.data.chains import load_chain
from ctmtl.transforms import BoxesFromMask, BoxesFromMaskd, RecordTasksd

ALWAYS = {"flip_prob": 1.0, "affine_prob": 1.0, "elastic_prob": 1.0}


def _ellipses(size=128):
    """Image and label mask with three elliptic lesions (labels 1, 1, 2) of 20-36 pixels across."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.int64)
    for (cy, cx, ry, rx), label in (((32, 36, 12, 18), 1), ((88, 92, 16, 10), 1), ((80, 32, 10, 10), 2)):
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = label
    image = np.where(mask > 0, 0.8, 0.2).astype(np.float32)
    return MetaTensor(torch.as_tensor(image)[None]), MetaTensor(torch.as_tensor(mask)[None])


def _sample(with_mask=True, derived=True):
    image, mask = _ellipses()
    d = {"image": image, "meta": {"entry_id": "x", "slice": 0, "geometry": []}}
    if with_mask:
        d["mask"] = mask
    if derived:
        d = BoxesFromMaskd(mask_key="mask")(dict(d, mask=mask))
        if not with_mask:
            del d["mask"]
    return RecordTasksd()(d)


def _max_ious(boxes, reference):
    assert len(boxes) == len(reference), (boxes, reference)
    return box_iou(boxes, reference).max(1).values


@pytest.mark.parametrize("seed", range(6))
def test_everything_moves_together_and_stays_typed(seed):
    aug = load_chain("train_augment", ALWAYS)
    aug.set_random_state(seed)
    s = _sample()
    out = aug(s)
    assert out["image"].shape == (1, 128, 128) and out["image"].dtype == torch.float32
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert out["mask"].dtype == torch.int64 and set(out["mask"].unique().tolist()) <= {0, 1, 2}
    assert out["boxes"].dtype == torch.float32 and out["box_labels"].dtype == torch.int64
    assert not torch.equal(out["mask"].as_tensor(), s["mask"].as_tensor())  # it did move
    # mask-derived boxes are recomputed from the augmented mask: they are its boxes
    ref, _ = BoxesFromMask()(out["mask"])
    assert float(_max_ious(out["boxes"], ref).min()) > 0.99
    # and the bright pixels of the image moved with the mask
    agree = ((out["image"][0] > 0.5) == (out["mask"][0] > 0)).float().mean()
    assert float(agree) > 0.97
    assert set(out) == set(s)  # no helper keys left behind (box_mask)


@pytest.mark.parametrize("seed", range(6))
def test_annotated_boxes_follow_the_objects(seed):
    """Boxes that do not come from the mask (VOC annotations) move as box-mask channels; the boxes read back
    overlap the boxes of the augmented objects with IoU > 0.7."""
    aug = load_chain("train_augment", ALWAYS)
    aug.set_random_state(seed)
    s = _sample()
    del s["meta"]["boxes_from_mask"]  # as if annotated
    out = aug(s)
    ref, _ = BoxesFromMask()(out["mask"])
    ious = _max_ious(out["boxes"], ref)
    assert float(ious.min()) > 0.7, ious


def test_missing_labels_stay_missing_and_classes_pass_through():
    aug = load_chain("train_augment", ALWAYS)
    s = _sample(with_mask=False, derived=False)
    s["class"] = torch.tensor(1)
    out = aug(s)
    assert "mask" not in out and "boxes" not in out and "box_labels" not in out
    assert out["class"].item() == 1 and out["tasks"] == s["tasks"]
    s = _sample(with_mask=False, derived=True)  # boxes but no mask (detection only)
    del s["meta"]["boxes_from_mask"]
    out = aug(s)
    assert "mask" not in out and out["boxes"].shape[1] == 4


def test_seeded_and_does_not_touch_its_input():
    s = _sample()
    before = s["image"].clone()
    a = load_chain("train_augment", ALWAYS).set_random_state(3)(s)
    b = load_chain("train_augment", ALWAYS).set_random_state(3)(s)
    torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
    torch.testing.assert_close(s["image"].as_tensor(), before.as_tensor())


def test_probability_zero_is_the_identity():
    aug = load_chain("train_augment", {k: 0.0 for k in ALWAYS})
    s = _sample()
    out = aug(s)
    torch.testing.assert_close(out["image"].as_tensor(), s["image"].as_tensor())
    torch.testing.assert_close(out["boxes"], s["boxes"])

"""Geometry: resize / pad-crop move image, mask and boxes together; the geometry record inverts exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmtl.errors import DataError
from ctmtl.transforms import (
    MEDSEG_ORIENTATION,
    BoxesToBoxMaskd,
    BoxMaskToBoxesd,
    InvertGeometryd,
    OrientAxiald,
    PadCropWithBoxesd,
    ResizeWithBoxesd,
    SwapBoxAxes,
    invert_geometry,
    slice_affine,
)


def _sample(h=20, w=30, box=(4, 6, 12, 10)):
    """An image with a bright block exactly under ``box`` (xyxy), and the same block as mask label 2."""
    x1, y1, x2, y2 = box
    image = torch.full((1, h, w), 0.1)
    image[0, y1:y2, x1:x2] = 0.9
    mask = torch.zeros(1, h, w, dtype=torch.int64)
    mask[0, y1:y2, x1:x2] = 2
    return {
        "image": MetaTensor(image),
        "mask": MetaTensor(mask),
        "boxes": torch.tensor([list(map(float, box))]),
        "box_labels": torch.tensor([1]),
        "meta": {"original_shape": [h, w, 1], "affine": np.eye(4).tolist(), "geometry": [], "slice": 0},
    }


def _block_box(mask):
    ys, xs = torch.nonzero(mask[0] != 0, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_resize_bilinear_image_nearest_mask_scaled_boxes():
    d = ResizeWithBoxesd(keys=["image", "mask"], spatial_size=(40, 90))(_sample())
    assert d["image"].shape == (1, 40, 90) and d["image"].dtype == torch.float32
    assert d["mask"].shape == (1, 40, 90) and d["mask"].dtype == torch.int64
    assert set(d["mask"].unique().tolist()) == {0, 2}
    assert 0.1 <= float(d["image"].min()) and float(d["image"].max()) <= 0.9 + 1e-6  # bilinear: no overshoot
    assert len(torch.unique(d["image"])) > 2  # interpolated, not nearest
    torch.testing.assert_close(d["boxes"], torch.tensor([[12.0, 12.0, 36.0, 20.0]]))  # x * 3, y * 2
    assert _block_box(d["mask"]) == [12, 12, 36, 20]
    assert d["meta"]["geometry"] == [{"op": "resize", "in": [20, 30], "out": [40, 90]}]


def test_resize_needs_one_size_for_all_keys():
    s = _sample()
    s["mask"] = s["mask"][:, :10]
    with pytest.raises(DataError, match="other keys"):
        ResizeWithBoxesd(keys=["image", "mask"])(s)


@pytest.mark.parametrize(("size", "square"), [((-1, -1), True), ((14, 40), False), ((31, 21), False)])
def test_pad_crop_shifts_boxes_with_the_pixels(size, square):
    d = PadCropWithBoxesd(keys=["image", "mask"], spatial_size=size, square=square)(_sample())
    out = (30, 30) if square else size
    assert tuple(d["image"].shape[1:]) == out and d["mask"].dtype == torch.int64
    assert [int(v) for v in d["boxes"][0]] == _block_box(d["mask"])  # boxes moved exactly as the block
    op = d["meta"]["geometry"][-1]
    assert op["op"] == "pad_crop" and op["in"] == [20, 30] and op["out"] == list(out)


def test_pad_crop_drops_boxes_cut_away_with_their_labels():
    s = _sample(box=(0, 0, 3, 3))
    s["boxes"] = torch.tensor([[0.0, 0.0, 3.0, 3.0], [10.0, 8.0, 20.0, 12.0]])
    s["box_labels"] = torch.tensor([1, 2])
    d = PadCropWithBoxesd(keys=["image", "mask"], spatial_size=(10, 10))(s)
    assert d["boxes"].shape == (1, 4) and d["box_labels"].tolist() == [2]


def test_invert_geometry_round_trip_orient_pad_resize():
    # a stored (transposed, MedSeg-like) 1-slice volume of 12 x 20
    h, w = 12, 20
    labels = torch.zeros(1, h, w, 1, dtype=torch.int64)
    labels[0, 2:6, 3:11, 0] = 1
    labels[0, 7:10, 12:18, 0] = 2
    affine = slice_affine(np.diag([0.8, 0.7, 5.0, 1.0]), 0)
    d = {"mask": MetaTensor(labels, affine=torch.as_tensor(affine)), "meta": {"geometry": [], "original_shape": [h, w, 1], "affine": affine.tolist(), "slice": 0}}
    d = OrientAxiald(keys=["mask"], **MEDSEG_ORIENTATION)(d)  # -> 20 x 12
    d["mask"] = d["mask"][..., 0]
    d = PadCropWithBoxesd(keys=["mask"], square=True)(d)  # -> 20 x 20
    d = ResizeWithBoxesd(keys=["mask"], spatial_size=(40, 40), mode="nearest")(d)  # -> 40 x 40
    assert [op["op"] for op in d["meta"]["geometry"]] == ["orient", "pad_crop", "resize"]
    back = invert_geometry(d["mask"], d["meta"])
    assert back.shape == (1, h, w)
    torch.testing.assert_close(back.as_tensor(), labels[..., 0])
    np.testing.assert_allclose(back.affine.numpy(), affine)
    inv = InvertGeometryd(keys="mask")(d)
    torch.testing.assert_close(inv["mask"].as_tensor(), labels[..., 0])


def test_invert_refuses_a_prediction_of_another_grid():
    d = ResizeWithBoxesd(keys=["image"], spatial_size=(40, 60))(_sample())
    with pytest.raises(DataError, match="geometry ends at"):
        invert_geometry(torch.zeros(1, 32, 32), d["meta"])


def test_swap_box_axes_is_its_own_inverse():
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert SwapBoxAxes()(b).tolist() == [[2.0, 1.0, 4.0, 3.0]]
    torch.testing.assert_close(SwapBoxAxes()(SwapBoxAxes()(b)), b)


def test_box_mask_round_trip_and_empty_boxes():
    s = _sample(h=32, w=40, box=(5, 7, 25, 19))
    d = BoxesToBoxMaskd()(s)
    assert d["box_mask"].shape == (1, 32, 40)
    d = BoxMaskToBoxesd()(d)
    assert "box_mask" not in d
    torch.testing.assert_close(d["boxes"], torch.tensor([[5.0, 7.0, 25.0, 19.0]]))
    assert d["box_labels"].tolist() == [1]
    s["boxes"], s["box_labels"] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    d = BoxMaskToBoxesd()(BoxesToBoxMaskd()(s))
    assert d["boxes"].shape == (0, 4) and "box_mask" not in d
    s = _sample()
    s["meta"]["boxes_from_mask"] = {"min_area": 1}
    assert "box_mask" not in BoxesToBoxMaskd()(s)  # recomputed from the mask instead

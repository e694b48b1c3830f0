"""Orientation: MedSeg's stored rotation undone exactly, affine kept consistent, step recorded."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from ctmtl.transforms import MEDSEG_ORIENTATION, OrientAxial, OrientAxiald


def _volume():
    a = np.diag([0.8, 0.7, 5.0, 1.0])
    a[:3, 3] = [-20, 15, -100]
    x = torch.arange(1 * 6 * 4 * 3, dtype=torch.float32).reshape(1, 6, 4, 3)
    return MetaTensor(x, affine=torch.as_tensor(a)), a


def test_medseg_orientation_matches_the_public_converters():
    img, _ = _volume()
    out = OrientAxial(**MEDSEG_ORIENTATION)(img)
    assert out.shape == (1, 4, 6, 3)
    for k in range(3):
        s = img[0, :, :, k].numpy()
        np.testing.assert_array_equal(out[0, :, :, k].numpy(), np.fliplr(np.rot90(s, k=3)))
        np.testing.assert_array_equal(out[0, :, :, k].numpy(), s.T)


def test_affine_follows_the_voxels():
    img, a = _volume()
    out = OrientAxial(**MEDSEG_ORIENTATION)(img)
    # a voxel's world position is the same before and after
    i, j, k = 2, 3, 1
    world_before = a @ np.array([i, j, k, 1.0])
    world_after = out.affine.numpy() @ np.array([j, i, k, 1.0])  # transposed in-plane indices
    np.testing.assert_allclose(world_before, world_after, atol=1e-5)
    assert out[0, j, i, k] == img[0, i, j, k]


def test_identity_by_default_and_record_of_the_step():
    img, _ = _volume()
    d = OrientAxiald(keys=["image"])({"image": img, "meta": {"geometry": []}})
    assert d["image"] is img and d["meta"]["geometry"] == []
    d = OrientAxiald(keys=["image", "mask"], allow_missing_keys=True, **MEDSEG_ORIENTATION)({"image": img, "meta": {"geometry": []}})
    assert d["meta"]["geometry"] == [{"op": "orient", "in": [6, 4], "out": [4, 6], "k": 3, "flip_lr": True}]

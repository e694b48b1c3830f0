"""Inverse: a prediction goes back onto the slice / volume as stored in the file (shape and affine equal)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

import ctmtl_tiny_data as tiny_data  # loaded by conftest.py
from ctmtl.data.chains import load_chain
from ctmtl.data.pipeline import SliceDataset, assemble_volume, invert_prediction, multitask_collate, save_volume
from ctmtl.transforms import slice_affine


def _medseg_like(tmp_path):
    # stored transposed, 40 x 48 per slice; upright 48 x 40; the chain resizes x2 to 96 x 80
    im, mk, _, _ = tiny_data.write_volume_pair(tmp_path, "m", shape=(48, 40, 5), seed=2, transpose=True)
    entry = {"id": "m", "kind": "volume", "image": "m_im.nii.gz", "mask": "m_mask.nii.gz", "patient": "p", "split": "test",
             "tasks": ["segmentation", "reconstruction"], "transforms": "medseg_volume"}
    path = tiny_data.write_manifest(tmp_path / "m.json", [entry])
    ds = SliceDataset(path, overrides={"spatial_size": [96, 80], "merge_labels": False})
    return ds, nib.load(str(mk))


def test_prediction_back_on_the_stored_slice(tmp_path):
    ds, stored = _medseg_like(tmp_path)
    truth = np.asarray(stored.dataobj)
    for i in range(len(ds)):
        s = ds[i]
        assert s["mask"].shape == (1, 96, 80)
        back = invert_prediction(s["mask"], s["meta"])
        k = s["meta"]["slice"]
        assert back.shape == (1, *truth.shape[:2])
        np.testing.assert_array_equal(back[0].numpy(), truth[..., k])  # the mask itself, as "prediction"
        np.testing.assert_allclose(back.affine.numpy(), slice_affine(stored.affine, k), atol=1e-5)


def test_assembled_volume_has_the_original_shape_and_affine(tmp_path):
    ds, stored = _medseg_like(tmp_path)
    batch = multitask_collate([ds[i] for i in range(len(ds))])
    probs = batch["mask"].float()  # a "prediction" per batch item, B x 1 x H x W
    volume = assemble_volume(zip(probs, batch["meta"]))
    assert volume.shape == (1, *stored.shape)
    np.testing.assert_allclose(volume.affine.numpy(), stored.affine, atol=1e-5)
    np.testing.assert_array_equal(volume[0].numpy(), np.asarray(stored.dataobj))
    out = save_volume(volume, tmp_path / "pred.nii.gz")
    again = nib.load(str(out))
    assert again.shape == stored.shape
    np.testing.assert_allclose(again.affine, stored.affine, atol=1e-5)


def test_inference_post_chain_ends_in_the_original_geometry(tmp_path):
    ds, stored = _medseg_like(tmp_path)
    s = ds[2]
    post = load_chain("inference_post")
    logits = torch.where(s["mask"] > 0, 5.0, -5.0).float()  # C=1 sigmoid logits on the 96 x 80 grid
    out = post({"seg": logits, "class": torch.tensor([2.0, 0.0, -1.0]), "meta": s["meta"]})
    assert out["seg"].shape == (1, *stored.shape[:2])
    np.testing.assert_array_equal(out["seg"][0].numpy() > 0, np.asarray(stored.dataobj)[..., s["meta"]["slice"]] > 0)
    assert torch.isclose(out["class"].sum(), torch.tensor(1.0)) and out["class"].argmax().item() == 0


def test_2d_image_padded_to_square_inverts(tmp_path):
    tiny_data.write_png(tmp_path / "w.png", (30, 50))
    tiny_data.write_palette_mask(tmp_path / "w_mask.png", (30, 50))
    entry = {"id": "w", "kind": "slice", "image": "w.png", "mask": "w_mask.png", "patient": "p", "split": "test", "tasks": ["segmentation"]}
    ds = SliceDataset(tiny_data.write_manifest(tmp_path / "w.json", [entry]), overrides={"pad_to_square": True, "spatial_size": [100, 100], "merge_labels": False})
    s = ds[0]
    assert [op["op"] for op in s["meta"]["geometry"]] == ["pad_crop", "resize"]
    back = invert_prediction(s["mask"], s["meta"])
    from ctmtl.data.io import read_mask_2d

    np.testing.assert_array_equal(back[0].numpy(), read_mask_2d(tmp_path / "w_mask.png"))

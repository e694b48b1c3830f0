"""Load transforms: shapes, dtypes, affines, the geometry record, and errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import ctmtl_tiny_data as tiny_data  # loaded by conftest.py
from ctmtl.errors import DataError
from ctmtl.transforms import LoadCTVolumed, LoadDicomSeries, LoadDicomSeriesd, LoadImage2D, LoadImage2Dd


def test_load_volume_image_and_mask(tmp_path):
    im, mk, image, mask = tiny_data.write_volume_pair(tmp_path, "v", shape=(32, 24, 4))
    d = LoadCTVolumed(keys=["image", "mask"])({"image": str(im), "mask": str(mk), "meta": {}})
    assert isinstance(d["image"], MetaTensor) and d["image"].shape == (1, 32, 24, 4)
    assert d["image"].dtype == torch.float32 and d["mask"].dtype == torch.int64
    np.testing.assert_allclose(d["image"][0].numpy(), np.rint(image), atol=0.5)  # HU as stored
    assert set(np.unique(d["mask"].numpy())) == {0, 1, 2, 3}
    np.testing.assert_allclose(d["image"].affine.numpy(), tiny_data.AFFINE, atol=1e-5)
    assert d["meta"]["original_shape"] == [32, 24, 4]
    np.testing.assert_allclose(d["meta"]["affine"], tiny_data.AFFINE, atol=1e-5)
    assert d["meta"]["geometry"] == []


def test_load_volume_missing_mask_key_stays_missing(tmp_path):
    im, _, _, _ = tiny_data.write_volume_pair(tmp_path, "v", shape=(32, 24, 4))
    d = LoadCTVolumed(keys=["image", "mask"], allow_missing_keys=True)({"image": str(im)})
    assert "mask" not in d and d["image"].shape == (1, 32, 24, 4)


def test_mask_of_another_shape_is_an_error_naming_both_files(tmp_path):
    im, _, _, _ = tiny_data.write_volume_pair(tmp_path, "v", shape=(32, 24, 4))
    _, mk, _, _ = tiny_data.write_volume_pair(tmp_path, "w", shape=(32, 24, 5))
    with pytest.raises(DataError) as err:
        LoadCTVolumed()({"image": str(im), "mask": str(mk)})
    assert "w_mask.nii.gz" in str(err.value) and "v_im.nii.gz" in str(err.value)


def test_all_nan_mask_is_an_error_naming_the_file(tmp_path):
    im, _, _, _ = tiny_data.write_volume_pair(tmp_path, "v", shape=(32, 24, 4))
    bad = tiny_data.write_nifti(tmp_path / "nan_mask.nii.gz", np.full((32, 24, 4), np.nan, np.float32))
    with pytest.raises(DataError, match="nan_mask.nii.gz"):
        LoadCTVolumed()({"image": str(im), "mask": str(bad)})


def test_dicom_series_in_hounsfield_units_with_uids(tmp_path):
    uids = tiny_data.write_dicom_series(tmp_path / "s", shape=(40, 48, 5))
    img = LoadDicomSeries()(tmp_path / "s")
    assert img.shape == (1, 40, 48, 5) and img.dtype == torch.float32
    assert float(img.min()) == pytest.approx(-1000, abs=60)  # air, rescale intercept applied
    assert img.meta["sop_uids"] == uids  # sorted by position, not by InstanceNumber (descending here)
    d = LoadDicomSeriesd()({"image": str(tmp_path / "s"), "meta": {}})
    assert d["slice_uids"] == uids and d["meta"]["original_shape"] == [40, 48, 5]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_image_2d_any_mode_is_one_channel_with_a_slice_axis(tmp_path, mode):
    path = tiny_data.write_png(tmp_path / f"x_{mode}.png", (30, 44), "RGB" if mode == "P" else mode)
    if mode == "P":
        from PIL import Image

        Image.open(path).convert("P").save(path)
    img = LoadImage2D()(path)
    assert img.shape == (1, 30, 44, 1) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 255


def test_png_holding_jpeg_data_is_decoded_by_content(tmp_path):
    path = tiny_data.write_png(tmp_path / "really_a_jpeg.png", (30, 44), "L", as_jpeg=True)
    assert LoadImage2D()(path).shape == (1, 30, 44, 1)


def test_palette_mask_keeps_indices(tmp_path):
    img = tiny_data.write_png(tmp_path / "i.png", (40, 56))
    msk = tiny_data.write_palette_mask(tmp_path / "m.png", (40, 56))
    d = LoadImage2Dd()({"image": str(img), "mask": str(msk), "meta": {}})
    assert d["mask"].dtype == torch.int64 and set(np.unique(d["mask"].numpy())) == {0, 1, 2}
    assert d["meta"]["original_shape"] == [40, 56, 1]


def test_missing_and_broken_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.nii.gz"):
        LoadCTVolumed(keys="image")({"image": str(tmp_path / "nope.nii.gz")})
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        LoadImage2Dd(keys="image")({"image": str(tmp_path / "empty.png")})

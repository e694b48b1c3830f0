"""``ctmtl predict`` outputs: every file in place, masks in the exact geometry of the input, only the model's heads."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import ctmtl_tiny_data as tiny_data  # loaded by tests/conftest.py
from ctmtl.constants import CLASS_NAMES
from ctmtl.data.io import scan_dicom_series
from tests.conftest import make_trained_bundle
from tests.inference.conftest import run_predict


def _assert_common(folder, slices: int):
    doc = json.loads((folder / "prediction.json").read_text())
    assert doc["format"] == "ctmtl-prediction/1"
    probs = doc["classification"]["probabilities"]
    assert list(probs) == list(CLASS_NAMES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(doc["slices"]) == slices
    mean = np.mean([[row["probabilities"][c] for c in CLASS_NAMES] for row in doc["slices"]], axis=0)
    np.testing.assert_allclose([probs[c] for c in CLASS_NAMES], mean, atol=1e-5)  # per input = mean of slices
    assert doc["model"]["weights_sha256"] and doc["model"]["heads_run"] == ["class", "seg", "det"]
    burden = doc["segmentation"]["burden"]
    assert burden["slices"] == slices and 0 <= burden["slices_with_lesion_percent"] <= 100
    assert (folder / "detections.json").is_file()
    return doc


def test_volume_mask_has_the_nifti_geometry(trained_bundle, inputs, tmp_path, capsys):
    rc, out, err = run_predict(capsys, "--model", trained_bundle, inputs["volume"], "--out", tmp_path)
    assert rc == 0, err
    folder = tmp_path / "vol_im"
    assert str(folder) in out
    stored, mask = nib.load(str(inputs["volume"])), nib.load(str(folder / "mask.nii.gz"))
    assert mask.shape == stored.shape == (48, 40, 6)
    np.testing.assert_allclose(mask.affine, stored.affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8
    doc = _assert_common(folder, 6)
    voxel_ml = abs(np.linalg.det(stored.affine[:3, :3])) / 1000
    assert doc["segmentation"]["burden"]["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert doc["input"]["spacing_mm"] == pytest.approx([0.8, 0.7, 5.0])
    assert sorted(folder.glob("overlay_slice*.png")) and not (folder / "mask.png").exists()


def test_dicom_mask_has_the_series_geometry(trained_bundle, inputs, tmp_path, capsys):
    rc, _, err = run_predict(capsys, "--model", trained_bundle, inputs["dicom"], "--out", tmp_path, "--no-overlays")
    assert rc == 0, err
    series = scan_dicom_series(inputs["dicom"])
    mask = nib.load(str(tmp_path / "series1" / "mask.nii.gz"))
    assert mask.shape == series.shape == (40, 48, 5)
    np.testing.assert_allclose(mask.affine, series.affine, atol=1e-5)
    doc = _assert_common(tmp_path / "series1", 5)
    assert [row["sop_uid"] for row in doc["slices"]] == series.sop_uids
    assert doc["input"]["series_uid"] == series.series_uid
    assert not list((tmp_path / "series1").glob("overlay*.png"))  # --no-overlays


def test_png_masks_have_the_image_size(trained_bundle, inputs, tmp_path, capsys):
    rc, _, err = run_predict(capsys, "--model", trained_bundle, inputs["png"], "--out", tmp_path)
    assert rc == 0, err
    folder = tmp_path / "scan"
    image = Image.open(inputs["png"])
    png = Image.open(folder / "mask.png")
    assert png.size == image.size == (56, 40) and png.mode == "L"
    mask = nib.load(str(folder / "mask.nii.gz"))
    assert mask.shape == (40, 56)
    np.testing.assert_array_equal(mask.affine, np.eye(4))
    np.testing.assert_array_equal(np.asarray(png), np.asarray(mask.dataobj))
    _assert_common(folder, 1)
    assert (folder / "overlay.png").is_file()


def test_folder_and_manifest_inputs(trained_bundle, sources, tmp_path, capsys):
    # a manifest, test split only: one of its four 2D entries
    rc, _, err = run_predict(capsys, "--model", trained_bundle, sources["slice"], "--split", "test", "--out", tmp_path / "m")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["n2"]
    doc = json.loads((tmp_path / "m" / "n2" / "prediction.json").read_text())
    assert doc["input"]["entry_id"] == "n2" and doc["input"]["split"] == "test" and doc["input"]["class"] == "non-covid"
    # a folder: every image file and DICOM series below it (masks are images too); manifests, XML, CSV are skipped
    rc, _, err = run_predict(capsys, "--model", trained_bundle, sources["dicom"].parent, sources["slice"].parent,
                             "--out", tmp_path / "f", "--no-overlays")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["c1", "c1_mask", "c2", "n1", "n2", "series1"]


def test_existing_outputs_are_kept_unless_overwrite(trained_bundle, inputs, tmp_path, capsys):
    args = ("--model", trained_bundle, inputs["png"], inputs["png32"], "--out", tmp_path, "--no-overlays")
    assert run_predict(capsys, *args)[0] == 0
    (tmp_path / "scan" / "stale.txt").write_text("from an earlier run")
    (tmp_path / "small" / "mask.png").unlink()
    before = (tmp_path / "scan" / "prediction.json").read_text()
    rc, out, err = run_predict(capsys, *args)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ctmtl predict: error: ") and "--overwrite" in line for line in lines)
    assert (tmp_path / "scan" / "prediction.json").read_text() == before  # nothing touched
    assert not (tmp_path / "small" / "mask.png").exists()
    rc, _, err = run_predict(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert not (tmp_path / "scan" / "stale.txt").exists() and (tmp_path / "small" / "mask.png").is_file()
    assert not list(tmp_path.glob(".*partial*"))


def test_only_the_heads_of_the_model_are_written(tmp_path, inputs, capsys):
    bundle = make_trained_bundle(tmp_path / "bundle", tasks=("seg", "recon"))
    rc, _, err = run_predict(capsys, "--model", bundle / "models" / "model.pt", inputs["volume"], "--out", tmp_path / "out")
    assert rc == 0, err
    folder = tmp_path / "out" / "vol_im"
    assert (folder / "mask.nii.gz").is_file() and not (folder / "detections.json").exists()
    doc = json.loads((folder / "prediction.json").read_text())
    assert "classification" not in doc and "segmentation" in doc and doc["model"]["heads_run"] == ["seg"]
    assert "probabilities" not in doc["slices"][0]


def test_names_of_inputs_are_unique(tmp_path, trained_bundle, capsys):
    tiny_data.write_png(tmp_path / "a" / "x.png", (32, 32))
    tiny_data.write_png(tmp_path / "b" / "x.jpg", (32, 32))
    rc, _, err = run_predict(capsys, "--model", trained_bundle, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out", "--no-overlays")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x", "x-2"]

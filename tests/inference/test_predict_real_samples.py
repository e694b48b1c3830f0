"""``ctmtl predict`` on the real excerpts under ../shared/real_samples (skipped when absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from PIL import Image

from ctmtl.data.io import scan_dicom_series
from tests.conftest import real_sample
from tests.inference.conftest import run_predict


def test_lung_pet_ct_dx_series(trained_bundle, tmp_path, capsys):
    root = real_sample("lung-pet-ct-dx")
    series_dir = next(p.parent for p in sorted(root.rglob("*.dcm")))
    rc, _, err = run_predict(capsys, "--model", trained_bundle, series_dir, "--out", tmp_path, "--batch-size", "32")
    assert rc == 0, err
    folder = tmp_path / series_dir.name
    series = scan_dicom_series(series_dir)
    mask = nib.load(str(folder / "mask.nii.gz"))
    assert mask.shape == series.shape == (512, 512, 64)
    np.testing.assert_allclose(mask.affine, series.affine, atol=1e-4)
    doc = json.loads((folder / "prediction.json").read_text())
    assert len(doc["slices"]) == 64 and doc["input"]["spacing_mm"][2] == np.round(series.spacing[2], 6)


def test_ucsd_image(trained_bundle, tmp_path, capsys):
    root = real_sample("ucsd-ai4h-covid-ct")
    image = next(p for p in sorted((root / "Images-processed" / "CT_COVID").iterdir()) if Image.open(p).mode != "L")
    rc, _, err = run_predict(capsys, "--model", trained_bundle, image, "--out", tmp_path)
    assert rc == 0, err
    folder = next(tmp_path.iterdir())
    assert Image.open(folder / "mask.png").size == Image.open(image).size

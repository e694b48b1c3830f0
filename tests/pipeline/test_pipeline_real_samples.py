"""Real excerpts (../shared/real_samples; skipped when absent) through the shipped chains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ctmtl_tiny_data as tiny_data  # loaded by conftest.py
from ctmtl.data.pipeline import SliceDataset, check_sample
from ctmtl.transforms import LoadDicomSeries
from tests.conftest import real_sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _lung_dx_manifest(tmp_path):
    from ctmtl.data.io import read_voc_xml, scan_dicom_series

    root = real_sample("lung-pet-ct-dx")
    series_dir = next(p.parent for p in sorted(root.rglob("*.dcm")))
    series = scan_dicom_series(series_dir)
    index = series.slice_index()
    boxes = []
    for xml in sorted((root / "Annotation").rglob("*.xml")):
        for obj in read_voc_xml(xml).objects:
            boxes.append({"slice": index[xml.stem], "box": list(obj.box), "label": obj.name, "sop_uid": xml.stem})
    slices = sorted({b["slice"] for b in boxes})
    entry = {"id": "A0001", "kind": "dicom_series", "image": str(series_dir), "class": "cancer", "subtype": "A", "patient": "A0001",
             "split": "test", "slices": slices, "slice_uids": series.sop_uids, "boxes": boxes,
             "tasks": ["classification", "reconstruction", "detection"]}
    return tiny_data.write_manifest(tmp_path / "lung_dx.json", [entry], source="lung-pet-ct-dx", transforms="dicom_series"), series_dir, boxes


def test_dicom_in_hounsfield_units_before_windowing(tmp_path):
    _, series_dir, _ = _lung_dx_manifest(tmp_path)
    img = LoadDicomSeries()(series_dir)
    assert img.shape == (1, 512, 512, 64)
    corner = img[0, :16, :16].as_tensor()  # outside the body: air
    assert float(corner.mean()) == pytest.approx(-1000, abs=50)
    assert float(img.max()) > 300  # bone


def test_lung_dx_annotated_slices_with_boxes(tmp_path):
    path, _, boxes = _lung_dx_manifest(tmp_path)
    ds = SliceDataset(path)
    assert len(ds) == len({b["slice"] for b in boxes}) == 11
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s)
        assert s["image"].shape == (1, 256, 256) and s["class"].item() == 2
        assert len(s["boxes"]) >= 1 and float(s["boxes"].max()) <= 256
        expected = [b["box"] for b in boxes if b["sop_uid"] == s["meta"]["slice_uid"]]
        torch.testing.assert_close(s["boxes"], torch.tensor(expected, dtype=torch.float32) / 2)  # 512 -> 256


def test_ucsd_images_of_every_colour_mode(tmp_path):
    from PIL import Image

    root = real_sample("ucsd-ai4h-covid-ct") / "Images-processed"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    modes = {Image.open(p).mode for p in files}
    assert {"L", "RGB", "RGBA"} <= modes
    entries = [
        {"id": f"u{i}", "kind": "slice", "image": str(p), "class": "covid-19" if "CT_COVID" in p.parts else "non-covid",
         "patient": f"u{i}", "split": "train", "tasks": ["classification", "reconstruction"]}
        for i, p in enumerate(files)
    ]
    ds = SliceDataset(tiny_data.write_manifest(tmp_path / "ucsd.json", entries, source="ucsd-ai4h", transforms="slice_8bit"))
    assert len(ds) == len(files)
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (1, 256, 256) and s["image"].dtype == torch.float32
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0


@pytest.mark.parametrize(("merge", "values"), [(False, {0, 1, 2}), (True, {0, 1})])
def test_medseg_derived_masks_keep_or_merge_labels(tmp_path, merge, values):
    root = real_sample("medseg-derived-2d")
    entries = []
    for img in sorted((root / "Imgs").glob("*.jpg")):
        entries.append({"id": img.stem, "kind": "slice", "image": str(img), "mask": str(root / "GT" / f"{img.stem}.png"),
                        "patient": f"m{img.stem}", "split": "train", "tasks": ["segmentation", "reconstruction"]})
    ds = SliceDataset(tiny_data.write_manifest(tmp_path / "medseg2d.json", entries, source="medseg", transforms="slice_8bit"),
                      overrides={"merge_labels": merge})
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["mask"].dtype == torch.int64 and s["mask"].shape == (1, 256, 256)
        seen |= set(np.unique(s["mask"].numpy()).tolist())
    assert seen == values

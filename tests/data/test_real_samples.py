"""Builders on the real excerpts under ../shared/real_samples (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ctmtl.data.check import check_manifest
from ctmtl.data.io import read_dicom_series, read_image_2d, read_mask_2d, read_voc_xml
from ctmtl.data.manifest import load_manifest
from ctmtl.data.sources.ucsd import read_split_file
from tests.conftest import real_sample
from tests.data.conftest import run_cli


def _build(capsys, source, root, out):
    rc, stdout, err = run_cli(capsys, "manifest", "build", source, root, "-o", out)
    assert rc == 0, err
    return load_manifest(out)


def test_lung_dx_annotations_join_to_slices(tmp_path, capsys):
    root = real_sample("lung-pet-ct-dx")
    manifest = _build(capsys, "lung-pet-ct-dx", root, tmp_path / "lung.json")
    xmls = sorted((root / "Annotation" / "A0001").glob("*.xml"))
    assert len(xmls) == 11
    (entry,) = manifest.entries
    assert entry["patient"] == "A0001" and entry["class"] == "cancer" and entry["subtype"] == "A"
    assert "  " not in entry["image"] and manifest.resolve(entry["image"]).is_dir()
    series = read_dicom_series(manifest.resolve(entry["image"]))
    assert entry["slice_uids"] == series.sop_uids and len(series.sop_uids) == 64
    assert {b["sop_uid"] for b in entry["boxes"]} == {x.stem for x in xmls}
    assert len(entry["boxes"]) == sum(len(read_voc_xml(x).objects) for x in xmls)
    for box in entry["boxes"]:
        k = box["slice"]
        assert series.sop_uids[k] == box["sop_uid"]  # the box lies on the slice its XML names
        x1, y1, x2, y2 = box["box"]
        assert 0 <= x1 < x2 <= series.columns and 0 <= y1 < y2 <= series.rows
        # the box holds tissue denser than lung (the tumour), not air
        assert np.median(series.array[y1:y2, x1:x2, k]) > -500
    assert entry["slices"] == sorted({b["slice"] for b in entry["boxes"]})
    rc, stdout, err = run_cli(capsys, "manifest", "check", tmp_path / "lung.json")
    assert rc == 0, err


def test_lung_dx_older_layout(tmp_path, capsys):
    """``Lung_Dx-<ID>/<StudyUID>/<SeriesUID>/`` without metadata.csv gives the same entry (matched by UID)."""
    root = real_sample("lung-pet-ct-dx")
    nbia = _build(capsys, "lung-pet-ct-dx", root, tmp_path / "a.json").entries[0]
    src = next(root.glob("manifest-*/Lung-PET-CT-Dx/*/*/*"))
    series = read_dicom_series(src)
    older = tmp_path / "older"
    folder = older / "Lung_Dx-A0001" / series.study_uid / series.series_uid
    folder.mkdir(parents=True)
    for f in src.iterdir():
        os.symlink(f, folder / f.name)
    os.symlink(root / "Annotation", older / "Annotation")
    entry = _build(capsys, "lung-pet-ct-dx", older, tmp_path / "b.json").entries[0]
    assert Path(entry["image"]).parts[-3:] == ("Lung_Dx-A0001", series.study_uid, series.series_uid)
    assert {k: v for k, v in entry.items() if k != "image"} == {k: v for k, v in nbia.items() if k != "image"}


def test_ucsd_images_and_official_split(tmp_path, capsys):
    root = real_sample("ucsd-ai4h-covid-ct")
    manifest = _build(capsys, "ucsd-ai4h", root, tmp_path / "ucsd.json")
    assert len(manifest.entries) == 40
    for entry in manifest.entries:
        image = read_image_2d(manifest.resolve(entry["image"]))
        assert image.ndim == 2 and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 255
    for sub, klass in (("COVID", "covid-19"), ("NonCOVID", "non-covid")):
        for split in ("train", "val", "test"):
            names = read_split_file(root / "Data-split" / sub / f"{split}CT_{sub}.txt")
            got = [e for e in manifest.entries if e["class"] == klass and e["split"] == split]
            assert len(got) == len(names)
            assert sorted(Path(e["image"]).name for e in got) == sorted(names)
    assert manifest.counts()["classes"] == {"covid-19": 20, "non-covid": 20}
    # NonCOVID patients come from the MetaInfo CSV, COVID ones from the paper
    patients = {Path(e["image"]).name: e["patient"] for e in manifest.entries}
    assert patients["26%1.jpg"] == patients["26%3.jpg"] and patients["26%1.jpg"].startswith("non-covid:")
    assert patients["2020.03.04.20030395-p27-108%1.png"] == "covid-19:2020.03.04.20030395"


def test_medseg_derived_folder(tmp_path, capsys):
    root = real_sample("medseg-derived-2d")
    manifest = _build(capsys, "folder", root, tmp_path / "folder.json")
    assert len(manifest.entries) == 50
    values = set()
    for entry in manifest.entries:
        image = read_image_2d(manifest.resolve(entry["image"]))
        mask = read_mask_2d(manifest.resolve(entry["mask"]))
        assert image.shape == mask.shape
        values |= set(np.unique(mask).tolist())
    assert values == {0, 1, 2}
    report = check_manifest(manifest)
    assert report.ok, report.problems

"""Synthetic data -> builders -> check: the built manifests' counts equal what the generator wrote."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ctmtl.constants import CLASS_NAMES
from ctmtl.data.check import check_manifest
from ctmtl.data.io import read_dicom_series, read_image_2d, read_volume
from ctmtl.data.manifest import load_manifest
from ctmtl.data.synthetic import SOURCE_DIRS, SynthConfig, ensure_synthetic, generate_synthetic
from ctmtl.errors import DataError
from tests.data.conftest import TINY, run_cli

@pytest.mark.parametrize("source", list(SOURCE_DIRS))
def test_build_and_check_each_source(tiny_synth, tiny_record, tmp_path, capsys, source):
    out = tmp_path / f"{source}.json"
    rc, stdout, err = run_cli(capsys, "manifest", "build", source, tiny_synth / SOURCE_DIRS[source], "-o", out)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    manifest = load_manifest(out)
    assert manifest.counts() == tiny_record["sources"][source]["counts"]
    rc, stdout, err = run_cli(capsys, "manifest", "check", out)
    assert rc == 0, err
    assert "OK (every file read)" in stdout


def test_build_synthetic_builds_all_and_merged(tiny_synth, tiny_record, tmp_path, capsys):
    rc, stdout, err = run_cli(capsys, "manifest", "build", "synthetic", tiny_synth, "-o", tmp_path / "m")
    assert rc == 0, err
    for key in ("medseg", "ucsd-ai4h", "lung-pet-ct-dx", "merged"):
        manifest = load_manifest(tmp_path / "m" / f"{key}.json")
        assert manifest.counts() == tiny_record["sources"][key]["counts"], key
    merged = load_manifest(tmp_path / "m" / "merged.json")
    assert merged.source == "merged" and merged.classes == list(CLASS_NAMES)
    assert check_manifest(merged).ok
    # again without --overwrite: refused, nothing changed
    rc, _, err = run_cli(capsys, "manifest", "build", "synthetic", tiny_synth, "-o", tmp_path / "m")
    assert rc != 0 and "--overwrite" in err[0]


def test_manifest_contents(tiny_synth, tmp_path, capsys):
    run_cli(capsys, "manifest", "build", "synthetic", tiny_synth, "-o", tmp_path)
    medseg = load_manifest(tmp_path / "medseg.json")
    assert medseg.data["transforms"] == "medseg_volume"
    tr = [e for e in medseg.entries if e["id"].startswith("tr_im-")]
    assert {e["split"] for e in tr} == {"train", "val", "test"}
    assert sorted(k for e in tr for k in e["slices"]) == list(range(TINY.medseg_tr_patients * TINY.medseg_tr_slices))
    val_im = next(e for e in medseg.entries if e["id"] == "val_im")
    assert val_im["tasks"] == ["reconstruction"] and "mask" not in val_im
    rp = next(e for e in medseg.entries if e["id"] == "rp_im/1")
    assert rp["tasks"] == ["segmentation", "reconstruction", "detection"] and "lung_mask" in rp
    mask, _ = read_volume(medseg.resolve(rp["mask"]), dtype=np.int64)
    assert set(np.unique(mask)) <= {0, 1, 2, 3}

    lung = load_manifest(tmp_path / "lung-pet-ct-dx.json")
    assert lung.data["transforms"] == "dicom_series"
    studies = {}
    for e in lung.entries:
        assert e["class"] == "cancer" and e["subtype"] == e["patient"][0]
        assert e["slices"] == sorted({b["slice"] for b in e["boxes"]})
        for b in e["boxes"]:
            assert e["slice_uids"][b["slice"]] == b["sop_uid"]
            assert lung.resolve(b["annotation"]).stem == b["sop_uid"]
        studies.setdefault(e["patient"], []).append(e)
    assert any(len(v) == 2 for v in studies.values())  # one study's annotations spread over two series
    assert any("  " in e["image"] for e in lung.entries)  # double spaces in a series folder name
    assert any("manifest-" not in e["image"] for e in lung.entries)  # the older layout

    ucsd = load_manifest(tmp_path / "ucsd-ai4h.json")
    assert ucsd.data["transforms"] == "slice_8bit"
    assert any("%" in e["image"] for e in ucsd.entries)
    for e in ucsd.entries:
        assert read_image_2d(ucsd.resolve(e["image"])).ndim == 2


def test_synthetic_quirks_and_geometry(tiny_synth, tiny_record):
    from PIL import Image

    ucsd = tiny_record["sources"]["ucsd-ai4h"]
    assert ucsd["jpeg_in_png"] >= 1 or TINY.ucsd_covid < 10
    formats = {(p.suffix, Image.open(p).format) for p in (tiny_synth / "ucsd-ai4h-covid-ct").rglob("*.*g")}
    assert (".png", "PNG") in formats and (".jpg", "JPEG") in formats
    split = tiny_synth / "ucsd-ai4h-covid-ct" / "Data-split" / "COVID" / "trainCT_COVID.txt"
    assert not split.read_text().endswith("\n")
    # MedSeg volumes are stored transposed (upright = fliplr(rot90(s, 3)) = s.T): the spine is posterior,
    # i.e. at the bottom rows of the upright slice, which is the last columns of the stored one
    image, affine = read_volume(tiny_synth / "medseg" / "rp_im" / "1.nii.gz")
    s = image[..., image.shape[-1] // 2]
    upright = np.fliplr(np.rot90(s, k=3))
    np.testing.assert_array_equal(upright, s.T)
    bone_rows = np.nonzero((upright > 500).any(axis=1))[0]
    assert bone_rows.mean() > upright.shape[0] / 2
    # the DICOM series reads upright as is (rows = anterior -> posterior)
    series_dir = next((tiny_synth / "lung-pet-ct-dx").glob("manifest-*/Lung-PET-CT-Dx/*/*/2.000000-5mm-*"))
    series = read_dicom_series(series_dir)
    assert series.array.min() >= -1024 and series.array.max() > 200
    bone_rows = np.nonzero((series.array[..., series.array.shape[-1] // 2] > 500).any(axis=1))[0]
    assert bone_rows.mean() > series.array.shape[0] / 2


def test_no_single_threshold_segments_lesions(tiny_synth):
    """Lesion HU overlaps vessels, chest wall and look-alikes: the best global threshold inside the lungs
    stays far from a perfect Dice."""
    hu, mask, lung = [], [], []
    for n in range(1, TINY.medseg_volumes + 1):
        hu.append(read_volume(tiny_synth / "medseg" / "rp_im" / f"{n}.nii.gz")[0].ravel())
        mask.append(read_volume(tiny_synth / "medseg" / "rp_msk" / f"{n}.nii.gz", dtype=np.int64)[0].ravel())
        lung.append(read_volume(tiny_synth / "medseg" / "rp_lung_msk" / f"{n}.nii.gz", dtype=np.int64)[0].ravel())
    hu, mask, lung = np.concatenate(hu), np.concatenate(mask) > 0, np.concatenate(lung) > 0
    hu, mask = hu[lung], mask[lung]
    best = 0.0
    for t in np.arange(-900, 100, 25):
        pred = hu > t
        best = max(best, 2 * np.sum(pred & mask) / (np.sum(pred) + np.sum(mask)))
    assert 0.1 < best < 0.85


def test_deterministic(tmp_path, tiny_synth, tiny_record):
    a = generate_synthetic(tmp_path / "a", seed=7, config=TINY)
    assert a["sources"] == tiny_record["sources"]
    names = sorted(p.name for p in (tiny_synth / "lung-pet-ct-dx" / "Annotation").rglob("*.xml"))
    assert sorted(p.name for p in (tmp_path / "a" / "lung-pet-ct-dx" / "Annotation").rglob("*.xml")) == names
    for rel in ("medseg/rp_im/1.nii.gz", "medseg/tr_mask.nii.gz"):
        np.testing.assert_array_equal(read_volume(tmp_path / "a" / rel)[0], read_volume(tiny_synth / rel)[0])
    b = generate_synthetic(tmp_path / "b", seed=8, config=TINY)
    assert b["sources"]["lung-pet-ct-dx"]["patients"] != a["sources"]["lung-pet-ct-dx"]["patients"]


def test_synth_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    rc, stdout, err = run_cli(capsys, "synth", out, "--seed", "1", "--size", "24", "--build")
    assert rc == 0, err
    assert (out / "manifests" / "merged.json").is_file() and "wrote synthetic data" in stdout
    rc, _, err = run_cli(capsys, "synth", out, "--seed", "1", "--size", "24")
    assert rc != 0 and len(err) == 1 and "--overwrite" in err[0]


@pytest.mark.slow
def test_default_size_is_enough_to_measure(tmp_path):
    """The default data set generates quickly and its test split holds enough labelled samples."""
    import time

    start = time.perf_counter()
    paths = ensure_synthetic(tmp_path / "synthetic", seed=0)
    assert time.perf_counter() - start < 60
    record = json.loads((tmp_path / "synthetic" / "synth.json").read_text())
    assert record["seconds"] < 30
    merged = load_manifest(paths["merged"])
    test = merged.split("test")
    lesion_slices = sum(len(e.get("lesion_slices", [])) for e in test)
    box_slices = sum(len({b["slice"] for b in e.get("boxes", [])}) for e in test)
    class_images = {c: sum(len(e.get("slices") or [0]) for e in test if e.get("class") == c) for c in CLASS_NAMES}
    assert lesion_slices >= 20, lesion_slices
    assert box_slices >= 10, box_slices
    assert sum(class_images.values()) >= 30 and all(class_images.values()), class_images
    for key in ("medseg", "ucsd-ai4h", "lung-pet-ct-dx", "merged"):
        assert load_manifest(paths[key]).counts() == record["sources"][key]["counts"]
    assert ensure_synthetic(tmp_path / "synthetic", seed=0) == paths  # reused, not regenerated
    assert SynthConfig.preset("large").size == 256
    medium, small = SynthConfig.preset("medium"), SynthConfig.preset("small")
    assert (medium.ucsd_covid, medium.ucsd_noncovid) == (240, 240)
    assert replace(medium, ucsd_covid=small.ucsd_covid, ucsd_noncovid=small.ucsd_noncovid) == small  # only UCSD grows
    with pytest.raises(DataError, match="another seed or scale"):
        ensure_synthetic(tmp_path / "synthetic", seed=0, scale="medium")  # never mixed with, or written over, small

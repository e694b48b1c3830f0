"""Bad input: ``ctmtl manifest check`` / ``build`` exit non-zero with one line per problem naming the file or
the entry, and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from ctmtl.constants import MANIFEST_FORMAT
from tests.data.conftest import assert_fails, run_cli


def _write_manifest(path: Path, entries: list[dict], **header) -> Path:
    data = {"format": MANIFEST_FORMAT, "name": "bad", "source": "folder", "classes": ["covid-19", "non-covid", "cancer"],
            "lesion_labels": {"0": "background", "1": "ground-glass", "2": "consolidation", "3": "pleural-effusion"},
            **header, "entries": entries}
    path.write_text(json.dumps(data, indent=1))
    return path


def _slice_entry(i: int, image: str, mask: str | None = None, **extra) -> dict:
    entry = {"id": f"s{i}", "kind": "slice", "image": image, "patient": f"p{i}", "split": "train", "tasks": ["reconstruction"]}
    if mask:
        entry.update(mask=mask, tasks=["segmentation", "reconstruction"])
    entry.update(extra)
    return entry


def _png(path: Path, array: np.ndarray, mode: str = "L") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path.name


def _volume_entry(tmp_path: Path, image_shape=(16, 16, 4), mask_shape=(16, 16, 4)) -> dict:
    nib.save(nib.Nifti1Image(np.full(image_shape, -800, np.int16), np.eye(4)), str(tmp_path / "im.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(mask_shape, np.uint8), np.eye(4)), str(tmp_path / "msk.nii.gz"))
    return {"id": "vol", "kind": "volume", "image": "im.nii.gz", "mask": "msk.nii.gz", "patient": "p", "split": "train",
            "slices": [0, 1, 2, 3], "lesion_slices": [], "tasks": ["segmentation", "reconstruction"]}


def _lung_manifest(capsys, copy_source, tmp_path):
    root = copy_source("lung-pet-ct-dx")
    rc, _, err = run_cli(capsys, "manifest", "build", "lung-pet-ct-dx", root, "-o", tmp_path / "lung.json")
    assert rc == 0, err
    return root, json.loads((tmp_path / "lung.json").read_text())


def test_missing_file(tmp_path, capsys):
    _png(tmp_path / "a.png", np.zeros((8, 8)))
    manifest = _write_manifest(tmp_path / "m.json", [_slice_entry(0, "a.png"), _slice_entry(1, "gone.png")])
    errors = assert_fails(capsys, ["manifest", "check", manifest], "entry 1 (id 's1')", str(tmp_path / "gone.png"))
    assert len(errors) == 1 and "not found" in errors[0]


def test_truncated_nifti(tmp_path, capsys):
    entry = _volume_entry(tmp_path, (40, 40, 30), (40, 40, 30))
    raw = (tmp_path / "im.nii.gz").read_bytes()
    (tmp_path / "im.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    manifest = _write_manifest(tmp_path / "m.json", [entry], source="medseg")
    errors = assert_fails(capsys, ["manifest", "check", manifest], "entry 0 (id 'vol')", "im.nii.gz")
    assert len(errors) == 1


def test_png_that_is_not_an_image(tmp_path, capsys, copy_source):
    (tmp_path / "fake.png").write_text("<html>403 Forbidden</html>")
    manifest = _write_manifest(tmp_path / "m.json", [_slice_entry(0, "fake.png")])
    assert_fails(capsys, ["manifest", "check", manifest], "entry 0 (id 's0')", "fake.png: not an image")
    # and the UCSD builder refuses it too
    root = copy_source("ucsd-ai4h-covid-ct")
    victim = next((root / "Images-processed" / "CT_COVID").glob("*.png"))
    victim.write_bytes(b"\x00" * 100)
    errors = assert_fails(capsys, ["manifest", "build", "ucsd-ai4h", root, "-o", tmp_path / "u.json"], f"{victim}: not an image")
    assert len(errors) == 1 and not (tmp_path / "u.json").exists()


def test_dicom_without_pixel_data(tmp_path, capsys, copy_source):
    root, data = _lung_manifest(capsys, copy_source, tmp_path)
    folder = tmp_path / data["entries"][0]["image"]
    victim = sorted(folder.glob("*.dcm"))[3]
    ds = pydicom.dcmread(victim)
    del ds.PixelData
    ds.save_as(victim)
    errors = assert_fails(capsys, ["manifest", "check", tmp_path / "lung.json"], "entry 0", f"{victim}: DICOM file has no pixel data")
    assert len(errors) == 1


def test_mask_shape_differs(tmp_path, capsys):
    manifest = _write_manifest(tmp_path / "m.json", [_volume_entry(tmp_path, (16, 16, 4), (16, 15, 4))], source="medseg")
    errors = assert_fails(capsys, ["manifest", "check", manifest], "entry 0 (id 'vol')", "msk.nii.gz: shape (16, 15, 4) does not match image")
    assert len(errors) == 1
    # 2D: the folder builder refuses it up front
    _png(tmp_path / "f" / "Imgs" / "0.png", np.zeros((10, 12)))
    _png(tmp_path / "f" / "GT" / "0.png", np.zeros((10, 11)))
    assert_fails(capsys, ["manifest", "build", "folder", tmp_path / "f", "-o", tmp_path / "f.json"], "GT/0.png: mask shape (10, 11)")


def test_mask_value_outside_labels(tmp_path, capsys):
    _png(tmp_path / "i.png", np.zeros((6, 6)))
    mask = np.zeros((6, 6))
    mask[2, 2], mask[3, 3] = 1, 7
    _png(tmp_path / "m.png", mask)
    manifest = _write_manifest(tmp_path / "m.json", [_slice_entry(0, "i.png", "m.png", lesion_slices=[0])])
    errors = assert_fails(capsys, ["manifest", "check", manifest], "entry 0 (id 's0')", "m.png: values [7] are not declared lesion labels")
    assert len(errors) == 1


def test_xml_box_outside_image(tmp_path, capsys, copy_source):
    root = copy_source("lung-pet-ct-dx")
    xml = sorted((root / "Annotation").rglob("*.xml"))[0]
    text = xml.read_text()
    start, end = text.index("<xmax>") + 6, text.index("</xmax>")
    xml.write_text(text[:start] + "9999" + text[end:])
    errors = assert_fails(capsys, ["manifest", "build", "lung-pet-ct-dx", root, "-o", tmp_path / "l.json"], f"{xml}:", "lies outside")
    assert len(errors) == 1
    # a manifest edited by hand: check catches it
    xml.write_text(text)
    _, data = _lung_manifest(capsys, lambda _: root, tmp_path)
    data["entries"][1]["boxes"][0]["box"][3] = 10_000
    (tmp_path / "lung.json").write_text(json.dumps(data))
    assert_fails(capsys, ["manifest", "check", tmp_path / "lung.json"], "entry 1", "box 0", "lies outside")


def test_xml_uid_in_no_series(tmp_path, capsys, copy_source):
    root = copy_source("lung-pet-ct-dx")
    src = sorted((root / "Annotation").rglob("*.xml"))[0]
    stray = src.parent / "1.2.826.0.1.3680043.8.498.999999999.xml"
    stray.write_text(src.read_text())
    errors = assert_fails(capsys, ["manifest", "build", "lung-pet-ct-dx", root, "-o", tmp_path / "l.json"],
                          f"{stray}: SOPInstanceUID 1.2.826.0.1.3680043.8.498.999999999 is in no CT series")
    assert len(errors) == 1
    rc, _, err = run_cli(capsys, "manifest", "build", "lung-pet-ct-dx", root, "-o", tmp_path / "l.json", "--skip-unmatched")
    assert rc == 0 and any("match no slice" in line for line in err)


def test_patient_in_two_splits(tmp_path, capsys):
    _png(tmp_path / "a.png", np.zeros((8, 8)))
    entries = [_slice_entry(0, "a.png", patient="P7"), _slice_entry(1, "a.png", patient="P7", split="test")]
    manifest = _write_manifest(tmp_path / "m.json", entries)
    errors = assert_fails(capsys, ["manifest", "check", manifest], str(manifest), "patient 'P7' is in 2 splits (train, test)")
    assert len(errors) == 1


@pytest.mark.parametrize("source", ["medseg", "ucsd-ai4h", "lung-pet-ct-dx", "folder"])
def test_empty_data_set_folder(tmp_path, capsys, source):
    empty = tmp_path / "empty"
    empty.mkdir()
    errors = assert_fails(capsys, ["manifest", "build", source, empty, "-o", tmp_path / "x.json"], str(empty))
    assert len(errors) == 1 and not (tmp_path / "x.json").exists()


def test_unknown_format_version(tmp_path, capsys):
    _png(tmp_path / "a.png", np.zeros((8, 8)))
    manifest = _write_manifest(tmp_path / "m.json", [_slice_entry(0, "a.png")], format="ctmtl-manifest/9")
    errors = assert_fails(capsys, ["manifest", "check", manifest], str(manifest), "unknown manifest format 'ctmtl-manifest/9'")
    assert len(errors) == 1


def test_several_problems_one_line_each(tmp_path, capsys):
    _png(tmp_path / "i.png", np.zeros((6, 6)))
    (tmp_path / "fake.png").write_text("nope")
    entries = [_slice_entry(0, "gone.png"), _slice_entry(1, "fake.png"), _slice_entry(2, "i.png", boxes=[{"box": [0, 0, 9, 3], "label": "lesion"}])]
    manifest = _write_manifest(tmp_path / "m.json", entries)
    errors = assert_fails(capsys, ["manifest", "check", manifest], "entry 0 (id 's0')", "entry 1 (id 's1')", "entry 2 (id 's2')")
    assert len(errors) == 3


def test_existing_manifest_is_not_overwritten(tmp_path, capsys):
    _png(tmp_path / "f" / "Imgs" / "0.png", np.zeros((8, 8)))
    out = tmp_path / "f.json"
    out.write_text("{}")
    assert_fails(capsys, ["manifest", "build", "folder", tmp_path / "f", "-o", out], f"manifest {out}: exists")
    assert out.read_text() == "{}"
    rc, _, err = run_cli(capsys, "manifest", "build", "folder", tmp_path / "f", "-o", out, "--overwrite")
    assert rc == 0, err

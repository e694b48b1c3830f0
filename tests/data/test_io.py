"""ctmtl.data.io: readers of NIfTI, DICOM series, 2D images and VOC XML, and their failure messages."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from ctmtl.data.io import (
    image_shape,
    read_dicom_series,
    read_image_2d,
    read_mask_2d,
    read_voc_xml,
    read_volume,
    scan_dicom_series,
    volume_header,
)
from ctmtl.errors import DataError
from tests.conftest import real_sample


def _nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def test_read_volume_roundtrip(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3) - 1000
    affine = np.diag([-0.7, -0.7, 5.0, 1.0])
    path = _nifti(tmp_path / "v.nii.gz", data, affine)
    array, aff = read_volume(path)
    assert array.dtype == np.float32 and array.shape == (4, 5, 3)
    np.testing.assert_array_equal(array, data)
    np.testing.assert_allclose(aff, affine)
    mask, _ = read_volume(path, dtype=np.int64)
    assert mask.dtype == np.int64
    assert volume_header(path)[0] == (4, 5, 3) == image_shape(path, "volume")


def test_read_volume_2d_and_4d_singleton(tmp_path):
    assert read_volume(_nifti(tmp_path / "a.nii", np.zeros((4, 5), np.float32)))[0].shape == (4, 5, 1)
    assert read_volume(_nifti(tmp_path / "b.nii", np.zeros((4, 5, 3, 1), np.float32)))[0].shape == (4, 5, 3)


def test_read_volume_missing_and_truncated(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    path = _nifti(tmp_path / "t.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 20)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert str(path) in str(err.value) and ("truncated" in str(err.value) or "not a readable" in str(err.value))


def _write_slice(path: Path, k: int, z: float, instance: int, series_uid: str, pixels: bool = True) -> str:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CTImageStorage, sop, ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = CTImageStorage, sop, series_uid, "1.2.3"
    ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "Lung_Dx-A0001", instance
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-10, -20, z], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.8], 2
    ds.Rows, ds.Columns = 6, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if pixels:
        ds.PixelData = np.full((6, 4), 1000 + k, np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return sop


def test_read_dicom_series_sorts_by_position(tmp_path):
    # instance numbers descend with position (as in Lung-PET-CT-Dx); file names follow the instance number
    uids = {}
    for k, z in enumerate([-30.0, -28.0, -26.0]):
        instance = 3 - k
        uids[k] = _write_slice(tmp_path / f"1-{instance:02d}.dcm", k, z, instance, "1.2.3.4")
    series = read_dicom_series(tmp_path)
    assert series.array.shape == (6, 4, 3) and series.array.dtype == np.float32
    np.testing.assert_allclose(series.array[0, 0], [1000 + k - 1024 for k in range(3)])  # HU, inferior first
    assert series.sop_uids == [uids[0], uids[1], uids[2]]
    assert series.spacing == (0.5, 0.8, 2.0)
    assert nib.aff2axcodes(series.affine) == ("P", "L", "S")
    np.testing.assert_allclose(series.affine[:3, 3], [10, 20, -30])
    assert scan_dicom_series(tmp_path).sop_uids == series.sop_uids
    assert image_shape(tmp_path, "dicom_series") == (6, 4, 3)


def test_dicom_mixed_series_and_missing_pixels(tmp_path):
    a, b = tmp_path / "mixed", tmp_path / "nopixels"
    a.mkdir(), b.mkdir()
    _write_slice(a / "1.dcm", 0, 0.0, 1, "1.2.3.4")
    _write_slice(a / "2.dcm", 1, 1.0, 2, "1.2.3.5")
    with pytest.raises(DataError, match=r"mixed series.*'1\.2\.3\.4', '1\.2\.3\.5'"):
        scan_dicom_series(a)
    _write_slice(b / "1.dcm", 0, 0.0, 1, "1.2.3.4")
    _write_slice(b / "2.dcm", 1, 1.0, 2, "1.2.3.4", pixels=False)
    scan_dicom_series(b)  # headers are fine
    with pytest.raises(DataError, match=r"2\.dcm: DICOM file has no pixel data"):
        read_dicom_series(b)
    (b / "3.dcm").write_text("not dicom")
    with pytest.raises(DataError, match=r"3\.dcm: not a DICOM file"):
        scan_dicom_series(b)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA"])
def test_read_image_2d_modes(tmp_path, mode):
    grey = (np.arange(12 * 7).reshape(12, 7) * 3 % 256).astype(np.uint8)
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 100)
    else:
        img = Image.fromarray(grey).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    array = read_image_2d(path)
    assert array.shape == (12, 7) and array.dtype == np.float32
    if mode in ("L", "RGB", "RGBA", "LA"):
        np.testing.assert_allclose(array, grey, atol=1)
    assert image_shape(path, "slice") == (12, 7)


def test_read_image_2d_decodes_by_content(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    path = tmp_path / "jpeg_inside.png"
    Image.fromarray(grey).convert("RGB").save(path, format="JPEG", quality=95)
    assert Image.open(path).format == "JPEG"
    array = read_image_2d(path)
    assert array.shape == (16, 32)
    assert np.abs(array - grey).mean() < 4
    bad = tmp_path / "text.png"
    bad.write_text("this is not an image")
    with pytest.raises(DataError, match="text.png: not an image"):
        read_image_2d(bad)
    with pytest.raises(DataError, match="not an image"):
        image_shape(bad, "slice")


def test_read_mask_2d_palette_indices_not_colours(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(labels, "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "m.png")
    mask = read_mask_2d(tmp_path / "m.png")
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels)
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour, "RGB").save(tmp_path / "c.png")
    with pytest.raises(DataError, match="colour mask"):
        read_mask_2d(tmp_path / "c.png")


def test_read_voc_xml(tmp_path):
    path = tmp_path / "1.2.3.xml"
    path.write_text(
        "<annotation><size><width>64</width><height>48</height><depth>1</depth></size>"
        "<object><name>A</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>G</name><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>40</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    ann = read_voc_xml(path)
    assert ann.size == (64, 48)
    assert [(o.name, o.box) for o in ann.objects] == [("A", (1, 2, 10, 20)), ("G", (30, 5, 40, 9))]
    path.write_text("<annotation><object><name>A</name><bndbox><xmin>x</xmin></bndbox></object></annotation>")
    with pytest.raises(DataError, match="1.2.3.xml: <xmin> is 'x'"):
        read_voc_xml(path)


def test_real_dicom_series():
    root = real_sample("lung-pet-ct-dx")
    folder = next(root.glob("manifest-*/Lung-PET-CT-Dx/*/*/*"))
    series = read_dicom_series(folder)
    assert series.array.shape == (512, 512, 64)
    assert series.array.min() == pytest.approx(-1024)  # uint16 + RescaleIntercept -1024
    assert series.positions == sorted(series.positions)
    assert series.files[0].name == "1-64.dcm"  # instance 64 is the lowest slice
    assert isinstance(pydicom.dcmread(series.files[0], stop_before_pixels=True).SOPInstanceUID, str)

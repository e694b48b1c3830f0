"""Tiny on-disk fixtures for the transform and pipeline tests: NIfTI volumes, a DICOM series, 8-bit images,
and manifests pointing at them (32-64 px, a few slices; written in milliseconds).

Imported by ``tests/transforms/conftest.py`` and ``tests/pipeline/conftest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctmtl.constants import CLASS_NAMES, MANIFEST_FORMAT

AFFINE = np.array([[0.8, 0, 0, -20.0], [0, 0.7, 0, 15.0], [0, 0, 5.0, -100.0], [0, 0, 0, 1]])


def lesion_volume(shape=(48, 40, 6), seed=0, lesion_slices=(2, 3, 4)) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (air -1000 outside a soft-tissue body, lungs ~ -850) and a mask with blobs of labels 1, 2, 3."""
    rng = np.random.default_rng(seed)
    h, w, d = shape
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    lungs = (((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 3) / (0.12 * w)) ** 2 < 1) | (
        ((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - 2 * w / 3) / (0.12 * w)) ** 2 < 1
    )
    image = np.full(shape, -1000.0, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    for k in range(d):
        sl = np.where(body, 40.0, -1000.0)
        sl = np.where(lungs, -850.0, sl)
        image[..., k] = sl + rng.normal(0, 10, (h, w))
    for k in (k for k in lesion_slices if k < d):
        # ground-glass blob (1), consolidation blob (2), effusion strip (3)
        m = np.zeros((h, w), np.uint8)
        m[((yy - h * 0.4) / 5) ** 2 + ((xx - w * 0.3) / 4) ** 2 < 1] = 1
        m[((yy - h * 0.6) / 4) ** 2 + ((xx - w * 0.7) / 3) ** 2 < 1] = 2
        m[int(h * 0.78) : int(h * 0.78) + 3, int(w * 0.4) : int(w * 0.6)] = 3
        mask[..., k] = m
        image[..., k] = np.where(m == 1, -500.0, np.where(m == 2, 20.0, np.where(m == 3, 10.0, image[..., k])))
    return image, mask


def write_nifti(path: Path, array: np.ndarray, affine=AFFINE, dtype=None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = array.astype(dtype) if dtype is not None else array
    nib.save(nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64)), str(path))
    return path


def write_volume_pair(folder: Path, name="vol", shape=(48, 40, 6), seed=0, transpose=False) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Write ``<name>_im.nii.gz`` (int16 HU) and ``<name>_mask.nii.gz``; ``transpose`` stores slices as MedSeg does."""
    image, mask = lesion_volume(shape, seed)
    if transpose:
        image, mask = image.transpose(1, 0, 2), mask.transpose(1, 0, 2)
    im = write_nifti(folder / f"{name}_im.nii.gz", np.rint(image), dtype=np.int16)
    mk = write_nifti(folder / f"{name}_mask.nii.gz", mask, dtype=np.uint8)
    return im, mk, image, mask


def write_dicom_series(folder: Path, shape=(40, 48, 5), seed=0, intercept=-1024.0) -> list[str]:
    """A CT series (uint16, RescaleIntercept -1024), InstanceNumber descending with position; returns the
    SOPInstanceUIDs in ascending position order."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    image, _ = lesion_volume(shape, seed, lesion_slices=())
    h, w, d = shape
    study, series = generate_uid(entropy_srcs=[f"study{seed}"]), generate_uid(entropy_srcs=[f"series{seed}"])
    uids = []
    for k in range(d):
        uid = generate_uid(entropy_srcs=[f"sop{seed}-{k}"])
        uids.append(uid)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.Modality = f"P{seed}", "CT"
        ds.Rows, ds.Columns = h, w
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -120.0, -50.0 + 5.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 5.0
        ds.InstanceNumber = d - k
        ds.PixelData = np.clip(np.rint(image[..., k] - intercept), 0, 65535).astype(np.uint16).tobytes()
        pydicom.dcmwrite(str(folder / f"1-{d - k:02d}.dcm"), ds, enforce_file_format=True)
    return uids


def write_png(path: Path, size=(40, 56), mode="L", seed=0, as_jpeg=False) -> Path:
    """An 8-bit 'screenshot' (dark background, bright body, darker lungs) in a PIL colour mode."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    g = np.where(((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1, 180, 10).astype(np.float64)
    g[((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 < 1] = 60
    g = np.clip(g + rng.normal(0, 5, g.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(g, "L")
    if mode != "L":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_jpeg:  # JPEG data whatever the file name says (UCSD has such .png files)
        img.convert("RGB" if mode == "RGBA" else mode).save(path, format="JPEG")
    else:
        img.save(path)
    return path


def write_palette_mask(path: Path, size=(40, 56)) -> Path:
    """A palette PNG mask with indices 0, 1, 2 (as the MedSeg-derived GT files)."""
    from PIL import Image

    h, w = size
    m = np.zeros((h, w), np.uint8)
    m[8:16, 10:20] = 1
    m[22:30, 30:44] = 2
    img = Image.fromarray(m, "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_manifest(path: Path, entries: list[dict], source="synthetic", transforms: str | None = None, name="tiny") -> Path:
    data = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": source,
        "classes": list(CLASS_NAMES),
        "lesion_labels": {"0": "background", "1": "ground-glass", "2": "consolidation", "3": "pleural-effusion"},
        "entries": entries,
    }
    if transforms:
        data["transforms"] = transforms
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def make_sources(root: Path) -> dict[str, Path]:
    """Three tiny sources (NIfTI volume with mask, DICOM series with boxes, 8-bit slices with a class) and their
    manifests, plus a merged manifest whose entries name their own chains. Returns name -> manifest path."""
    root = Path(root)
    # volume source
    vol = root / "vol"
    write_volume_pair(vol, "a", seed=0)
    write_volume_pair(vol, "b", seed=1)
    vol_entries = [
        {"id": "a", "kind": "volume", "image": "a_im.nii.gz", "mask": "a_mask.nii.gz", "patient": "pa", "split": "train",
         "slices": [1, 2, 3, 4], "lesion_slices": [2, 3, 4], "tasks": ["segmentation", "reconstruction", "detection"]},
        {"id": "b", "kind": "volume", "image": "b_im.nii.gz", "mask": "b_mask.nii.gz", "patient": "pb", "split": "val",
         "tasks": ["segmentation", "reconstruction"]},
    ]
    manifests = {"volume": write_manifest(vol / "manifest.json", vol_entries, transforms="ct_volume_hu", name="tiny-vol")}
    # DICOM source
    dcm = root / "dcm"
    uids = write_dicom_series(dcm / "series1", seed=3)
    boxes = [
        {"slice": 1, "box": [10, 12, 22, 20], "label": "cancer", "sop_uid": uids[1]},
        {"slice": 3, "box": [25, 8, 40, 18], "label": "cancer", "sop_uid": uids[3]},
        {"slice": 3, "box": [5, 25, 15, 35], "label": "cancer", "sop_uid": uids[3]},
    ]
    dcm_entries = [
        {"id": "s1", "kind": "dicom_series", "image": "series1", "class": "cancer", "subtype": "A", "patient": "pd", "split": "train",
         "slices": [1, 2, 3], "slice_uids": uids, "boxes": boxes, "tasks": ["classification", "reconstruction", "detection"]},
    ]
    manifests["dicom"] = write_manifest(dcm / "manifest.json", dcm_entries, source="lung-pet-ct-dx", transforms="dicom_series", name="tiny-dcm")
    # 8-bit slices
    sl = root / "png"
    write_png(sl / "c1.png", (40, 56), "L", seed=4)
    write_png(sl / "c2.png", (52, 36), "RGB", seed=5)
    write_png(sl / "n1.png", (44, 44), "RGBA", seed=6)
    write_png(sl / "n2.png", (48, 40), "RGB", seed=7, as_jpeg=True)  # a .png holding JPEG data
    write_palette_mask(sl / "c1_mask.png", (40, 56))
    sl_entries = [
        {"id": "c1", "kind": "slice", "image": "c1.png", "mask": "c1_mask.png", "class": "covid-19", "patient": "p1", "split": "train",
         "tasks": ["classification", "segmentation", "reconstruction"]},
        {"id": "c2", "kind": "slice", "image": "c2.png", "class": "covid-19", "patient": "p2", "split": "train",
         "tasks": ["classification", "reconstruction"]},
        {"id": "n1", "kind": "slice", "image": "n1.png", "class": "non-covid", "patient": "p3", "split": "train",
         "tasks": ["classification", "reconstruction"]},
        {"id": "n2", "kind": "slice", "image": "n2.png", "class": "non-covid", "patient": "p4", "split": "test",
         "tasks": ["classification", "reconstruction"]},
    ]
    manifests["slice"] = write_manifest(sl / "manifest.json", sl_entries, source="ucsd-ai4h", transforms="slice_8bit", name="tiny-png")
    # merged: paths relative to root, each entry with its own chain
    merged = []
    for key, folder, entries, chain in (("volume", "vol", vol_entries, "ct_volume_hu"), ("dicom", "dcm", dcm_entries, "dicom_series"),
                                         ("slice", "png", sl_entries, "slice_8bit")):
        for e in entries:
            e = dict(e, id=f"{key}-{e['id']}", image=f"{folder}/{e['image']}", transforms=chain, dataset=key, split="train")
            if "mask" in e:
                e["mask"] = f"{folder}/{e['mask']}"
            merged.append(e)
    manifests["merged"] = write_manifest(root / "merged.json", merged, source="merged", name="tiny-merged")
    return manifests

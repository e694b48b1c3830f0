"""MedSeg COVID-19 CT segmentation (medicalsegmentation.com): NIfTI volumes with lesion masks.

Layout (any subset; ``.nii`` or ``.nii.gz``)::

    ROOT/tr_im.nii.gz  ROOT/tr_mask.nii.gz     100 axial slices of ~40 SIRM patients, stacked; labels 1 2 3
    ROOT/val_im.nii.gz                         10 slices, no mask (the challenge's test images)
    ROOT/rp_im/<N>.nii.gz  ROOT/rp_msk/<N>.nii.gz  [ROOT/rp_lung_msk/<N>.nii.gz]   one Radiopaedia volume per N

Entries (one per volume; ``tr_im`` is cut in three, see below):

* ``rp_im/<N>``: patient ``medseg-rp<N>``, all slices, ``lesion_slices`` from the mask, tasks segmentation,
  reconstruction, detection (boxes derived from the mask by the chain); the lung mask is recorded as
  ``lung_mask``. Patients are split with ``split_patients`` (seeded).
* ``tr_im``: the stack has no patient ids, so it is cut into contiguous blocks of slices, train / val / test
  (``block_splits``), one entry each (``tr_im-train`` ...) with the pseudo-patient ``medseg-tr_im-<split>``;
  neighbouring slices often come from one patient, so blocks leak less than a shuffle would.
* ``val_im``: no mask: reconstruction only, in train (unlabelled data).

No entry has a class unless ``--class covid-19`` is given: every MedSeg patient has COVID-19, but that
patient-level diagnosis does not say which slices show it.

Chain: ``medseg_volume`` (``transforms/medseg_volume.json``), which undoes the stored rotation and checks
the intensity range on load. Orientation: the slices are stored "rotated"; public converters show them
upright with ``np.fliplr(np.rot90(s, k=3))``, which equals ``s.T``: the NIfTI i axis is the image column.
Nothing about it is recorded in the manifest. Intensities: the data set does not document whether they are
Hounsfield units; the builder reads each image and warns when its 0.5-99.5 percentile range lies inside
[0, 255] (8-bit grey levels), which the chain's ``"intensity": "auto"`` then handles.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ctmtl.constants import LESION_LABELS
from ctmtl.data.io import NIFTI_SUFFIXES, read_volume
from ctmtl.data.sources.common import (
    BuildOptions,
    BuildResult,
    block_splits,
    label_problems,
    lesion_slice_indices,
    manifest_header,
    ordered_tasks,
    split_patients,
)
from ctmtl.errors import CtmtlError, DataError

__all__ = ["build_medseg", "find_nifti", "looks_8bit"]

#: default chain of MedSeg volumes (``transforms/medseg_volume.json``: ct_volume_hu + MedSeg's slice rotation)
CHAIN = "medseg_volume"


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.nii.gz`` or ``folder/<stem>.nii``, whichever exists."""
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def looks_8bit(image: np.ndarray) -> bool:
    """True when a CT volume's intensities look like 0-255 grey levels rather than Hounsfield units
    (0.5-99.5 percentiles inside [0, 255]; HU CT has air near -1000)."""
    lo, hi = np.percentile(image[:: max(1, image.shape[0] // 128), :: max(1, image.shape[1] // 128)], [0.5, 99.5])
    return bool(lo >= 0.0 and hi <= 255.0)


def _natural_key(path: Path):
    stem = _nifti_stem(path)
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def build_medseg(root: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build a manifest of a MedSeg download (see the module docstring for the entries and splits).

    Args:
        root: folder holding ``tr_im.nii.gz`` ... and/or ``rp_im/``.
        options: split seed and fractions, name, ``class_name``.

    Returns:
        a :class:`BuildResult`; paths are absolute.

    Raises:
        DataError: nothing of MedSeg's layout under ``root``; a volume that does not read; a mask whose shape
            or affine differs from its image, or with values outside labels 0-3 (one line per problem).
    """
    options = options or BuildOptions()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: MedSeg folder not found")
    manifest = manifest_header(
        options.name or "medseg",
        "medseg",
        transforms=CHAIN,
        created_by=options.created_by,
        description="MedSeg COVID-19 CT segmentation (medicalsegmentation.com); lesion labels 1 ground-glass, 2 consolidation, 3 pleural effusion.",
        lesion_labels=True,
    )
    result = BuildResult(manifest)
    problems: list[str] = []

    # (id, image, mask, lung mask, patient or None for tr_im)
    volumes: list[tuple[str, Path, Path | None, Path | None, str | None]] = []
    tr_im, tr_mask, val_im = find_nifti(root, "tr_im"), find_nifti(root, "tr_mask"), find_nifti(root, "val_im")
    if tr_im is not None:
        if tr_mask is None:
            result.warnings.append(f"{root}: tr_im has no tr_mask.nii.gz beside it; its slices serve reconstruction only")
        volumes.append(("tr_im", tr_im, tr_mask, None, None))
    elif tr_mask is not None:
        problems.append(f"{tr_mask}: mask without its image tr_im.nii.gz")
    if val_im is not None:
        volumes.append(("val_im", val_im, None, None, "medseg-val_im"))
    rp_dir = root / "rp_im"
    if rp_dir.is_dir():
        for image in sorted((p for p in rp_dir.iterdir() if p.name.endswith(NIFTI_SUFFIXES)), key=_natural_key):
            stem = _nifti_stem(image)
            mask = find_nifti(root / "rp_msk", stem)
            if mask is None:
                result.warnings.append(f"{image}: no rp_msk/{stem}.nii.gz; the volume serves reconstruction only")
            lung = find_nifti(root / "rp_lung_msk", stem)
            volumes.append((f"rp_im/{stem}", image, mask, lung, f"medseg-rp{stem}"))
    if not volumes:
        raise DataError(f"{root}: no MedSeg volumes (expected tr_im.nii.gz, val_im.nii.gz or rp_im/<N>.nii.gz)")

    patient_split = split_patients(
        [p for (vid, *_r, p) in volumes if p is not None and vid != "val_im"],
        options.split_seed,
        options.val_fraction,
        options.test_fraction,
    )
    declared = list(LESION_LABELS)
    for vid, image_path, mask_path, lung_path, patient in volumes:
        try:
            image, affine = read_volume(image_path)
            mask = None
            if mask_path is not None:
                mask, mask_affine = read_volume(mask_path, dtype=np.int32)
                if mask.shape != image.shape:
                    raise DataError(f"{mask_path}: mask shape {mask.shape} does not match image {image_path.name} {image.shape}")
                if not np.allclose(mask_affine, affine, atol=1e-3):
                    raise DataError(f"{mask_path}: mask affine differs from the affine of image {image_path.name}")
                bad = label_problems(np.unique(mask), declared)
                if bad:
                    raise DataError(f"{mask_path}: mask values {bad} are not lesion labels {declared}")
            if lung_path is not None:
                lung, _ = read_volume(lung_path, dtype=np.int32)
                if lung.shape != image.shape:
                    raise DataError(f"{lung_path}: lung mask shape {lung.shape} does not match image {image_path.name} {image.shape}")
        except CtmtlError as err:
            problems.extend(err.problems)
            continue
        if looks_8bit(image):
            result.warnings.append(f"{image_path}: intensities lie in 0-255, not Hounsfield units (the chain's intensity 'auto' handles it)")
        depth = image.shape[-1]
        if patient is None:  # tr_im: blocks of slices
            parts = [(f"{vid}-{s}", s, list(r), f"medseg-{vid}-{s}") for s, r in block_splits(depth, options.val_fraction, options.test_fraction).items() if len(r)]
        else:
            split = "train" if vid == "val_im" else patient_split[patient]
            parts = [(vid, split, list(range(depth)), patient)]
        for entry_id, split, slices, pat in parts:
            entry: dict = {"id": entry_id, "kind": "volume", "image": str(image_path.resolve())}
            tasks = {"reconstruction"}
            if mask is not None:
                entry["mask"] = str(mask_path.resolve())
                tasks |= {"segmentation", "detection"}
            if lung_path is not None:
                entry["lung_mask"] = str(lung_path.resolve())
            if options.class_name:
                entry["class"] = options.class_name
                tasks.add("classification")
            entry.update(patient=pat, split=split, slices=slices)
            if mask is not None:
                entry["lesion_slices"] = lesion_slice_indices(mask, slices)
            entry["tasks"] = ordered_tasks(tasks)
            manifest["entries"].append(entry)
    if problems:
        raise DataError(problems)
    return result

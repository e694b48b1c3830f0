"""``ctmtl manifest check``: open every file a manifest names and check it against the manifest.

:func:`ctmtl.data.manifest.load_manifest` has already checked what shows without opening files (schema,
unique ids, declared classes, tasks backed by labels, degenerate boxes, no patient in two splits). This
module adds, per entry:

* the image reads, fully decoded (``deep=True``) or from its header (``deep=False``);
* the mask (and ``lung_mask``) has the image's shape (and, for volumes, its affine);
* mask values are declared lesion labels, and ``lesion_slices`` are exactly the listed slices where the mask
  is non-zero;
* ``slices`` lie inside the volume; a DICOM series' SOPInstanceUIDs, in position order, equal ``slice_uids``
  and each box's ``sop_uid`` is the UID of its slice;
* boxes lie inside their slice (``0 <= x1 < x2 <= W``, ``0 <= y1 < y2 <= H``; x = column, y = row).

Every problem is one line naming the manifest and the entry (and the file, when a file is at fault).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmtl.constants import LESION_LABELS, SPLITS, TASKS
from ctmtl.data.io import (
    image_shape,
    read_dicom_series,
    read_image_2d,
    read_mask_2d,
    read_volume,
    scan_dicom_series,
    volume_header,
)
from ctmtl.data.manifest import Manifest, entry_label, load_manifest
from ctmtl.errors import CtmtlError

__all__ = ["CheckReport", "check_manifest", "check_entry", "format_counts"]


@dataclass
class CheckReport:
    """Result of :func:`check_manifest`.

    Attributes:
        manifest: the loaded manifest.
        problems: one line per problem (empty: the manifest is sound).
        counts: :meth:`Manifest.counts` (entries, and per split slices, lesion slices, boxes, patients; classes;
            tasks).
        shapes: image shape per entry id, as read.
    """

    manifest: Manifest
    problems: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _declared_labels(manifest: Manifest) -> list[int]:
    labels = manifest.data.get("lesion_labels")
    return sorted(int(k) for k in labels) if labels else sorted(LESION_LABELS)


def _check_mask_values(mask: np.ndarray, declared: list[int], path: Path) -> list[str]:
    bad = sorted(set(np.unique(mask).tolist()) - set(declared))
    return [f"mask {path}: values {bad} are not declared lesion labels {declared}"] if bad else []


def _check_boxes(entry: dict, height: int, width: int) -> list[str]:
    problems = []
    for j, b in enumerate(entry.get("boxes", [])):
        x1, y1, x2, y2 = b["box"]
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            where = f" ({b['annotation']})" if "annotation" in b else ""
            problems.append(f"box {j} {b['box']} on slice {b.get('slice', 0)} lies outside the {width}x{height} image (W x H){where}")
    return problems


def _check_lesion_slices(entry: dict, mask: np.ndarray) -> list[str]:
    if "lesion_slices" not in entry:
        return []
    if mask.ndim == 2:
        actual = [0] if np.any(mask) else []
    else:
        slices = entry.get("slices", range(mask.shape[-1]))
        nonzero = set(np.flatnonzero(np.any(mask.reshape(-1, mask.shape[-1]) != 0, axis=0)).tolist())
        actual = [k for k in slices if k in nonzero]
    recorded = sorted(entry["lesion_slices"])
    if recorded != sorted(actual):
        return [f"lesion_slices {recorded} do not match the mask, which is non-zero on slices {sorted(actual)}"]
    return []


def _check_slices(entry: dict, depth: int) -> list[str]:
    out = [k for k in entry.get("slices", []) if k >= depth]
    return [f"slices {out} are beyond the {depth} slices of the image"] if out else []


def check_entry(manifest: Manifest, entry: dict, deep: bool = True) -> tuple[list[str], tuple[int, ...] | None]:
    """Open one entry's files; return its problems (without the manifest/entry prefix) and the image shape."""
    image = manifest.resolve(entry["image"])
    declared = _declared_labels(manifest)
    problems: list[str] = []
    kind = entry["kind"]
    if kind == "volume":
        if deep:
            array, affine = read_volume(image)
            shape = array.shape
        else:
            shape, affine = volume_header(image)
        problems += _check_slices(entry, shape[-1])
        for key in ("mask", "lung_mask"):
            if key not in entry:
                continue
            path = manifest.resolve(entry[key])
            if deep:
                mask, mask_affine = read_volume(path, dtype=np.int32)
                mask_shape = mask.shape
            else:
                mask_shape, mask_affine = volume_header(path)
            if mask_shape != shape:
                problems.append(f"{key} {path}: shape {tuple(mask_shape)} does not match image {image.name} {tuple(shape)}")
                continue
            if not np.allclose(mask_affine, affine, atol=1e-3):
                problems.append(f"{key} {path}: affine differs from the image's ({image.name})")
            if deep and key == "mask":
                problems += _check_mask_values(mask, declared, path)
                problems += _check_lesion_slices(entry, mask)
        problems += _check_boxes(entry, shape[0], shape[1])
    elif kind == "dicom_series":
        series = read_dicom_series(image) if deep else scan_dicom_series(image)
        shape = series.shape
        problems += _check_slices(entry, shape[-1])
        if "slice_uids" in entry and entry["slice_uids"] != series.sop_uids:
            recorded = entry["slice_uids"]
            if len(recorded) != len(series.sop_uids):
                problems.append(f"series {image}: {len(series.sop_uids)} slices on disk, slice_uids lists {len(recorded)}")
            else:
                k = next(i for i, (a, b) in enumerate(zip(recorded, series.sop_uids)) if a != b)
                problems.append(f"series {image}: slice {k} is SOPInstanceUID {series.sop_uids[k]} on disk, {recorded[k]} in slice_uids")
        uids = series.sop_uids
        for j, b in enumerate(entry.get("boxes", [])):
            k = b.get("slice", 0)
            if "sop_uid" in b and k < len(uids) and uids[k] != b["sop_uid"]:
                problems.append(f"box {j}: sop_uid {b['sop_uid']} is not slice {k} of {image} (that is {uids[k]})")
        problems += _check_boxes(entry, shape[0], shape[1])
    elif kind == "slice":
        shape = read_image_2d(image).shape if deep else image_shape(image, "slice")
        if "mask" in entry:
            path = manifest.resolve(entry["mask"])
            mask = read_mask_2d(path)
            if mask.shape != tuple(shape):
                problems.append(f"mask {path}: shape {mask.shape} does not match image {image.name} {tuple(shape)}")
            else:
                problems += _check_mask_values(mask, declared, path)
                problems += _check_lesion_slices(entry, mask)
        problems += _check_boxes(entry, shape[0], shape[1])
    else:  # the schema rules this out
        raise AssertionError(kind)
    return problems, tuple(int(s) for s in shape)


def check_manifest(manifest: Manifest | str | Path, deep: bool = True) -> CheckReport:
    """Open every file of a manifest and collect every problem (one line each).

    Args:
        manifest: a loaded manifest or its path.
        deep: decode every image (catches truncated data); ``False`` reads headers only.

    Raises:
        ManifestError: the manifest itself does not load (missing, not JSON, structurally unsound); each
            structural problem is one line.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    from ctmtl.data.chains import check_manifest_chains

    report = CheckReport(manifest=manifest, counts=manifest.counts())
    report.problems += check_manifest_chains(manifest)  # every chain an entry names exists and parses
    where = f"manifest {manifest.path}"
    for i, entry in enumerate(manifest.entries):
        name = f"{where}, {entry_label(i, entry)}"
        try:
            problems, shape = check_entry(manifest, entry, deep=deep)
        except CtmtlError as err:
            problems, shape = err.problems, None
        report.problems += [f"{name}: {p}" for p in problems]
        if shape is not None:
            report.shapes[entry["id"]] = shape
    return report


def format_counts(counts: dict) -> str:
    """A small table of :meth:`Manifest.counts` for the terminal."""
    cols = ("entries", "slices", "lesion_slices", "boxes", "patients")
    lines = ["split  " + "  ".join(f"{c:>13}" for c in cols)]
    for split in SPLITS:
        row = counts["splits"][split]
        lines.append(f"{split:<6} " + "  ".join(f"{row[c]:>13}" for c in cols))
    classes = ", ".join(f"{k} {v}" for k, v in counts["classes"].items()) or "none"
    tasks = ", ".join(f"{t} {counts['tasks'][t]}" for t in TASKS)
    lines.append(f"classes (entries): {classes}")
    lines.append(f"tasks (entries):   {tasks}")
    return "\n".join(lines)

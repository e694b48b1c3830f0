"""TCIA Lung-PET-CT-Dx (DOI 10.7937/TCIA.2020.NNC20461): CT series with PASCAL-VOC tumour boxes.

Layouts (both may sit under one ROOT; series are found by walking and identified by UID, not folder name)::

    ROOT/manifest-<n>/metadata.csv
    ROOT/manifest-<n>/Lung-PET-CT-Dx/Lung_Dx-<ID>/<date>-NA-<study>-<n>/<n>.000000-<series>-<n>/1-01.dcm   (NBIA)
    ROOT/Lung_Dx-<ID>/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm                                        (older)
    ROOT/Annotation/<ID>/<SOPInstanceUID>.xml       one VOC file per annotated slice; several <object>s

Folder names may hold double spaces (``2.000000-ThoraxRoutine  8.0.0  B70f-62919``); they are kept verbatim.

Join: every XML file stem is a SOPInstanceUID; the builder reads the headers of every CT series
(``scan_dicom_series``: slices sorted along the normal) and maps each UID to (series, slice index). A
study's annotations may fall in two series; each annotated series becomes its own entry.

Entries: one per CT series that holds at least one annotation (series without any, PET series and other
modalities are left out: an unannotated slice is not known to be tumour-free). ``slices`` are the annotated
slice indices, ``slice_uids`` every slice's SOPInstanceUID, ``boxes`` one per ``<object>``:
``{"slice": k, "box": [xmin, ymin, xmax, ymax], "label": "cancer", "subtype": <name>, "sop_uid": ...,
"annotation": <xml path>}`` with x = column and y = row of the slice as read (DICOM rows x columns).
Class ``cancer`` with the histology letter of the patient id as ``subtype`` (A adenocarcinoma, B small-cell,
E large-cell, G squamous). Tasks: classification, detection, reconstruction. Split by patient, seeded.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from pathlib import Path

from ctmtl.constants import LUNG_DX_SUBTYPES
from ctmtl.data.io import DicomSeries, dicom_files, read_dicom_header, read_voc_xml, scan_dicom_series
from ctmtl.data.sources.common import BuildOptions, BuildResult, manifest_header, ordered_tasks, split_patients
from ctmtl.errors import CtmtlError, DataError

__all__ = ["build_lung_dx", "find_series_folders", "find_annotation_root", "patient_code", "read_nbia_metadata"]

_PATIENT = re.compile(r"^(?:Lung_Dx-)?([A-Za-z]\d+)$")


def patient_code(patient_id: str) -> str:
    """``Lung_Dx-A0001`` -> ``A0001`` (other ids are returned stripped)."""
    match = _PATIENT.match(patient_id.strip())
    return match.group(1) if match else patient_id.strip()


def find_series_folders(root: Path, skip: Path | None = None) -> list[Path]:
    """Every folder under ``root`` that directly holds ``*.dcm`` files (sorted; ``skip`` excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and here == skip:
            dirnames[:] = []
            continue
        dirnames.sort()
        if any(name.lower().endswith(".dcm") for name in filenames):
            found.append(here)
    return found


def find_annotation_root(root: Path) -> Path | None:
    """``ROOT/Annotation`` (or one level down, e.g. beside ``manifest-*``)."""
    for candidate in [root / "Annotation", *sorted(root.glob("*/Annotation"))]:
        if candidate.is_dir():
            return candidate
    return None


def read_nbia_metadata(root: Path) -> dict[str, dict]:
    """``SeriesInstanceUID -> row`` of every ``manifest-*/metadata.csv`` under ``root`` (NBIA download), with
    ``"folder"`` the series folder it names."""
    rows = {}
    for csv_path in sorted(root.glob("**/metadata.csv")):
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                uid = (row.get("Series UID") or "").strip()
                location = (row.get("File Location") or "").strip()
                if uid:
                    row = dict(row, folder=str((csv_path.parent / location).resolve()) if location else "")
                    rows[uid] = row
    return rows


def _series_modality(folder: Path) -> str:
    return str(read_dicom_header(dicom_files(folder)[0], stop_before_pixels=True).get("Modality", ""))


def build_lung_dx(root: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build a manifest of a Lung-PET-CT-Dx download (see the module docstring).

    Raises:
        DataError: no series or no annotation folder; a series that does not scan (mixed series...); an XML
            that does not parse; an XML whose SOPInstanceUID is in no series (unless ``skip_unmatched``); a box
            outside its slice or degenerate (one line per problem, naming the XML file).
    """
    options = options or BuildOptions()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Lung-PET-CT-Dx folder not found")
    annotation_root = find_annotation_root(root)
    folders = find_series_folders(root, skip=annotation_root)
    if not folders:
        raise DataError(f"{root}: no DICOM series (expected manifest-*/Lung-PET-CT-Dx/Lung_Dx-<ID>/<study>/<series>/*.dcm)")
    if annotation_root is None:
        raise DataError(f"{root}: no Annotation/ folder (expected Annotation/<ID>/<SOPInstanceUID>.xml)")
    manifest = manifest_header(
        options.name or "lung-pet-ct-dx",
        "lung-pet-ct-dx",
        transforms="dicom_series",
        created_by=options.created_by,
        description="TCIA Lung-PET-CT-Dx (CC BY 4.0): CT series with PASCAL-VOC tumour boxes joined by SOPInstanceUID.",
    )
    result = BuildResult(manifest)
    problems: list[str] = []

    metadata = read_nbia_metadata(root)
    series_list: list[DicomSeries] = []
    uid_index: dict[str, tuple[int, int]] = {}  # SOPInstanceUID -> (series number in series_list, slice)
    seen_series: dict[str, Path] = {}
    skipped_modalities: dict[str, int] = defaultdict(int)
    for folder in folders:
        try:
            modality = _series_modality(folder)
            if modality and modality != "CT":
                skipped_modalities[modality] += 1
                continue
            series = scan_dicom_series(folder)
        except CtmtlError as err:
            problems.extend(err.problems)
            continue
        if series.series_uid in seen_series:
            problems.append(f"{folder}: series {series.series_uid} is also in {seen_series[series.series_uid]}")
            continue
        seen_series[series.series_uid] = folder
        for k, uid in enumerate(series.sop_uids):
            uid_index[uid] = (len(series_list), k)
        series_list.append(series)
    missing = [row["folder"] for uid, row in metadata.items() if uid not in seen_series and row.get("Modality", "CT") == "CT" and row["folder"] and not Path(row["folder"]).is_dir()]
    if missing:
        result.warnings.append(f"{len(missing)} CT series listed in metadata.csv are not on disk (partial download?), first: {missing[0]}")

    # annotations: (series number) -> list of boxes
    boxes_of: dict[int, list[dict]] = defaultdict(list)
    xml_files = sorted(p for p in annotation_root.glob("*/*") if p.is_file() and p.suffix.lower() == ".xml")
    if not xml_files:
        problems.append(f"{annotation_root}: no annotation files (expected <ID>/<SOPInstanceUID>.xml)")
    unmatched = []
    for xml in xml_files:
        try:
            ann = read_voc_xml(xml)
        except CtmtlError as err:
            problems.extend(err.problems)
            continue
        sop_uid = xml.stem
        if sop_uid not in uid_index:
            unmatched.append(xml)
            continue
        s, k = uid_index[sop_uid]
        series = series_list[s]
        folder_code = patient_code(xml.parent.name)
        if patient_code(series.patient_id) != folder_code:
            result.warnings.append(f"{xml}: annotation folder {xml.parent.name} but the slice belongs to patient {series.patient_id}")
        if ann.size is not None and ann.size != (series.columns, series.rows):
            result.warnings.append(
                f"{xml}: <size> {ann.size[0]}x{ann.size[1]} differs from the slice's {series.columns}x{series.rows} (columns x rows); the slice's is used"
            )
        if not ann.objects:
            result.warnings.append(f"{xml}: no <object>; ignored")
        for j, obj in enumerate(ann.objects):
            x1, y1, x2, y2 = obj.box
            if not (x2 > x1 and y2 > y1):
                problems.append(f"{xml}: object {j} ({obj.name}) box {list(obj.box)} is degenerate (needs xmax > xmin and ymax > ymin)")
            elif x1 < 0 or y1 < 0 or x2 > series.columns or y2 > series.rows:
                problems.append(
                    f"{xml}: object {j} ({obj.name}) box {list(obj.box)} lies outside the {series.columns}x{series.rows} slice "
                    f"(columns x rows) of series {series.series_uid}"
                )
            else:
                box = [int(v) if float(v).is_integer() else float(v) for v in obj.box]
                boxes_of[s].append(
                    {"slice": k, "box": box, "label": "cancer", "subtype": obj.name, "sop_uid": sop_uid, "annotation": str(xml.resolve())}
                )
    if unmatched:
        lines = [f"{xml}: SOPInstanceUID {xml.stem} is in no CT series under {root}" for xml in unmatched]
        if options.skip_unmatched:
            result.warnings.append(f"{len(unmatched)} annotations match no slice and are left out; first: {lines[0]}")
        else:
            problems.extend(lines)
    if problems:
        raise DataError(problems)
    if not boxes_of:
        raise DataError(f"{root}: no annotation matches a slice of the CT series found")

    annotated = sorted(boxes_of)
    patients = {s: patient_code(series_list[s].patient_id or series_list[s].files[0].parents[2].name) for s in annotated}
    split_of = split_patients(patients.values(), options.split_seed, options.val_fraction, options.test_fraction)
    for s in sorted(annotated, key=lambda s: (patients[s], series_list[s].series_uid)):
        series = series_list[s]
        patient = patients[s]
        boxes = sorted(boxes_of[s], key=lambda b: (b["slice"], b["box"]))
        letter = patient[:1].upper()
        entry = {
            "id": f"{patient}-{series.series_uid}",
            "kind": "dicom_series",
            "image": str(seen_series[series.series_uid].resolve()),
            "class": "cancer",
        }
        if letter in LUNG_DX_SUBTYPES:
            entry["subtype"] = letter
        entry.update(
            patient=patient,
            split=split_of[patient],
            slices=sorted({b["slice"] for b in boxes}),
            boxes=boxes,
            slice_uids=list(series.sop_uids),
            tasks=ordered_tasks({"classification", "detection", "reconstruction"}),
        )
        manifest["entries"].append(entry)
    skipped = len(series_list) - len(annotated)
    if skipped or skipped_modalities:
        extra = ", ".join(f"{n} {m}" for m, n in sorted(skipped_modalities.items()))
        result.warnings.append(
            f"left out {skipped} CT series without annotations" + (f" and {extra} series" if extra else "")
        )
    return result

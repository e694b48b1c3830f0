"""UCSD-AI4H COVID-CT (Zhao et al., arXiv:2003.13865): 2D CT images cut from papers, COVID and non-COVID.

Layout::

    ROOT/Images-processed/CT_COVID/*.png            (CT_COVID/ and CT_NonCOVID/ may also sit
    ROOT/Images-processed/CT_NonCOVID/*.{png,jpg}    directly under ROOT)
    ROOT/Data-split/COVID/{train,val,test}CT_COVID.txt          official split (optional)
    ROOT/Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt
    ROOT/NonCOVID-CT-MetaInfo.csv                   image name -> patient id (optional)
    ROOT/COVID-CT-MetaInfo.csv                      same for COVID, if exported from the .xlsx (optional)

One entry per image (``kind: slice``, class ``covid-19`` or ``non-covid``, tasks classification and
reconstruction, chain ``slice_8bit``). Images are decoded by content (some ``.png`` files hold JPEG data);
the builder reads each header so a file that is not an image fails here.

Patients: from a ``*-CT-MetaInfo.csv`` when it lists the image, else the image's source: the file name up
to ``-p<page>`` (the paper; COVID names look like ``2020.02.10.20021584-p6-52%3.png``) or up to ``%``
(``26%1.jpg`` -> ``26``). Splits: the official split files when present (kept as published: if they put one
patient in two splits, that patient's id is suffixed with the split and a warning says so); otherwise a
seeded split by patient, stratified by class.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from ctmtl.constants import SPLITS
from ctmtl.data.io import IMAGE_SUFFIXES, image_shape
from ctmtl.data.sources.common import BuildOptions, BuildResult, manifest_header, ordered_tasks, split_patients
from ctmtl.errors import CtmtlError, DataError

__all__ = ["build_ucsd", "read_split_file", "read_patient_csv", "source_group", "CLASS_FOLDERS"]

#: class folder -> (class name, Data-split sub-folder, split file suffix)
CLASS_FOLDERS: dict[str, tuple[str, str]] = {
    "CT_COVID": ("covid-19", "COVID"),
    "CT_NonCOVID": ("non-covid", "NonCOVID"),
}


def read_split_file(path: Path) -> list[str]:
    """Image names of one split file, one per line (no trailing newline needed; blank lines and surrounding
    spaces ignored; ``%`` kept literally)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_patient_csv(path: Path) -> dict[str, str]:
    """``image name -> patient id`` from a MetaInfo CSV: the columns whose header contains "image" (or
    "file") and "patient" (case-insensitive); other columns (the unnamed index) are ignored.

    Raises:
        DataError: the CSV has no such columns.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{path}: empty CSV, expected columns 'image name' and 'patient id'")
    header = [h.strip().lower() for h in rows[0]]
    image_col = next((i for i, h in enumerate(header) if "image" in h or "file" in h), None)
    patient_col = next((i for i, h in enumerate(header) if "patient" in h), None)
    if image_col is None or patient_col is None:
        raise DataError(f"{path}: expected columns 'image name' and 'patient id', found {rows[0]}")
    out = {}
    for row in rows[1:]:
        if len(row) > max(image_col, patient_col) and row[image_col].strip():
            out[row[image_col].strip()] = row[patient_col].strip()
    return out


_PAPER = re.compile(r"^(.+?)-p\d+(?:[-_].*)?$")


def source_group(name: str) -> str:
    """The image's source when no patient id is known: the paper (text before ``-p<page>``), else the
    name before ``%``, else the stem."""
    stem = name.rsplit(".", 1)[0]
    stem = stem.split("%", 1)[0]
    match = _PAPER.match(stem)
    return match.group(1) if match else stem


def _images_root(root: Path) -> Path:
    for candidate in (root / "Images-processed", root):
        if any((candidate / folder).is_dir() for folder in CLASS_FOLDERS):
            return candidate
    raise DataError(f"{root}: no UCSD-AI4H COVID-CT images (expected Images-processed/CT_COVID/ and Images-processed/CT_NonCOVID/)")


def build_ucsd(root: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build a manifest of a UCSD-AI4H COVID-CT download (see the module docstring).

    Raises:
        DataError: no class folder or no image; a file that is not an image; a split file naming an image
            that does not exist or an image listed in two splits (one line per problem).
    """
    options = options or BuildOptions()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: UCSD-AI4H COVID-CT folder not found")
    images_root = _images_root(root)
    manifest = manifest_header(
        options.name or "ucsd-ai4h",
        "ucsd-ai4h",
        transforms="slice_8bit",
        created_by=options.created_by,
        description="UCSD-AI4H COVID-CT (Zhao et al. 2020): 2D CT images from papers; research use only.",
    )
    result = BuildResult(manifest)
    problems: list[str] = []

    patients_of: dict[str, str] = {}
    for csv_path in sorted(set(root.glob("*MetaInfo*.csv")) | set(images_root.glob("*MetaInfo*.csv"))):
        try:
            patients_of.update(read_patient_csv(csv_path))
        except CtmtlError as err:
            problems.extend(err.problems)

    split_dir = root / "Data-split"
    official = split_dir.is_dir()
    images: list[tuple[str, Path, str, str]] = []  # (folder, path, class, patient)
    for folder, (class_name, _) in CLASS_FOLDERS.items():
        class_dir = images_root / folder
        if not class_dir.is_dir():
            result.warnings.append(f"{class_dir}: class folder missing; no {class_name} images")
            continue
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            try:
                image_shape(path, "slice")
            except CtmtlError as err:
                problems.extend(err.problems)
                continue
            patient = patients_of.get(path.name) or source_group(path.name)
            images.append((folder, path, class_name, patient))
    if not images and not problems:
        raise DataError(f"{images_root}: no images in CT_COVID/ or CT_NonCOVID/")

    split_of: dict[tuple[str, str], str] = {}
    if official:
        for folder, (class_name, sub) in CLASS_FOLDERS.items():
            for split in SPLITS:
                path = split_dir / sub / f"{split}{folder}.txt"
                if not path.is_file():
                    problems.append(f"{path}: official split file missing (Data-split/ exists)")
                    continue
                for name in read_split_file(path):
                    if not (images_root / folder / name).is_file():
                        problems.append(f"{path}: lists {name!r}, which is not in {images_root / folder}")
                    elif (folder, name) in split_of and split_of[(folder, name)] != split:
                        problems.append(f"{path}: {name!r} is also listed in the {split_of[(folder, name)]} split")
                    split_of[(folder, name)] = split
        unlisted = [p for (f, p, _, _) in images if (f, p.name) not in split_of]
        if unlisted:
            result.warnings.append(
                f"{split_dir}: {len(unlisted)} images are in no official split file and are left out (first: {unlisted[0]})"
            )
    else:
        by_class: dict[str, list[str]] = defaultdict(list)
        for _, _, class_name, patient in images:
            by_class[class_name].append(patient)
        assigned = {}
        for class_name, patients in by_class.items():
            for patient, split in split_patients(patients, options.split_seed, options.val_fraction, options.test_fraction).items():
                assigned[(class_name, patient)] = split
        for folder, path, class_name, patient in images:
            split_of[(folder, path.name)] = assigned[(class_name, patient)]
    if problems:
        raise DataError(problems)

    kept = [(f, p, c, pat, split_of[(f, p.name)]) for (f, p, c, pat) in images if (f, p.name) in split_of]
    splits_of_patient: dict[str, set[str]] = defaultdict(set)
    for _, _, class_name, patient, split in kept:
        splits_of_patient[f"{class_name}:{patient}"].add(split)
    crossing = sorted(p for p, s in splits_of_patient.items() if len(s) > 1)
    if crossing:
        first = crossing[0]
        result.warnings.append(
            f"{split_dir}: the official split puts {len(crossing)} patients/sources in more than one split "
            f"(e.g. {first.split(':', 1)[1]!r}: {', '.join(s for s in SPLITS if s in splits_of_patient[first])}); "
            "their ids are suffixed with the split, the split is kept as published"
        )
    for folder, path, class_name, patient, split in kept:
        pid = f"{class_name}:{patient}"
        entry = {
            "id": f"{folder}/{path.name}",
            "kind": "slice",
            "image": str(path.resolve()),
            "class": class_name,
            "patient": f"{pid}@{split}" if pid in crossing else pid,
            "split": split,
            "tasks": ordered_tasks({"classification", "reconstruction"}),
        }
        manifest["entries"].append(entry)
    return result

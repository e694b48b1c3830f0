"""What ``ctmtl predict`` reads: command-line paths turned into checked inputs, before any prediction runs.

A path given to the predictor is one of:

* a NIfTI volume (``.nii`` / ``.nii.gz``): one input, ``kind="volume"``;
* a DICOM series folder (``*.dcm`` files, or files without a suffix that carry the ``DICM`` preamble): one input,
  ``kind="dicom_series"``; every file must belong to one ``SeriesInstanceUID``;
* a 2D image (PNG, JPG, ... decoded by content, so JPEG data in a ``.png`` reads): one input, ``kind="slice"``;
* a folder of those: searched recursively; each NIfTI / image file is one input, each folder holding DICOM files
  one series (other files -- CSV, XML, JSON, text -- are left alone);
* a ctmtl manifest (``.json``): each entry (of ``split``, if given) is one input, through the entry's own chain;
  every slice of the entry's image is predicted (its ``slices`` selection is for training), its labels are unused.

:func:`find_inputs` resolves every path and opens every input (headers of volumes and series, the full decode of
2D images, which is cheap) and raises one :class:`ctmtl.errors.DataError` listing every problem, one line each,
so a bad file among many is reported before the first prediction is made.

Each input gets a ``name``, the folder its outputs go to (``OUT/<name>/``): the file name without its suffix, the
series folder's name, or the manifest entry's ``id``; a name already taken gets ``-2``, ``-3``... in input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctmtl.constants import DEFAULT_CHAINS, SPLITS
from ctmtl.data.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, read_image_2d, scan_dicom_series, volume_header
from ctmtl.errors import CtmtlError, DataError

__all__ = ["PredictInput", "find_inputs", "is_dicom_file", "MANIFEST_SUFFIX"]

#: a path with this ending is read as a ctmtl manifest
MANIFEST_SUFFIX = ".json"


@dataclass
class PredictInput:
    """One checked input of the predictor.

    Attributes:
        name: output folder name (``OUT/<name>/``), unique among the inputs of one run.
        kind: ``volume`` (NIfTI), ``dicom_series`` (folder) or ``slice`` (2D image file).
        path: the file or series folder (absolute).
        shape: spatial shape as stored: ``(H, W, D)`` for a volume or series (rows, columns, slices), ``(H, W)``
            for a 2D image.
        chain: preprocessing chain (name or path); ``None``: the kind's default (:data:`ctmtl.constants.DEFAULT_CHAINS`).
        chain_dir: folder a relative chain path is relative to (the manifest's folder).
        provenance: where the input came from, for ``prediction.json``: ``manifest``, ``entry_id``, ``split``,
            ``class`` (the entry's label, if any) for manifest entries; ``series_uid``, ``study_uid``,
            ``patient_id``, ``modality`` for DICOM series.
    """

    name: str
    kind: str
    path: Path
    shape: tuple[int, ...] = ()
    chain: str | None = None
    chain_dir: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def chain_name(self) -> str:
        """The chain this input goes through."""
        return self.chain or DEFAULT_CHAINS[self.kind]

    @property
    def is_2d(self) -> bool:
        return self.kind == "slice"


def is_dicom_file(path: Path) -> bool:
    """Whether a file is DICOM: a ``.dcm`` ending, or the ``DICM`` magic at byte 128 (files without a suffix)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _dicom_members(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (as :func:`ctmtl.data.io.dicom_files` picks them: ``*.dcm``, else
    suffix-less files, here only those with the DICOM preamble so a stray ``README`` is not taken for one)."""
    files = [p for p in folder.iterdir() if p.is_file() and _visible(p)]
    dcm = [p for p in files if p.suffix.lower() == ".dcm"]
    return dcm or [p for p in files if p.suffix == "" and is_dicom_file(p)]


def _scan_folder(folder: Path, seen: set[Path] | None = None) -> list[tuple[str, Path]]:
    """``(kind, path)`` of every input under ``folder``, recursively, in sorted order (each folder once, even
    through symbolic links)."""
    seen = set() if seen is None else seen
    if folder.resolve() in seen:
        return []
    seen.add(folder.resolve())
    found: list[tuple[str, Path]] = []
    if _dicom_members(folder):
        found.append(("dicom_series", folder))
    for path in sorted(p for p in folder.iterdir() if _visible(p)):
        if path.is_dir():
            found += _scan_folder(path, seen)
        elif _is_nifti(path):
            found.append(("volume", path))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(("slice", path))
    return found


def _kind_of_file(path: Path) -> str:
    """Kind of a file given on its own: NIfTI by its ending, else a 2D image (decoded by content)."""
    if _is_nifti(path):
        return "volume"
    if is_dicom_file(path):
        raise DataError(f"{path}: a single DICOM file; give the folder of its series instead")
    return "slice"


def _check(kind: str, path: Path) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Open an input as far as is cheap: NIfTI header, DICOM headers (one series, one slice size), 2D full decode."""
    if kind == "volume":
        shape, _ = volume_header(path)
        return tuple(shape), {}
    if kind == "dicom_series":
        series = scan_dicom_series(path)
        info = {"series_uid": series.series_uid, "study_uid": series.study_uid, "patient_id": series.patient_id,
                "modality": series.modality, "series_description": series.series_description}
        return tuple(series.shape), info
    if kind == "slice":
        return tuple(read_image_2d(path).shape), {}
    raise DataError(f"{path}: unknown input kind {kind!r}")


def _manifest_inputs(path: Path, split: str | None) -> list[tuple[str, Path, dict]]:
    """``(kind, path, extra)`` of the entries of a manifest (of ``split``)."""
    from ctmtl.data.manifest import load_manifest

    manifest = load_manifest(path)
    out = []
    for i, entry in enumerate(manifest.entries):
        if split is not None and entry["split"] != split:
            continue
        provenance = {"manifest": str(manifest.path), "entry_index": i, "entry_id": entry["id"], "split": entry["split"]}
        if "class" in entry:
            provenance["class"] = entry["class"]
        out.append((entry["kind"], manifest.resolve(entry["image"]),
                    {"name": str(entry["id"]), "chain": manifest.chain_of(entry), "chain_dir": manifest.root,
                     "provenance": provenance}))
    if not out:
        which = f"entries in split {split!r}" if split else "entries"
        raise DataError(f"manifest {path}: no {which}")
    return out


def _safe_name(name: str) -> str:
    name = name.replace("/", "_").replace("\\", "_").strip()
    return name.lstrip(".") or "input"


def _unique(names: Iterable[str]) -> list[str]:
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def find_inputs(paths: Sequence[str | Path], split: str | None = None) -> list[PredictInput]:
    """Resolve command-line paths into checked inputs (see the module docstring).

    Args:
        paths: files, series folders, folders of inputs, manifests.
        split: for manifests, only the entries of this split (``train`` / ``val`` / ``test``); other paths ignore it.

    Returns:
        the inputs in the order given (a folder's in sorted path order), each with a unique ``name``.

    Raises:
        DataError: every problem found, one line each: a missing path, a folder without inputs, a single DICOM
            file, a file that is not an image (by content), an unreadable NIfTI header, a DICOM folder mixing
            series, a manifest without (matching) entries. A manifest that does not load raises its
            :class:`ctmtl.errors.ManifestError` lines among them.
    """
    if split is not None and split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if not paths:
        raise DataError("no input given (give NIfTI files, DICOM series folders, 2D images, folders of those, or manifests)")
    problems: list[str] = []
    pending: list[tuple[str, Path, dict]] = []
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        try:
            if not path.exists():
                raise DataError(f"{raw}: no such file or folder")
            if path.is_dir():
                found = _scan_folder(path)
                if not found:
                    raise DataError(f"{raw}: no inputs in the folder (no NIfTI volume, DICOM series or 2D image)")
                pending += [(kind, p, {}) for kind, p in found]
            elif path.suffix.lower() == MANIFEST_SUFFIX:
                pending += _manifest_inputs(path, split)
            else:
                pending.append((_kind_of_file(path), path, {}))
        except CtmtlError as err:
            problems += err.problems
    inputs: list[PredictInput] = []
    for kind, path, extra in pending:
        try:
            shape, info = _check(kind, path)
        except CtmtlError as err:
            problems += err.problems
            continue
        name = extra.get("name") or (path.name if kind == "dicom_series" else _stem(path))
        inputs.append(PredictInput(name=_safe_name(name), kind=kind, path=path, shape=shape, chain=extra.get("chain"),
                                   chain_dir=extra.get("chain_dir"), provenance={**extra.get("provenance", {}), **info}))
    if problems:
        raise DataError(problems)
    for item, name in zip(inputs, _unique(i.name for i in inputs)):
        item.name = name
    return inputs

"""Low-level readers of the files ctmtl data sets are made of: NIfTI volumes, DICOM series, 2D images, VOC XML.

The manifest builders (:mod:`ctmtl.data.sources`), ``ctmtl manifest check`` (:mod:`ctmtl.data.check`) and the
load transforms of the preprocessing chains (:mod:`ctmtl.transforms`) all read files through these functions,
so a file that is wrong fails in the same way everywhere: a :class:`ctmtl.errors.DataError` whose message
names the file and what is wrong with it (missing, truncated, not an image, no pixel data, mixed series...).

Shapes and axes (nothing here reorients; the chain's orientation step does):

* :func:`read_volume`: float32 ``(H, W, D)``, the file's own voxel axes (i, j, k), with the NIfTI affine.
* :func:`read_dicom_series`: float32 ``(H, W, D)`` = (rows, columns, slices) in Hounsfield units, slices
  sorted by position along the slice normal, with a RAS affine (see :class:`DicomSeries`).
* :func:`read_image_2d` / :func:`read_mask_2d`: ``(H, W)`` = (rows, columns) single channel.

Boxes (VOC XML) use x = column (W axis) and y = row (H axis) of these arrays.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmtl.errors import DataError

__all__ = [
    "DicomSeries",
    "VocObject",
    "VocAnnotation",
    "read_volume",
    "volume_header",
    "read_dicom_series",
    "scan_dicom_series",
    "dicom_files",
    "read_dicom_header",
    "read_image_2d",
    "read_mask_2d",
    "image_shape",
    "read_voc_xml",
    "NIFTI_SUFFIXES",
    "IMAGE_SUFFIXES",
]

#: file name endings read as NIfTI volumes
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: file name endings that 2D sources pick up as images (decoding is by content, whatever the ending)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")

# errors a decoder raises on a damaged file (truncated gzip, short buffer, bad header)
_DECODE_ERRORS = (OSError, EOFError, ValueError, zlib.error, KeyError, IndexError, TypeError, RuntimeError)


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a {what} file, found a folder")


# ----------------------------------------------------------------------------------------------- NIfTI


def _nifti_image(path: Path):
    import nibabel as nib

    _require_file(path, "NIfTI volume")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors...
        raise DataError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {shape}")
    return shape  # type: ignore[return-value]


def volume_header(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape ``(H, W, D)`` and 4x4 affine of a NIfTI volume, from its header only (cheap).

    A 2D image is ``(H, W, 1)``; trailing singleton dimensions (``H x W x D x 1``) are dropped.

    Raises:
        DataError: the file is missing or its header does not parse.
    """
    path = Path(path)
    img = _nifti_image(path)
    return _spatial_shape(img.shape, path), np.asarray(img.affine, dtype=np.float64)


def read_volume(path: str | Path, dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume (``.nii`` / ``.nii.gz``), fully decoded so a truncated file fails here.

    Args:
        path: the file.
        dtype: output dtype. Floating types get the scaled values (``scl_slope``/``scl_inter`` applied);
            an integer dtype (for masks) gets them rounded to the nearest integer.

    Returns:
        ``(array, affine)``: ``array`` of shape ``(H, W, D)`` on the file's voxel axes (i, j, k), not
        reoriented; ``affine`` float64 ``4 x 4`` voxel -> world (RAS mm, as NIfTI stores it).

    Raises:
        DataError: missing file, bad header, truncated or corrupt data, not 3D, or non-finite values.
    """
    path = Path(path)
    img = _nifti_image(path)
    shape = _spatial_shape(img.shape, path)
    try:
        data = np.asarray(img.dataobj)
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({type(err).__name__}: {err})") from None
    data = data.reshape(shape)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        if np.issubdtype(data.dtype, np.floating):
            if not np.all(np.isfinite(data)):
                raise DataError(f"{path}: label volume holds NaN or infinite values")
            data = np.rint(data)
        out = data.astype(dtype)
    else:
        out = data.astype(dtype, copy=False)
        if not np.all(np.isfinite(out)):
            raise DataError(f"{path}: volume holds NaN or infinite values")
    return np.ascontiguousarray(out), np.asarray(img.affine, dtype=np.float64)


# ----------------------------------------------------------------------------------------------- DICOM
#
# DICOM series are read with pydicom by hand rather than with MONAI's ITKReader / PydicomReader, because those
# do not return the SOPInstanceUID of each slice in the sorted volume, and Lung-PET-CT-Dx annotations are joined
# to slices by exactly that UID (the XML file stem). Doing the sort here also fixes one slice order shared by
# the builders (which record ``slice_uids``) and the loaders (which must return slices in that order).


@dataclass
class DicomSeries:
    """One DICOM series (one folder), slices sorted by position along the slice normal.

    Attributes:
        array: float32 ``(H, W, D)`` = (rows, columns, slices) in Hounsfield units (``RescaleSlope`` and
            ``RescaleIntercept`` applied); ``None`` from :func:`scan_dicom_series`.
        affine: float64 ``4 x 4`` mapping voxel ``(row, column, slice, 1)`` to RAS millimetres (DICOM's LPS with
            x and y negated): column 0 = column direction cosine (``ImageOrientationPatient[3:]``) x row
            spacing, column 1 = row direction cosine (``ImageOrientationPatient[:3]``) x column spacing,
            column 2 = step between consecutive sorted slices, column 3 = ``ImagePositionPatient`` of slice 0.
            ``nibabel.aff2axcodes(affine)`` gives the array's orientation codes.
        files: the file of each slice index.
        sop_uids: ``SOPInstanceUID`` of each slice index.
        positions: position of each slice along the normal (mm), ascending; ``None`` when the files carry no
            position (then slices are ordered by ``InstanceNumber``).
        spacing: ``(row spacing, column spacing, slice spacing)`` in mm (slice spacing from positions, else
            ``SliceThickness``, else 1).
        series_uid, study_uid, patient_id, modality, series_description: from the headers.
        headers: per slice, the header without pixel data (``pydicom.Dataset``).
    """

    array: np.ndarray | None
    affine: np.ndarray
    files: list[Path]
    sop_uids: list[str]
    positions: list[float] | None
    spacing: tuple[float, float, float]
    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    series_description: str
    rows: int
    columns: int
    headers: list = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, D)`` = (rows, columns, slices)."""
        return (self.rows, self.columns, len(self.files))

    def slice_index(self) -> dict[str, int]:
        """``SOPInstanceUID -> slice index``."""
        return {uid: k for k, uid in enumerate(self.sop_uids)}


def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files of a series folder (not recursive): ``*.dcm`` files, else files without a suffix.

    Raises:
        DataError: the folder is missing or holds no candidate file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: DICOM series folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a DICOM series folder, found a file")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix == "")
    if not files:
        raise DataError(f"{folder}: no DICOM files (*.dcm) in the series folder")
    return files


def read_dicom_header(path: str | Path, stop_before_pixels: bool = True):
    """One DICOM file's dataset (``pydicom.Dataset``), without pixel data by default.

    Raises:
        DataError: missing file, not DICOM, truncated.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    _require_file(path, "DICOM")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: truncated or corrupt DICOM file ({type(err).__name__}: {err})") from None


def _floats(ds, key: str, n: int) -> np.ndarray | None:
    value = ds.get(key)
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _sort_series(folder: Path, files: list[Path], headers: list) -> tuple[list[int], list[float] | None, np.ndarray | None]:
    """Order of the slices: by ImagePositionPatient . normal, ties (or no position) by InstanceNumber."""
    orientations = [_floats(ds, "ImageOrientationPatient", 6) for ds in headers]
    positions = [_floats(ds, "ImagePositionPatient", 3) for ds in headers]
    instance = [int(ds.get("InstanceNumber") or 0) for ds in headers]
    iop = orientations[0]
    if iop is None or any(o is None for o in orientations) or any(p is None for p in positions):
        order = sorted(range(len(files)), key=lambda i: (instance[i], files[i].name))
        return order, None, None
    if any(not np.allclose(o, iop, atol=1e-3) for o in orientations):
        raise DataError(f"{folder}: slices of the series have different ImageOrientationPatient")
    normal = np.cross(iop[:3], iop[3:])
    dist = [float(np.dot(p, normal)) for p in positions]
    order = sorted(range(len(files)), key=lambda i: (dist[i], instance[i], files[i].name))
    return order, [dist[i] for i in order], iop


def _series_affine(headers: list, positions: list[float] | None, iop: np.ndarray | None) -> tuple[np.ndarray, tuple]:
    first = headers[0]
    pixel = _floats(first, "PixelSpacing", 2)
    row_sp, col_sp = (float(pixel[0]), float(pixel[1])) if pixel is not None else (1.0, 1.0)
    if positions is not None and len(positions) > 1:
        slice_sp = abs(positions[-1] - positions[0]) / (len(positions) - 1) or 1.0
    else:
        thickness = first.get("SliceThickness")
        slice_sp = float(thickness) if thickness not in (None, "") and float(thickness) > 0 else 1.0
    row_cos, col_cos = (iop[:3], iop[3:]) if iop is not None else (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    origin = _floats(first, "ImagePositionPatient", 3)
    lps = np.eye(4)
    lps[:3, 0] = col_cos * row_sp  # moving down one row
    lps[:3, 1] = row_cos * col_sp  # moving right one column
    if positions is not None and len(positions) > 1:
        last = _floats(headers[-1], "ImagePositionPatient", 3)
        lps[:3, 2] = (last - origin) / (len(positions) - 1)
    else:
        lps[:3, 2] = np.cross(row_cos, col_cos) * slice_sp
    lps[:3, 3] = origin if origin is not None else 0.0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return affine, (row_sp, col_sp, slice_sp)


def scan_dicom_series(folder: str | Path, headers_only: bool = True) -> DicomSeries:
    """Read a series folder's headers (``stop_before_pixels``), sort the slices; cheap, for builders.

    With ``headers_only=False`` this is :func:`read_dicom_series`.

    Raises:
        DataError: missing/empty folder, a file that is not DICOM, two SeriesInstanceUIDs in one folder (both
            named), slices of different sizes, or a multi-frame file.
    """
    folder = Path(folder)
    files = dicom_files(folder)
    headers = [read_dicom_header(f, stop_before_pixels=headers_only) for f in files]
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in headers})
    if len(series) > 1:
        shown = ", ".join(repr(s) for s in series[:3]) + (" ..." if len(series) > 3 else "")
        raise DataError(f"{folder}: mixed series: {len(series)} SeriesInstanceUIDs in one folder ({shown})")
    if not series[0]:
        raise DataError(f"{files[0]}: DICOM file has no SeriesInstanceUID")
    for f, ds in zip(files, headers):
        if "SOPInstanceUID" not in ds:
            raise DataError(f"{f}: DICOM file has no SOPInstanceUID")
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise DataError(f"{f}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported; expected one slice per file")
        if "Rows" not in ds or "Columns" not in ds:
            raise DataError(f"{f}: DICOM file has no Rows/Columns (not an image)")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
    if len(sizes) > 1:
        raise DataError(f"{folder}: slices of the series have different sizes {sorted(sizes)}")
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    if len(set(uids)) != len(uids):
        dup = next(u for u in uids if uids.count(u) > 1)
        raise DataError(f"{folder}: SOPInstanceUID {dup!r} appears in more than one file")
    order, positions, iop = _sort_series(folder, files, headers)
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    affine, spacing = _series_affine(headers, positions, iop)
    first = headers[0]
    series_obj = DicomSeries(
        array=None,
        affine=affine,
        files=files,
        sop_uids=[str(ds.SOPInstanceUID) for ds in headers],
        positions=positions,
        spacing=spacing,
        series_uid=series[0],
        study_uid=str(first.get("StudyInstanceUID", "")),
        patient_id=str(first.get("PatientID", "")),
        modality=str(first.get("Modality", "")),
        series_description=str(first.get("SeriesDescription", "")),
        rows=int(first.Rows),
        columns=int(first.Columns),
        headers=headers,
    )
    if not headers_only:
        series_obj.array = np.stack([_hu_slice(f, ds) for f, ds in zip(files, headers)], axis=-1)
        for ds in headers:  # keep headers light: the pixels live in ``array``
            if "PixelData" in ds:
                del ds.PixelData
    return series_obj


def _hu_slice(path: Path, ds) -> np.ndarray:
    """One slice as float32 ``(rows, columns)`` in HU (modality LUT: slope and intercept)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # missing decoder plugin (compressed syntaxes), short buffer, bad attributes
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = f"; transfer syntax {syntax.name} may need pylibjpeg or gdcm" if syntax is not None and syntax.is_compressed else ""
        raise DataError(f"{path}: cannot decode DICOM pixel data ({type(err).__name__}: {err}){hint}") from None
    if pixels.shape != (int(ds.Rows), int(ds.Columns)):
        raise DataError(f"{path}: pixel data of shape {pixels.shape}, expected one slice ({ds.Rows}, {ds.Columns})")
    slope = float(ds.get("RescaleSlope") or 1.0)
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_dicom_series(folder: str | Path) -> DicomSeries:
    """Read one DICOM series folder as a volume in Hounsfield units.

    Slices are sorted by ``ImagePositionPatient`` projected on the slice normal (the cross product of the two
    ``ImageOrientationPatient`` direction cosines), ascending (for axial CT: feet to head); ties, or files
    without position, by ``InstanceNumber``. ``result.sop_uids[k]`` is the SOPInstanceUID of ``array[..., k]``.

    Returns:
        a :class:`DicomSeries` with ``array`` float32 ``(H, W, D)`` = (rows, columns, slices) in HU.

    Raises:
        DataError: as :func:`scan_dicom_series`, plus a file without pixel data or pixel data that does not
            decode (the file is named).
    """
    return scan_dicom_series(folder, headers_only=False)


# -------------------------------------------------------------------------------------------------- 2D


def _open_2d(path: Path):
    from PIL import Image, UnidentifiedImageError

    _require_file(path, "image")
    try:
        img = Image.open(path)  # PIL identifies the format by content: JPEG data in a .png opens as JPEG
        img.load()  # decode now so truncated data fails here
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (no known image format in the file's content)") from None
    except _DECODE_ERRORS + (Image.DecompressionBombError,) as err:
        raise DataError(f"{path}: truncated or corrupt image ({type(err).__name__}: {err})") from None
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    return img


def read_image_2d(path: str | Path) -> np.ndarray:
    """Read a 2D image as one channel, decoding by content (not by file name ending).

    Colour modes become luminance (ITU-R 601, PIL's ``convert("L")``); an alpha channel is dropped; a palette
    image is shown through its palette (its colours, then luminance); 16-bit and 32-bit integer and float
    images keep their values.

    Returns:
        float32 ``(H, W)`` = (rows, columns); 0..255 for 8-bit modes (``1``, ``L``, ``LA``, ``P``, ``RGB``,
        ``RGBA``, ``CMYK``, ``YCbCr``...), the stored values for ``I;16``/``I``/``F``.

    Raises:
        DataError: missing file, not an image, truncated data.
    """
    path = Path(path)
    img = _open_2d(path)
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32)
    else:
        if mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV...
        # PIL's conversion to L ignores alpha and maps palette indices through the palette
        arr = np.asarray(img.convert("L"), dtype=np.uint8).astype(np.float32)
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-channel image after conversion, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_mask_2d(path: str | Path) -> np.ndarray:
    """Read a 2D label mask: the stored values, not colours.

    A palette (``P``) PNG yields its palette indices (MedSeg-derived masks store labels 0, 1, 2 as indices);
    ``L``/``I;16``/``I`` yield their values; an RGB(A) mask is accepted only when its colour channels are
    equal (a grey mask saved as RGB) and yields one of them.

    Returns:
        int64 ``(H, W)`` = (rows, columns).

    Raises:
        DataError: missing file, not an image, a colour mask (channels differ), or a non-integer float mask.
    """
    path = Path(path)
    img = _open_2d(path)
    mode = img.mode
    if mode in ("P", "L", "1", "I") or mode.startswith("I;16"):
        arr = np.asarray(img)
    elif mode in ("LA", "PA"):
        arr = np.asarray(img)[..., 0]
    elif mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{path}: colour mask (mode {mode} with differing channels); expected label values in a grey or palette PNG")
        arr = rgb[..., 0]
    elif mode == "F":
        arr = np.asarray(img)
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise DataError(f"{path}: float mask with non-integer values")
    else:
        raise DataError(f"{path}: unsupported mask mode {mode!r}; expected a grey or palette PNG")
    return np.ascontiguousarray(arr.astype(np.int64))


# ------------------------------------------------------------------------------------------ any kind


def image_shape(path: str | Path, kind: str) -> tuple[int, ...]:
    """Shape of an entry's image from headers only, where the format allows.

    Args:
        path: file (``volume``, ``slice``) or folder (``dicom_series``).
        kind: a manifest entry kind: ``volume`` -> ``(H, W, D)`` from the NIfTI header; ``dicom_series`` ->
            ``(rows, columns, slices)`` from the DICOM headers; ``slice`` -> ``(H, W)`` from the image header.

    Raises:
        DataError: the file cannot be read, or ``kind`` is unknown.
    """
    path = Path(path)
    if kind == "volume":
        return volume_header(path)[0]
    if kind == "dicom_series":
        return scan_dicom_series(path).shape
    if kind == "slice":
        from PIL import Image, UnidentifiedImageError

        _require_file(path, "image")
        try:
            with Image.open(path) as img:
                width, height = img.size
        except UnidentifiedImageError:
            raise DataError(f"{path}: not an image (no known image format in the file's content)") from None
        except _DECODE_ERRORS as err:
            raise DataError(f"{path}: unreadable image header ({type(err).__name__}: {err})") from None
        return (height, width)
    raise DataError(f"{path}: unknown entry kind {kind!r} (expected volume, dicom_series or slice)")


# ------------------------------------------------------------------------------------------- VOC XML


@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` of a PASCAL-VOC file: ``name`` and ``box`` ``[xmin, ymin, xmax, ymax]`` in pixels
    (x = column, y = row)."""

    name: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class VocAnnotation:
    """A PASCAL-VOC annotation file: ``size`` = ``(width, height)`` or ``None`` when absent, and its objects."""

    path: Path
    size: tuple[int, int] | None
    objects: tuple[VocObject, ...]


def _number(node, tag: str, path: Path) -> float:
    text = node.findtext(tag)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{path}: <{tag}> is {text!r}, expected a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: <{tag}> is {text!r}, expected a finite number")
    return value


def read_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse a PASCAL-VOC XML file (Lung-PET-CT-Dx annotations: one file per slice, several objects).

    Raises:
        DataError: missing file, XML that does not parse, an object without ``<name>`` or with a non-numeric
            ``<bndbox>`` coordinate.
    """
    path = Path(path)
    _require_file(path, "annotation")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not valid XML ({err})") from None
    size = None
    node = root.find("size")
    if node is not None and node.findtext("width") and node.findtext("height"):
        size = (int(_number(node, "width", path)), int(_number(node, "height", path)))
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: object {i} has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: object {i} ({name}) has no <bndbox>")
        objects.append(VocObject(name, tuple(_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))))
    return VocAnnotation(path=path, size=size, objects=tuple(objects))


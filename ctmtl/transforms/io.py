"""Load transforms: thin MONAI-style wrappers over the readers of :mod:`ctmtl.data.io`.

Every loader returns a channel-first ``MetaTensor`` of shape ``1 x H x W x D`` carrying the file's affine, so
that volumes, DICOM series and 2D images go through chains of the same shape (a 2D image is ``1 x H x W x 1``
and the slicing step yields a list of one). The readers do the decoding and name the file in every error;
these wrappers add the checks that need more than one file (mask against image) and write the source
geometry into the sample's ``meta`` (``original_shape``, ``affine``, an empty ``geometry`` record) so a
prediction can later be mapped back (:func:`ctmtl.transforms.geometry.invert_geometry`).

MONAI's ``LoadImage`` is not used: the DICOM reader must return each slice's SOPInstanceUID in the sorted
order (Lung-PET-CT-Dx boxes are joined to slices by it), and the 2D readers decode by content (UCSD ``.png``
files holding JPEG data) and keep palette indices of masks; ``ctmtl.data.io`` does both, in one place.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, ensure_tuple

from ctmtl.data.io import read_dicom_series, read_image_2d, read_mask_2d, read_volume
from ctmtl.errors import DataError

__all__ = [
    "LoadCTVolume",
    "LoadCTVolumed",
    "LoadCTVolumeD",
    "LoadCTVolumeDict",
    "LoadDicomSeries",
    "LoadDicomSeriesd",
    "LoadDicomSeriesD",
    "LoadDicomSeriesDict",
    "LoadImage2D",
    "LoadImage2Dd",
    "LoadImage2DD",
    "LoadImage2DDict",
]


def _metatensor(array: np.ndarray, affine: np.ndarray, path: Path, **meta: Any) -> MetaTensor:
    if 0 in array.shape:
        raise DataError(f"{path}: image of size 0 (shape {array.shape})")
    t = torch.from_numpy(np.ascontiguousarray(array))[None]
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    return MetaTensor(
        t,
        affine=aff,
        meta={"filename_or_obj": str(path), "spatial_shape": np.asarray(array.shape), "original_affine": aff.clone(), **meta},
    )


def _start_record(meta: dict | None, img: MetaTensor) -> None:
    """Write the source geometry of a freshly loaded image into the sample's meta dict."""
    if meta is None:
        return
    meta["original_shape"] = [int(s) for s in img.shape[1:]]
    meta["affine"] = img.affine.detach().cpu().double().numpy().tolist()
    meta["geometry"] = []


class _LoadBase(MapTransform):
    """Shared dictionary logic: load every key, check labels against the reference image, start the record."""

    reader: Transform
    label_reader: Transform

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = ("mask",),
        ref_key: str = "image",
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple(label_keys)
        self.ref_key = ref_key
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            reader = self.label_reader if key in self.label_keys else self.reader
            d[key] = reader(d[key])
        ref = d.get(self.ref_key)
        if isinstance(ref, MetaTensor):
            for key in self.key_iterator(d):
                if key != self.ref_key and tuple(d[key].shape) != tuple(ref.shape):
                    raise DataError(
                        f"{d[key].meta['filename_or_obj']}: {key} shape {tuple(d[key].shape[1:])} does not match "
                        f"image {tuple(ref.shape[1:])} ({ref.meta['filename_or_obj']})"
                    )
            meta = d.get(self.meta_key)
            _start_record(meta if isinstance(meta, dict) else None, ref)
        return d


class LoadCTVolume(Transform):
    """Read a NIfTI volume into a ``1 x H x W x D`` MetaTensor with its affine (file axes, not reoriented).

    Args:
        label: read as a label volume: int64, values rounded, NaN / infinite values rejected (an all-NaN mask
            fails here, naming the file). Otherwise float32 with the NIfTI scaling applied (HU for CT).

    Raises:
        DataError: from :func:`ctmtl.data.io.read_volume` (missing, corrupt, not 3D, non-finite) or a size-0
            volume; the message names the file.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, label: bool = False) -> None:
        self.label = label

    def __call__(self, path: str | Path) -> MetaTensor:
        path = Path(path)
        array, affine = read_volume(path, dtype=np.int64 if self.label else np.float32)
        return _metatensor(array, affine, path)


class LoadCTVolumed(_LoadBase):
    """Dictionary wrapper of :class:`LoadCTVolume`: ``image`` float32 (HU), ``mask`` int64, both ``1 x H x W x D``.

    A mask must have the image's shape. The image's geometry goes into ``meta`` (``original_shape``
    ``[H, W, D]``, ``affine`` 4x4 list, empty ``geometry``).

    Args:
        keys: keys holding file paths (``["image", "mask"]``).
        label_keys: which of them are label volumes.
        ref_key: the image the others must match.
        meta_key: the sample's meta dict.
        allow_missing_keys: an entry without a mask simply has no ``mask`` key.
    """

    backend = LoadCTVolume.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        label_keys: KeysCollection = ("mask",),
        ref_key: str = "image",
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_keys, ref_key, meta_key, allow_missing_keys)
        self.reader = LoadCTVolume(label=False)
        self.label_reader = LoadCTVolume(label=True)


class LoadDicomSeries(Transform):
    """Read a DICOM series folder into a ``1 x H x W x D`` float32 MetaTensor in Hounsfield units.

    ``H x W`` = rows x columns of ``pixel_array`` (so VOC boxes apply as they are), slices sorted along the
    slice normal; rescale slope / intercept applied (air is about -1000). ``meta["sop_uids"]`` lists the
    SOPInstanceUID of every slice index; the affine is RAS (see :class:`ctmtl.data.io.DicomSeries`).

    Raises:
        DataError: from :func:`ctmtl.data.io.read_dicom_series`, naming the folder or file.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __call__(self, folder: str | Path) -> MetaTensor:
        folder = Path(folder)
        series = read_dicom_series(folder)
        return _metatensor(
            series.array,
            series.affine,
            folder,
            sop_uids=list(series.sop_uids),
            spacing=list(series.spacing),
            series_uid=series.series_uid,
        )


class LoadDicomSeriesd(_LoadBase):
    """Dictionary wrapper of :class:`LoadDicomSeries`.

    Besides the image it writes ``d[uids_key]``, the SOPInstanceUID of every slice in the loaded order, which
    the slicing step uses to put each box on its slice (matching by UID, not by file or folder name). A
    ``mask`` key, if present, is read as a NIfTI label volume of the same shape.

    Args:
        keys: ``["image"]`` (a series folder), optionally ``"mask"``.
        uids_key: where to write the per-slice UIDs.
        label_keys, ref_key, meta_key, allow_missing_keys: as :class:`LoadCTVolumed`.
    """

    backend = LoadDicomSeries.backend

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        uids_key: str = "slice_uids",
        label_keys: KeysCollection = ("mask",),
        ref_key: str = "image",
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_keys, ref_key, meta_key, allow_missing_keys)
        self.reader = LoadDicomSeries()
        self.label_reader = LoadCTVolume(label=True)
        self.uids_key = uids_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = super().__call__(data)
        ref = d.get(self.ref_key)
        if isinstance(ref, MetaTensor) and "sop_uids" in ref.meta:
            d[self.uids_key] = list(ref.meta["sop_uids"])
        return d


class LoadImage2D(Transform):
    """Read a 2D image file into a ``1 x H x W x 1`` MetaTensor (one channel; the last axis is a slice axis of
    length 1, so 2D entries go through the same chain shape as volumes).

    Args:
        label: read as a label mask (:func:`ctmtl.data.io.read_mask_2d`: palette indices, int64); otherwise
            :func:`ctmtl.data.io.read_image_2d` (any colour mode -> luminance, float32 0..255 for 8-bit files).

    Raises:
        DataError: missing file, not an image, truncated data, colour mask, or size 0; naming the file.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, label: bool = False) -> None:
        self.label = label

    def __call__(self, path: str | Path) -> MetaTensor:
        path = Path(path)
        array = read_mask_2d(path) if self.label else read_image_2d(path)
        return _metatensor(array[..., None], np.eye(4), path)


class LoadImage2Dd(_LoadBase):
    """Dictionary wrapper of :class:`LoadImage2D`: ``image`` float32 0..255, ``mask`` int64, ``1 x H x W x 1``.

    Args: as :class:`LoadCTVolumed`.
    """

    backend = LoadImage2D.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        label_keys: KeysCollection = ("mask",),
        ref_key: str = "image",
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_keys, ref_key, meta_key, allow_missing_keys)
        self.reader = LoadImage2D(label=False)
        self.label_reader = LoadImage2D(label=True)


LoadCTVolumeD = LoadCTVolumeDict = LoadCTVolumed
LoadDicomSeriesD = LoadDicomSeriesDict = LoadDicomSeriesd
LoadImage2DD = LoadImage2DDict = LoadImage2Dd

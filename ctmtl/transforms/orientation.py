"""Axial orientation: show every slice upright, whatever rotation the source stored it with.

CT slices are displayed in the radiological convention: anterior at the top, the patient's right on the
image's left. DICOM ``pixel_array`` already is (rows = anterior -> posterior, columns = right -> left), and so are
the 2D data sets. The MedSeg NIfTI volumes are not: their slices are stored rotated, and the public converters
show them upright with ``np.fliplr(np.rot90(slice, k=3))`` -- which is the transpose of the slice (rows and
columns swapped). :class:`OrientAxial` applies ``fliplr(rot90(slice, k))`` to every axial slice with MONAI's
``Rotate90`` and ``Flip`` (which also update the MetaTensor's affine), and records the step so a prediction can
be mapped back.

MONAI's ``Orientation(axcodes=...)`` reorients by the affine; it is the right tool for volumes whose affine is
trustworthy and can be listed in a chain of one's own. MedSeg's affines do not describe the stored rotation,
which is why this transform takes the rotation explicitly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Flip, MapTransform, Rotate90, Transform
from monai.utils import TransformBackends

from ctmtl.transforms.geometry import record_geometry

__all__ = ["MEDSEG_ORIENTATION", "OrientAxial", "OrientAxiald", "OrientAxialD", "OrientAxialDict"]

#: the rotation that shows MedSeg NIfTI slices upright: ``np.fliplr(np.rot90(slice, k=3))`` (= transpose)
MEDSEG_ORIENTATION: dict[str, Any] = {"k": 3, "flip_lr": True}


class OrientAxial(Transform):
    """Apply ``np.fliplr(np.rot90(slice, k))`` to every axial slice of a ``C x H x W [x D]`` image.

    Args:
        k: number of 90 degree counter-clockwise rotations of each slice (``np.rot90`` semantics), 0..3.
        flip_lr: then flip each slice left-right (``np.fliplr``: reverse the W axis).

    ``k=3, flip_lr=True`` is MedSeg's (:data:`MEDSEG_ORIENTATION`); ``k=0, flip_lr=False`` is the identity. With
    odd ``k`` the output is ``C x W x H [x D]``. The MetaTensor affine is updated (by MONAI).
    """

    backend = Rotate90.backend

    def __init__(self, k: int = 0, flip_lr: bool = False) -> None:
        self.k = int(k) % 4
        self.flip_lr = bool(flip_lr)
        self.rotate = Rotate90(k=self.k, spatial_axes=(0, 1))
        self.flip = Flip(spatial_axis=1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = self.rotate(img) if self.k else img
        return self.flip(out) if self.flip_lr else out


class OrientAxiald(MapTransform):
    """Dictionary wrapper of :class:`OrientAxial`; records ``{"op": "orient", "k", "flip_lr"}`` in ``meta``.

    Args:
        keys: ``image`` and ``mask`` (``1 x H x W x D``), oriented alike.
        k, flip_lr: see :class:`OrientAxial`.
        meta_key: the sample's meta dict.
        allow_missing_keys: skip a missing mask.
    """

    backend = OrientAxial.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        k: int = 0,
        flip_lr: bool = False,
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orient = OrientAxial(k=k, flip_lr=flip_lr)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.orient.k and not self.orient.flip_lr:
            return d
        size_in = None
        for key in self.key_iterator(d):
            size_in = size_in or tuple(d[key].shape[1:3])
            d[key] = self.orient(d[key])
        if size_in is not None:
            size_out = size_in[::-1] if self.orient.k % 2 else size_in
            record_geometry(d.get(self.meta_key), "orient", size_in, size_out, k=self.orient.k, flip_lr=self.orient.flip_lr)
        return d


OrientAxialD = OrientAxialDict = OrientAxiald

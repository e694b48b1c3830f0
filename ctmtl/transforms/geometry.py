"""2D geometry that moves image, mask and boxes together, and the record that lets a prediction go back.

Every sample of a chain is a 2D slice ``1 x H x W`` with, optionally, a mask ``1 x H x W`` and boxes ``N x 4``
(``xyxy`` pixels, x = column = W axis, y = row = H axis, torchvision's convention; a box covers pixel edges,
so a box around columns 3..7 is ``x1 = 3, x2 = 8``).

The geometric steps of a chain (orientation, pad/crop, resize) write what they did into the sample's
``meta["geometry"]``: a list of plain dicts such as ``{"op": "resize", "in": [512, 512], "out": [256, 256]}``.
:func:`invert_geometry` walks that list backwards to put a prediction onto the slice as stored in the file
(shape and affine of the original). MONAI's ``Invertd`` does the same from ``MetaTensor.applied_operations``
but needs the very transform objects that ran and the image tensor that went through them; a prediction made
later, in another process, or by an exported model only has the sample's ``meta``, so ctmtl keeps this small,
serialisable record and inverts it here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import CenterSpatialCrop, MapTransform, Resize, ResizeWithPadOrCrop, SpatialPad, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple, ensure_tuple_rep

from ctmtl.errors import DataError

__all__ = [
    "record_geometry",
    "slice_affine",
    "invert_geometry",
    "ScaleBoxes",
    "ResizeWithBoxesd",
    "ResizeWithBoxesD",
    "ResizeWithBoxesDict",
    "PadCropWithBoxesd",
    "PadCropWithBoxesD",
    "PadCropWithBoxesDict",
    "SwapBoxAxes",
    "SwapBoxAxesd",
    "SwapBoxAxesD",
    "SwapBoxAxesDict",
    "InvertGeometryd",
    "InvertGeometryD",
    "InvertGeometryDict",
    "BoxesToBoxMaskd",
    "BoxesToBoxMaskD",
    "BoxesToBoxMaskDict",
    "BoxMaskToBoxesd",
    "BoxMaskToBoxesD",
    "BoxMaskToBoxesDict",
]


# ------------------------------------------------------------------------------------------ the record


#: nearest-neighbour interpolation for labels. torch's plain ``"nearest"`` picks ``floor(i * in / out)``, which
#: shifts the content by up to half a pixel towards the origin; ``"nearest-exact"`` samples pixel centres, so a
#: resized mask stays aligned with the bilinearly resized image and with boxes scaled by ``out / in``.
_NEAREST = "nearest-exact"


def record_geometry(meta: dict | None, op: str, size_in: Sequence[int], size_out: Sequence[int], **params: Any) -> None:
    """Append one geometric step to ``meta["geometry"]`` (no-op when the sample has no meta dict).

    Args:
        meta: the sample's ``meta`` dict.
        op: ``"orient"``, ``"pad_crop"`` or ``"resize"`` (the steps :func:`invert_geometry` knows).
        size_in: ``(H, W)`` before the step.
        size_out: ``(H, W)`` after it.
        params: what else the inverse needs (``k``, ``flip_lr`` for orient; ``offset`` for pad_crop).
    """
    if meta is None:
        return
    meta.setdefault("geometry", []).append(
        {"op": op, "in": [int(s) for s in size_in], "out": [int(s) for s in size_out], **params}
    )


def slice_affine(affine: Any, index: int) -> np.ndarray:
    """The 4x4 affine of slice ``index`` (last axis) of a volume: the volume's affine with its origin moved."""
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    aff = np.array(affine, dtype=np.float64).reshape(4, 4)
    out = aff.copy()
    out[:, 3] = aff @ np.array([0.0, 0.0, float(index), 1.0])
    return out


def _resize_2d(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    dtype = x.dtype
    mode = _NEAREST if mode.startswith("nearest") else mode
    y = torch.nn.functional.interpolate(
        x[None].float(), size=tuple(int(s) for s in size), mode=mode, **({} if mode == _NEAREST else {"align_corners": False})
    )[0]
    return y.round().to(dtype) if not dtype.is_floating_point else y.to(dtype)


def _place(x: torch.Tensor, size: Sequence[int], offset: Sequence[int]) -> torch.Tensor:
    """Copy ``x`` (``C x h x w``) into a zero ``C x size`` canvas with its origin at ``offset`` (may be negative)."""
    out = torch.zeros((x.shape[0], *size), dtype=x.dtype)
    oy, ox = (int(o) for o in offset)
    h, w = x.shape[-2:]
    ys, xs = max(oy, 0), max(ox, 0)
    ye, xe = min(oy + h, size[0]), min(ox + w, size[1])
    if ye > ys and xe > xs:
        out[:, ys:ye, xs:xe] = x[:, ys - oy : ye - oy, xs - ox : xe - ox]
    return out


def invert_geometry(pred: Any, meta: Mapping, mode: str = "nearest") -> MetaTensor:
    """Map a prediction on a chain's output slice back onto the slice as stored in the file.

    Args:
        pred: ``C x H x W`` (or ``H x W``) array / tensor on the chain's output grid (e.g. ``1 x 256 x 256``
            labels or probabilities).
        meta: the sample's ``meta`` (``geometry``, ``original_shape``, ``affine``, ``slice``).
        mode: ``"nearest"`` for labels (pixel-centre nearest neighbour), ``"bilinear"`` for probabilities or images.

    Returns:
        MetaTensor ``C x H0 x W0`` on the file's voxel axes, dtype of ``pred``, with ``affine`` the 4x4 affine
        of that slice in the file (the volume's affine, origin moved to the slice).

    Raises:
        DataError: ``pred`` is not on the grid the record ends with (a chain step that changed the geometry
            without recording it, or a prediction from another sample).
    """
    x = convert_to_tensor(pred, track_meta=False)
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    x = x.detach().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise DataError(f"invert: prediction of shape {tuple(x.shape)}, expected C x H x W")
    ops = list(meta.get("geometry", []))
    where = f"entry {meta.get('entry_id')!r} slice {meta.get('slice')}"
    expected = ops[-1]["out"] if ops else list(meta.get("original_shape", x.shape[-2:]))[:2]
    if list(x.shape[-2:]) != list(expected):
        raise DataError(
            f"invert {where}: prediction is {tuple(x.shape[-2:])}, the sample's recorded geometry ends at {tuple(expected)}"
        )
    for op in reversed(ops):
        kind = op["op"]
        if kind == "resize":
            x = _resize_2d(x, op["in"], mode)
        elif kind == "pad_crop":
            oy, ox = op["offset"]
            x = _place(x, op["in"], (-oy, -ox))
        elif kind == "orient":
            if op.get("flip_lr"):
                x = torch.flip(x, dims=(2,))
            x = torch.rot90(x, -int(op.get("k", 0)), dims=(1, 2))
        else:
            raise DataError(f"invert {where}: unknown geometry step {kind!r}")
        if list(x.shape[-2:]) != list(op["in"]):  # pragma: no cover - guards the record's consistency
            raise DataError(f"invert {where}: step {kind} gave {tuple(x.shape[-2:])}, expected {tuple(op['in'])}")
    affine = slice_affine(meta["affine"], int(meta.get("slice") or 0)) if "affine" in meta else np.eye(4)
    return MetaTensor(x.contiguous(), affine=torch.as_tensor(affine, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- boxes


def _boxes_tensor(boxes: Any) -> torch.Tensor:
    b = convert_to_tensor(boxes, dtype=torch.float32, track_meta=False)
    return b.reshape(-1, 4)


def _clip_boxes(boxes: torch.Tensor, labels: torch.Tensor | None, size: Sequence[int], min_size: float = 1.0):
    """Clip ``xyxy`` boxes to an ``H x W`` image and drop those left narrower than ``min_size`` pixels."""
    h, w = size
    b = boxes.clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return b[keep], (labels[keep] if labels is not None else None)


class ScaleBoxes(Transform):
    """Scale ``xyxy`` pixel boxes from an ``H x W`` image to an ``H' x W'`` one (x by W'/W, y by H'/H).

    Written by hand: MONAI's ``ZoomBox`` orders box coordinates by array axis (its x is the row axis), ctmtl's
    boxes are torchvision's (x = column), and the scaling is one multiplication.

    Args:
        size_in: ``(H, W)`` of the image the boxes are on.
        size_out: ``(H', W')``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, size_in: Sequence[int], size_out: Sequence[int]) -> None:
        self.size_in = tuple(int(s) for s in size_in)
        self.size_out = tuple(int(s) for s in size_out)

    def __call__(self, boxes: Any) -> torch.Tensor:
        b = _boxes_tensor(boxes)
        sy, sx = (o / i for o, i in zip(self.size_out, self.size_in))
        return b * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


class ResizeWithBoxesd(MapTransform):
    """Resize the 2D image and mask of a sample (MONAI ``Resize``) and scale its boxes with them.

    Images are interpolated bilinearly (anti-aliased when shrinking, if asked), masks by nearest neighbour and
    keep their integer dtype; boxes (``N x 4`` xyxy pixels) are scaled by the same factors. The step is recorded
    in ``meta["geometry"]`` for :func:`invert_geometry`.

    Args:
        keys: image-like keys, ``C x H x W``; all must share one spatial size.
        spatial_size: output ``(H, W)``, default ``(256, 256)``.
        mode: interpolation per key; default nearest neighbour for ``label_keys`` and ``"bilinear"`` for the others.
            ``"nearest"`` is taken as ``"nearest-exact"`` (pixel centres; plain torch nearest shifts masks by up to
            half a pixel against the image and the boxes).
        box_keys: keys of ``N x 4`` box tensors to scale.
        anti_aliasing: (per key) Gaussian smoothing before shrinking (MONAI ``Resize(anti_aliasing=True)``);
            never applied with nearest interpolation.
        label_keys: keys holding labels (nearest by default, dtype kept).
        meta_key: the sample's meta dict.
        allow_missing_keys: skip keys (image, mask, boxes) that the sample does not have.
    """

    backend = Resize.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int = (256, 256),
        mode: Sequence[str] | str | None = None,
        box_keys: KeysCollection = ("boxes",),
        anti_aliasing: Sequence[bool] | bool = False,
        label_keys: KeysCollection = ("mask",),
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
        labels = ensure_tuple(label_keys)
        if mode is None:
            mode = tuple(_NEAREST if k in labels else "bilinear" for k in self.keys)
        self.mode = tuple(_NEAREST if m == "nearest" else m for m in ensure_tuple_rep(mode, len(self.keys)))
        self.anti_aliasing = ensure_tuple_rep(anti_aliasing, len(self.keys))
        self.box_keys = ensure_tuple(box_keys)
        self.meta_key = meta_key
        self.resizers = [
            Resize(self.spatial_size, mode=m, anti_aliasing=bool(aa) and not m.startswith("nearest"))
            for m, aa in zip(self.mode, self.anti_aliasing)
        ]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size_in = None
        for key, resizer in self.key_iterator(d, self.resizers):
            img = d[key]
            if img.ndim != 3:
                raise DataError(f"resize: {key!r} has shape {tuple(img.shape)}, expected a 2D sample C x H x W")
            if size_in is None:
                size_in = tuple(img.shape[-2:])
            elif tuple(img.shape[-2:]) != size_in:
                raise DataError(f"resize: {key!r} is {tuple(img.shape[-2:])}, other keys are {size_in}")
            out = resizer(img)
            d[key] = out if out.dtype == img.dtype else out.round().to(img.dtype) if not img.dtype.is_floating_point else out.to(img.dtype)
        if size_in is None:
            return d
        for key in self.box_keys:
            if key in d:
                d[key] = ScaleBoxes(size_in, self.spatial_size)(d[key])
        record_geometry(d.get(self.meta_key), "resize", size_in, self.spatial_size)
        return d


class PadCropWithBoxesd(MapTransform):
    """Centre pad / crop the 2D image and mask to a size (MONAI ``ResizeWithPadOrCrop``), shifting the boxes.

    With ``square=True`` the target is ``max(H, W)`` on both sides: padding to a square before a resize keeps
    the aspect ratio of non-square slices (UCSD-AI4H images come in many shapes). Boxes are shifted by the
    same offset, clipped to the new image and dropped when less than one pixel of them is left (their labels
    with them). Padding is zero (0 = black after intensity scaling, 0 = background in masks). Recorded in
    ``meta["geometry"]``.

    Args:
        keys: image-like keys, ``C x H x W``.
        spatial_size: output ``(H, W)``; ``-1`` keeps that side. Ignored with ``square``.
        square: pad (never crop) to a square of side ``max(H, W)``.
        box_keys: ``N x 4`` xyxy box keys to shift.
        label_keys: box label keys (``N``) to drop together with dropped boxes, one per box key.
        meta_key: the sample's meta dict.
        allow_missing_keys: skip keys the sample does not have.
    """

    backend = ResizeWithPadOrCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int = -1,
        square: bool = False,
        box_keys: KeysCollection = ("boxes",),
        label_keys: KeysCollection = ("box_labels",),
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
        self.square = square
        self.box_keys = ensure_tuple(box_keys)
        self.label_keys = ensure_tuple_rep(label_keys, len(self.box_keys)) if label_keys else (None,) * len(self.box_keys)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        size_in = tuple(int(s) for s in d[keys[0]].shape[-2:])
        if self.square:
            size_out = (max(size_in),) * 2
        else:
            size_out = tuple(i if s < 0 else s for s, i in zip(self.spatial_size, size_in))
        if size_out == size_in:
            return d
        # where the input's origin lands in the output, taken from MONAI's own centre pad / crop arithmetic so
        # boxes and the geometry record follow the pixels exactly
        pads = SpatialPad(size_out).compute_pad_width(size_in)[1:]
        crops = CenterSpatialCrop(size_out).compute_slices(size_in)
        offset = tuple(p[0] if o >= i else -c.start for p, c, i, o in zip(pads, crops, size_in, size_out))
        padcrop = ResizeWithPadOrCrop(size_out, mode="constant")
        for key in keys:
            d[key] = padcrop(d[key])
        oy, ox = offset
        for key, lkey in zip(self.box_keys, self.label_keys):
            if key in d:
                b = _boxes_tensor(d[key]) + torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
                labels = d.get(lkey) if lkey else None
                b, labels = _clip_boxes(b, None if labels is None else convert_to_tensor(labels), size_out)
                d[key] = b
                if labels is not None:
                    d[lkey] = labels
        record_geometry(d.get(self.meta_key), "pad_crop", size_in, size_out, offset=list(offset))
        return d


class SwapBoxAxes(Transform):
    """Swap the two axes of ``N x 4`` boxes: ``[x1, y1, x2, y2] -> [y1, x1, y2, x2]`` (its own inverse).

    ``monai.apps.detection`` orders a box's coordinates by array axis (its "x" is the first spatial axis, the
    row); ctmtl's boxes follow torchvision (x = column). Swap before MONAI's box transforms and after them.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, boxes: Any) -> torch.Tensor:
        b = _boxes_tensor(boxes)
        return b[:, [1, 0, 3, 2]]


class SwapBoxAxesd(MapTransform):
    """Dictionary wrapper of :class:`SwapBoxAxes`; use around ``monai.apps.detection.transforms``."""

    backend = SwapBoxAxes.backend

    def __init__(self, keys: KeysCollection = ("boxes",), allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.swap = SwapBoxAxes()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.swap(d[key])
        return d


class InvertGeometryd(MapTransform):
    """Map predictions in a sample back onto the file's slice grid (:func:`invert_geometry`), e.g. in
    ``inference_post``.

    Args:
        keys: prediction keys, ``C x H x W`` on the chain's output grid.
        mode: per key, ``"nearest"`` (labels) or ``"bilinear"`` (probabilities).
        meta_key: the sample's meta dict (holds the geometry record).
        allow_missing_keys: skip keys the sample does not have.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, keys: KeysCollection, mode: Sequence[str] | str = "nearest", meta_key: str = "meta", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = invert_geometry(d[key], d[self.meta_key], mode=mode)
        return d


class BoxesToBoxMaskd(MapTransform):
    """Draw each box into its own channel of a box mask, so any MONAI spatial transform can move the boxes.

    MONAI's detection transforms move boxes only under flips, 90 degree rotations and zooms; a rotation by any
    angle or an elastic deformation (``RandAffined``, ``Rand2DElasticd``) cannot move a box as four numbers.
    MONAI's answer (``BoxToMaskd`` / ``MaskToBoxd``, used in its detection tutorials) is to draw every box as a
    mask channel, warp it with the image by nearest-neighbour interpolation, and read each channel's bounding
    box back. This is that, on MONAI's array ``BoxToMask``, with two changes that ctmtl needs: samples without
    boxes pass through (MONAI's dictionary versions require every key), and boxes are ctmtl's xyxy with
    x = column (MONAI orders box coordinates by array axis), swapped here and back in :class:`BoxMaskToBoxesd`.

    Args:
        box_key: ``N x 4`` xyxy boxes.
        label_key: their int64 labels ``N`` (>= 1).
        box_mask_key: where the ``N x H x W`` int16 box mask goes (0 background, channel i holds label i).
        ref_key: the ``C x H x W`` image giving the size.
        ellipse_mask: draw the ellipse inscribed in each box (default): its bounding box after a rotation is
            the rotated object's, not the rotated rectangle's, which would grow with every turn (Kalra et al.,
            "Towards Rotation Invariance in Object Detection", ICCV 2021).
        skip_derived: leave samples whose boxes were derived from their mask (``meta["boxes_from_mask"]``) alone:
            ``BoxesFromMaskd(refresh=True)`` recomputes theirs exactly from the augmented mask.
        meta_key: the sample's meta dict.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        box_key: str = "boxes",
        label_key: str = "box_labels",
        box_mask_key: str = "box_mask",
        ref_key: str = "image",
        ellipse_mask: bool = True,
        skip_derived: bool = True,
        meta_key: str = "meta",
    ) -> None:
        super().__init__([box_key], allow_missing_keys=True)
        from monai.apps.detection.transforms.array import BoxToMask

        self.box_key, self.label_key, self.box_mask_key, self.ref_key = box_key, label_key, box_mask_key, ref_key
        self.skip_derived = skip_derived
        self.meta_key = meta_key
        self.converter = BoxToMask(bg_label=0, ellipse_mask=ellipse_mask)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.box_key not in d or len(d[self.box_key]) == 0:
            return d
        meta = d.get(self.meta_key)
        if self.skip_derived and isinstance(meta, Mapping) and meta.get("boxes_from_mask"):
            return d
        size = tuple(d[self.ref_key].shape[1:])
        boxes, _ = _clip_boxes(_boxes_tensor(d[self.box_key]), None, size, min_size=0.0)
        labels = convert_to_tensor(d.get(self.label_key, torch.ones(len(boxes), dtype=torch.long)), track_meta=False)
        d[self.box_mask_key] = self.converter(SwapBoxAxes()(boxes), labels.long(), size)
        return d


class BoxMaskToBoxesd(MapTransform):
    """Read the boxes back from a (warped) box mask made by :class:`BoxesToBoxMaskd`, and remove the mask.

    Each channel's bounding box becomes a box (xyxy, x = column), its value the label; a channel left empty
    (its box moved out of the image) is dropped together with its label. MONAI's array ``MaskToBox`` does the
    reading.

    Args:
        box_key, label_key, box_mask_key: as :class:`BoxesToBoxMaskd`.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, box_key: str = "boxes", label_key: str = "box_labels", box_mask_key: str = "box_mask") -> None:
        super().__init__([box_mask_key], allow_missing_keys=True)
        from monai.apps.detection.transforms.array import MaskToBox

        self.box_key, self.label_key, self.box_mask_key = box_key, label_key, box_mask_key
        self.converter = MaskToBox(bg_label=0, box_dtype=torch.float32, label_dtype=torch.long)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.box_mask_key not in d:
            return d
        mask = convert_to_tensor(d.pop(self.box_mask_key), track_meta=False)
        boxes, labels = self.converter(mask.round())
        d[self.box_key] = SwapBoxAxes()(boxes)
        d[self.label_key] = convert_to_tensor(labels, dtype=torch.long, track_meta=False)
        return d


ResizeWithBoxesD = ResizeWithBoxesDict = ResizeWithBoxesd
PadCropWithBoxesD = PadCropWithBoxesDict = PadCropWithBoxesd
SwapBoxAxesD = SwapBoxAxesDict = SwapBoxAxesd
InvertGeometryD = InvertGeometryDict = InvertGeometryd
BoxesToBoxMaskD = BoxesToBoxMaskDict = BoxesToBoxMaskd
BoxMaskToBoxesD = BoxMaskToBoxesDict = BoxMaskToBoxesd

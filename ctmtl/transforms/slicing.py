"""3D -> 2D: the step of a chain that turns one loaded entry into a list of per-slice samples.

Input: a sample with ``image`` (and ``mask``) ``1 x H x W x D`` (a 2D entry has ``D = 1``), optionally the
entry's ``slices`` (indices used), ``boxes`` (the manifest's box dicts, each with ``slice`` and/or ``sop_uid``)
and ``slice_uids`` (SOPInstanceUID per slice index, written by :class:`~ctmtl.transforms.io.LoadDicomSeriesd`).

Output: a *list* of samples, one per selected slice, each with ``image`` / ``mask`` ``1 x H x W``, the boxes of
that slice (a list of box dicts, possibly empty, only when the entry has boxes), and its own copy of ``meta``
with ``slice`` (and ``slice_uid``). MONAI's ``Compose`` maps the following steps over the list.

Selection modes (among the entry's ``slices``, or all slices):

* ``all``: every slice.
* ``lesion``: slices carrying a lesion: a non-zero mask, or (without a mask) at least one box.
* ``annotated``: slices with at least one box, boxes joined to slices by SOPInstanceUID when both the box and
  the series have one (Lung-PET-CT-Dx annotation files are named by it), else by the box's ``slice`` index.
* ``balanced``: the lesion slices plus ``round(ratio x #lesion)`` lesion-free slices spread evenly over the
  volume. Deterministic (no random draw), so it belongs to the cached part of a pipeline.

A request may force one slice with ``d["slice"] = k`` (the naive, uncached pipeline reads one slice at a time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, look_up_option

from ctmtl.errors import DataError
from ctmtl.transforms.geometry import slice_affine

__all__ = ["SLICE_MODES", "ExtractSlice", "SelectSlicesd", "SelectSlicesD", "SelectSlicesDict"]

SLICE_MODES: tuple[str, ...] = ("all", "lesion", "annotated", "balanced")


class ExtractSlice(Transform):
    """Slice ``index`` of the last axis: ``C x H x W x D -> C x H x W``.

    The slice is copied (it does not keep the whole volume alive in a cache) and a MetaTensor's affine is moved
    to that slice's origin.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, index: int) -> None:
        self.index = int(index)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4:
            raise DataError(f"slice: expected C x H x W x D, got shape {tuple(img.shape)}")
        if isinstance(img, MetaTensor):
            out = img.as_tensor()[..., self.index].clone()
            meta = {"filename_or_obj": img.meta.get("filename_or_obj"), "slice": self.index}
            return MetaTensor(out, affine=torch.as_tensor(slice_affine(img.affine, self.index)), meta=meta)
        return img[..., self.index].clone()


def _spread(items: Sequence[int], n: int) -> list[int]:
    """``n`` of ``items`` spread evenly from the first to the last."""
    if n <= 0 or not items:
        return []
    if n >= len(items):
        return list(items)
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


class SelectSlicesd(MapTransform):
    """Split a loaded entry into per-slice samples (see the module docstring for the modes).

    Args:
        keys: image-like keys to slice (``["image", "mask"]``), ``C x H x W x D``.
        mode: ``all`` | ``lesion`` | ``annotated`` | ``balanced``.
        ratio: for ``balanced``: lesion-free slices per lesion slice.
        lesion_key: the mask that tells lesion slices.
        slices_key: the entry's slice indices (optional; default all).
        slice_key: a single forced slice index (optional).
        boxes_key: the entry's box dicts (optional).
        uids_key: SOPInstanceUID per slice index (optional).
        drop_keys: entry-level keys not copied into the slices.
        meta_key: the sample's meta dict (copied per slice, with ``slice`` and ``slice_uid``).
        allow_missing_keys: a missing mask is fine.

    Returns:
        a list of per-slice dicts, in slice order.

    Raises:
        DataError: a slice index beyond the volume (``D = 1`` hints at a file without a slice axis), a box whose
            SOPInstanceUID is not in the series, or a mode that needs labels the entry does not have.
    """

    backend = ExtractSlice.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        mode: str = "all",
        ratio: float = 1.0,
        lesion_key: str = "mask",
        slices_key: str = "slices",
        slice_key: str = "slice",
        boxes_key: str = "boxes",
        uids_key: str = "slice_uids",
        drop_keys: Sequence[str] = ("lesion_slices",),
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = look_up_option(mode, SLICE_MODES)
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        self.ratio = float(ratio)
        self.lesion_key = lesion_key
        self.slices_key = slices_key
        self.slice_key = slice_key
        self.boxes_key = boxes_key
        self.uids_key = uids_key
        self.meta_key = meta_key
        self.entry_keys = {slices_key, slice_key, boxes_key, uids_key, *drop_keys}

    def _boxes_per_slice(self, d: Mapping, depth: int) -> dict[int, list] | None:
        boxes = d.get(self.boxes_key)
        if boxes is None:
            return None
        uids = d.get(self.uids_key)
        uid_index = {str(u): k for k, u in enumerate(uids)} if uids else {}
        per_slice: dict[int, list] = defaultdict(list)
        for j, box in enumerate(boxes):
            if not isinstance(box, Mapping):  # a bare [x1, y1, x2, y2] on a 2D entry
                box = {"box": list(box), "slice": 0}
            uid = box.get("sop_uid")
            if uid and uid_index:
                if str(uid) not in uid_index:
                    raise DataError(f"box {j}: SOPInstanceUID {uid} is not a slice of the series")
                k = uid_index[str(uid)]
            else:
                k = int(box.get("slice", 0) or 0)
            if not 0 <= k < depth:
                raise DataError(f"box {j} is on slice {k}, beyond the {depth} slices of the image")
            per_slice[k].append(box)
        return per_slice

    def _select(self, candidates: list[int], lesion: np.ndarray | None, boxed: set[int] | None) -> list[int]:
        if self.mode == "all":
            return candidates
        if self.mode == "annotated":
            if boxed is None:
                raise DataError("slice mode 'annotated' needs boxes; the entry has none")
            return [k for k in candidates if k in boxed]
        if lesion is None and boxed is None:
            raise DataError(f"slice mode {self.mode!r} needs a mask or boxes; the entry has neither")
        positive = [k for k in candidates if (lesion is not None and lesion[k]) or (boxed is not None and k in boxed)]
        if self.mode == "lesion":
            return positive
        negative = [k for k in candidates if k not in set(positive)]
        return sorted(set(positive) | set(_spread(negative, int(round(self.ratio * len(positive))))))

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            raise DataError(f"slice: none of the keys {list(self.keys)} is in the sample")
        ref = d[keys[0]]
        if ref.ndim != 4:
            raise DataError(f"slice: {keys[0]!r} has shape {tuple(ref.shape)}, expected C x H x W x D")
        depth = int(ref.shape[-1])
        if d.get(self.slice_key) is not None:
            candidates = [int(d[self.slice_key])]
        elif d.get(self.slices_key) is not None:
            candidates = [int(k) for k in d[self.slices_key]]
        else:
            candidates = list(range(depth))
        for k in candidates:
            if not 0 <= k < depth:
                hint = " (is the file missing its slice axis?)" if depth == 1 else ""
                raise DataError(f"slice {k} is beyond the {depth} slice(s) of the image, shape {tuple(ref.shape[1:])}{hint}")
        per_slice = self._boxes_per_slice(d, depth)
        lesion = None
        if self.lesion_key in d:
            mask = d[self.lesion_key]
            lesion = (torch.as_tensor(mask) != 0).reshape(-1, depth).any(0).cpu().numpy()
        forced = d.get(self.slice_key) is not None
        selected = candidates if forced else self._select(candidates, lesion, None if per_slice is None else set(per_slice))

        uids = d.get(self.uids_key)
        common = {k: v for k, v in d.items() if k not in self.entry_keys and k not in keys}
        meta = d.get(self.meta_key)
        out = []
        for k in selected:
            sample = dict(common)
            extract = ExtractSlice(k)
            for key in keys:
                sample[key] = extract(d[key])
            if per_slice is not None:
                sample[self.boxes_key] = list(per_slice.get(k, []))
            if isinstance(meta, dict):
                m = dict(meta)
                m["geometry"] = [dict(op) for op in meta.get("geometry", [])]
                m["slice"] = k
                if uids:
                    m["slice_uid"] = str(uids[k])
                sample[self.meta_key] = m
            out.append(sample)
        return out


SelectSlicesD = SelectSlicesDict = SelectSlicesd

"""Labels: lesion masks, boxes (from VOC annotations or from masks), diagnosis class, and the task record.

The per-sample contract (``docs/architecture.md``): ``mask`` int64 ``1 x H x W`` (0..3, or 0..1 merged),
``class`` int64 scalar, ``boxes`` float32 ``N x 4`` xyxy pixels (x = column) with ``box_labels`` int64 ``N``
(detection classes from 1; 0 is background in torchvision), and ``tasks`` telling which labels a sample
carries. A missing label is a missing key: nothing here invents a label the entry does not have.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from ctmtl.constants import CLASS_NAMES, LESION_LABELS, SHORT_TASKS, TASKS
from ctmtl.errors import DataError

__all__ = [
    "MergeLesionLabels",
    "MergeLesionLabelsd",
    "MergeLesionLabelsD",
    "MergeLesionLabelsDict",
    "BoxesFromMask",
    "BoxesFromMaskd",
    "BoxesFromMaskD",
    "BoxesFromMaskDict",
    "BoxesToTensor",
    "BoxesToTensord",
    "BoxesToTensorD",
    "BoxesToTensorDict",
    "ClassToIndex",
    "ClassToIndexd",
    "ClassToIndexD",
    "ClassToIndexDict",
    "RecordTasksd",
    "RecordTasksD",
    "RecordTasksDict",
]

#: the keys that carry each task's label (``recon`` needs none: the image is its own target)
TASK_KEYS: dict[str, tuple[str, ...]] = {"class": ("class",), "seg": ("mask",), "det": ("boxes", "box_labels"), "recon": ()}


def _to_long(mask: Any) -> torch.Tensor:
    t = convert_to_tensor(mask, track_meta=True)
    if t.dtype.is_floating_point:
        if not torch.isfinite(t).all():
            raise DataError("mask holds NaN or infinite values")
        t = t.round()
    return t.long()


class MergeLesionLabels(Transform):
    """Lesion labels to int64: merged (every non-zero value -> 1, the papers' default) or kept as 0..3.

    Args:
        merge: map all lesion classes (1 ground-glass, 2 consolidation, 3 pleural effusion) to 1.
        max_label: values above it are an error (default 3, the highest MedSeg label).

    Input ``1 x H x W [x D]`` integer (or integral float) mask; output int64, same shape, in {0, 1} or 0..3.

    Raises:
        DataError: negative or too-high label values, NaN.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, merge: bool = True, max_label: int = max(LESION_LABELS)) -> None:
        self.merge = merge
        self.max_label = max_label

    def __call__(self, mask: Any) -> torch.Tensor:
        m = _to_long(mask)
        if m.numel():
            lo, hi = int(m.min()), int(m.max())
            if lo < 0 or hi > self.max_label:
                raise DataError(f"mask holds label values {lo}..{hi}, expected 0..{self.max_label}")
        return (m != 0).long() if self.merge else m


class MergeLesionLabelsd(MapTransform):
    """Dictionary wrapper of :class:`MergeLesionLabels`."""

    backend = MergeLesionLabels.backend

    def __init__(
        self, keys: KeysCollection = ("mask",), merge: bool = True, max_label: int = max(LESION_LABELS), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.merger = MergeLesionLabels(merge, max_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.merger(d[key])
        return d


class BoxesFromMask(Transform):
    """Boxes around the connected components of each lesion class of a 2D mask.

    Written by hand (with ``scipy.ndimage``): MONAI's ``MaskToBox`` turns each channel / label value into *one*
    box, while a slice may hold several separate lesions of one class, each of which is an object to detect.

    Args:
        min_area: components smaller than this many pixels are ignored (speckle).
        per_class: label components class by class (two touching lesions of different classes give two boxes);
            otherwise the union of all lesion classes.
        class_labels: box label = the lesion class value (1..3); otherwise every box is 1 (``lesion``).
        connectivity: 1 (4-neighbours) or 2 (8-neighbours, default).

    Input ``1 x H x W`` integer mask. Returns ``(boxes, labels)``: float32 ``N x 4`` xyxy pixels (x = column;
    a component over columns 3..7 gives ``x1 = 3, x2 = 8``, as MONAI's ``MaskToBox``), int64 ``N``; ordered by
    class, then top-left corner. ``N = 0`` gives ``0 x 4`` and ``0``.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, min_area: int = 1, per_class: bool = True, class_labels: bool = False, connectivity: int = 2) -> None:
        self.min_area = int(min_area)
        self.per_class = per_class
        self.class_labels = class_labels
        self.connectivity = connectivity

    def __call__(self, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from scipy import ndimage

        m = np.asarray(convert_to_tensor(mask, track_meta=False).cpu())
        if m.ndim == 3:
            if m.shape[0] != 1:
                raise DataError(f"boxes from mask: expected a 1 x H x W mask, got shape {m.shape}")
            m = m[0]
        structure = ndimage.generate_binary_structure(2, self.connectivity)
        values = [int(v) for v in np.unique(m) if v != 0] if self.per_class else ([1] if m.any() else [])
        boxes, labels = [], []
        for value in values:
            fg = (m == value) if self.per_class else (m != 0)
            comps, n = ndimage.label(fg, structure=structure)
            if n == 0:
                continue
            areas = np.bincount(comps.ravel(), minlength=n + 1)
            found = []
            for i, sl in enumerate(ndimage.find_objects(comps), start=1):
                if sl is None or areas[i] < self.min_area:
                    continue
                ys, xs = sl
                found.append([xs.start, ys.start, xs.stop, ys.stop])
            for box in sorted(found, key=lambda b: (b[1], b[0])):
                boxes.append(box)
                labels.append(value if self.class_labels else 1)
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return b, torch.tensor(labels, dtype=torch.int64)


class BoxesFromMaskd(MapTransform):
    """Derive ``boxes`` / ``box_labels`` from the sample's mask where the entry has no boxes of its own.

    Manifest boxes (VOC annotations) take precedence: the step does nothing when ``box_key`` is already there,
    unless ``overwrite``. Without a mask it does nothing (the detection label stays missing). ``RecordTasksd``
    later drops the derived boxes again when the entry does not list the ``detection`` task. The settings used
    are written to ``meta["boxes_from_mask"]``.

    With ``refresh=True`` (in ``train_augment``, after the spatial augmentation) it recomputes, with those
    recorded settings, the boxes of exactly the samples whose boxes were derived from their mask: the boxes of
    the deformed mask are exact, where moving the old boxes through an elastic warp would only approximate them.
    Other samples are left alone.

    Args:
        mask_key, box_key, label_key: the keys.
        min_area, per_class, class_labels, connectivity: see :class:`BoxesFromMask`.
        overwrite: replace existing boxes.
        refresh: only recompute mask-derived boxes (see above).
        meta_key: the sample's meta dict.
    """

    backend = BoxesFromMask.backend

    def __init__(
        self,
        mask_key: str = "mask",
        box_key: str = "boxes",
        label_key: str = "box_labels",
        min_area: int = 1,
        per_class: bool = True,
        class_labels: bool = False,
        connectivity: int = 2,
        overwrite: bool = False,
        refresh: bool = False,
        meta_key: str = "meta",
    ) -> None:
        super().__init__([mask_key], allow_missing_keys=True)
        self.box_key = box_key
        self.label_key = label_key
        self.overwrite = overwrite
        self.refresh = refresh
        self.meta_key = meta_key
        self.settings = {"min_area": int(min_area), "per_class": per_class, "class_labels": class_labels, "connectivity": connectivity}
        self.converter = BoxesFromMask(**self.settings)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = d.get(self.meta_key)
        meta = meta if isinstance(meta, dict) else None
        if self.refresh:
            recorded = meta.get("boxes_from_mask") if meta else None
            if recorded and self.box_key in d:
                for key in self.key_iterator(d):
                    d[self.box_key], d[self.label_key] = BoxesFromMask(**recorded)(d[key])
            return d
        if self.box_key in d and not self.overwrite:
            return d
        for key in self.key_iterator(d):
            d[self.box_key], d[self.label_key] = self.converter(d[key])
            if meta is not None:
                meta["boxes_from_mask"] = dict(self.settings)
        return d


class BoxesToTensor(Transform):
    """Manifest box dicts (or ``[x1, y1, x2, y2]`` lists) of one slice -> float32 ``N x 4`` and int64 ``N``.

    Args:
        classes: detection class names, label ``i + 1`` for ``classes[i]`` (looked up from each box's
            ``label``); ``None`` (default): one class, every box is 1 (``lesion``).

    Call with ``size=(H, W)`` to check the boxes against the image: a box more than one pixel outside is an
    error (a box on the wrong slice or image); one that overhangs by at most a pixel is clipped (VOC tools
    write ``xmax = width``).

    Raises:
        DataError: degenerate boxes, boxes outside the image, unknown class names.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        self.classes = list(classes) if classes else None

    def __call__(self, boxes: Any, size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        coords, labels = [], []
        for j, box in enumerate(boxes):
            if isinstance(box, Mapping):
                xyxy, name = box["box"], box.get("label")
            else:
                xyxy, name = box, None
            if self.classes is None:
                labels.append(1)
            elif name not in self.classes:
                raise DataError(f"box {j}: label {name!r} is not one of the detection classes {self.classes}")
            else:
                labels.append(self.classes.index(name) + 1)
            coords.append([float(v) for v in xyxy])
        b = torch.tensor(coords, dtype=torch.float32).reshape(-1, 4)
        if len(b) and not bool(((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()):
            raise DataError(f"degenerate box in {b.tolist()} (needs x2 > x1 and y2 > y1)")
        if size is not None and len(b):
            h, w = (float(s) for s in size)
            outside = (b[:, 0] < -1) | (b[:, 1] < -1) | (b[:, 2] > w + 1) | (b[:, 3] > h + 1)
            if bool(outside.any()):
                raise DataError(f"box {b[outside][0].tolist()} is outside the {int(h)} x {int(w)} image")
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
        return b, torch.tensor(labels, dtype=torch.int64)


class BoxesToTensord(MapTransform):
    """Dictionary wrapper of :class:`BoxesToTensor`: ``boxes`` list -> tensor, writes ``box_labels``.

    Args:
        keys: ``["boxes"]``.
        label_key: where the labels go.
        classes: see :class:`BoxesToTensor`.
        ref_key: 2D image (``C x H x W``) to check the boxes against.
        allow_missing_keys: an entry without boxes keeps having none.
    """

    backend = BoxesToTensor.backend

    def __init__(
        self,
        keys: KeysCollection = ("boxes",),
        label_key: str = "box_labels",
        classes: Sequence[str] | None = None,
        ref_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.ref_key = ref_key
        self.converter = BoxesToTensor(classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d.get(self.ref_key) if self.ref_key else None
        size = tuple(ref.shape[-2:]) if ref is not None else None
        for key in self.key_iterator(d):
            if isinstance(d[key], torch.Tensor):
                continue
            d[key], d[self.label_key] = self.converter(d[key], size)
        return d


class ClassToIndex(Transform):
    """Diagnosis class name -> int64 scalar tensor (index into ``classes``).

    Args:
        classes: class names in label order; default ``("covid-19", "non-covid", "cancer")``.

    Integers pass through (checked against the number of classes).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        self.classes = list(classes) if classes else list(CLASS_NAMES)

    def __call__(self, label: Any, classes: Sequence[str] | None = None) -> torch.Tensor:
        names = list(classes) if classes else self.classes
        if isinstance(label, str):
            if label not in names:
                raise DataError(f"class {label!r} is not one of {names}")
            index = names.index(label)
        else:
            index = int(convert_to_tensor(label, track_meta=False))
            if not 0 <= index < len(names):
                raise DataError(f"class index {index} is outside 0..{len(names) - 1}")
        return torch.tensor(index, dtype=torch.int64)


class ClassToIndexd(MapTransform):
    """Dictionary wrapper of :class:`ClassToIndex`.

    With ``classes=None`` the class list comes from ``meta["classes"]`` (the manifest's, set by the pipeline),
    else :data:`ctmtl.constants.CLASS_NAMES`.
    """

    backend = ClassToIndex.backend

    def __init__(
        self, keys: KeysCollection = ("class",), classes: Sequence[str] | None = None, meta_key: str = "meta", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ClassToIndex(classes)
        self.fixed = classes is not None
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = d.get(self.meta_key)
        classes = None if self.fixed or not isinstance(meta, Mapping) else meta.get("classes")
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], classes)
        return d


class RecordTasksd(MapTransform):
    """Write ``d["tasks"]``: which task labels this sample carries (short names ``class``, ``seg``, ``recon``,
    ``det`` -> bool), so the losses can skip the rest.

    A task's label is present when its key is (``class``; ``mask``; ``boxes``); ``recon`` is always True. When
    ``meta["tasks"]`` lists the entry's tasks (the manifest's long names), labels of tasks *not* listed are
    removed first (a mask loaded only to derive boxes does not train segmentation); a listed task whose label is
    absent stays absent (False).

    Args:
        tasks_key: where the record goes.
        meta_key: the sample's meta dict.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, tasks_key: str = "tasks", meta_key: str = "meta") -> None:
        super().__init__([tasks_key], allow_missing_keys=True)
        self.tasks_key = tasks_key
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = d.get(self.meta_key)
        declared = meta.get("tasks") if isinstance(meta, Mapping) else None
        if declared is not None:
            wanted = {TASKS.get(t, t) for t in declared}  # long (manifest) or short names -> short
            for short in SHORT_TASKS:
                if short not in wanted:
                    for key in TASK_KEYS[short]:
                        d.pop(key, None)
        if "boxes" in d and "box_labels" not in d:
            d["box_labels"] = torch.ones(len(d["boxes"]), dtype=torch.int64)
        d[self.tasks_key] = {short: all(k in d for k in TASK_KEYS[short]) for short in SHORT_TASKS}
        d[self.tasks_key]["recon"] = True
        return d


MergeLesionLabelsD = MergeLesionLabelsDict = MergeLesionLabelsd
BoxesFromMaskD = BoxesFromMaskDict = BoxesFromMaskd
BoxesToTensorD = BoxesToTensorDict = BoxesToTensord
ClassToIndexD = ClassToIndexDict = ClassToIndexd
RecordTasksD = RecordTasksDict = RecordTasksd

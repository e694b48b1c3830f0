"""The pieces that an exported MONAI Label bundle's ``configs/inference.json`` names (``_target_: ctmtl.export.X``).

MONAI Label's ``BundleInferTask`` runs a bundle as: ``preprocessing`` on the request dict (``image`` is the
study's file path), the network on ``image`` (or the bundle's ``detector`` for a detection task), then
``postprocessing``, its own ``Restored`` step, and a writer (the label file through ITK, or JSON). These
transforms fit ctmtl's model into that flow without changing what the model sees:

- :class:`RunChaind` runs the very preprocessing chain the model was trained with (a ctmtl chain file copied
  into the bundle) on the study file, and keeps the sample's ``meta`` (its geometry record);
- :class:`LabelMapd` turns a lesion map on the file's grid into what MONAI Label's writer expects for a 2D study;
- :class:`LabelDetector`, :class:`InvertBoxesd` and :class:`BoxesToROId` do the same for detection boxes.

Boxes are ``xyxy`` pixels (x = column = W axis) until :class:`BoxesToROId`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import TransformBackends, ensure_tuple

from ctmtl.errors import DataError

__all__ = [
    "RunChaind",
    "RunChainD",
    "RunChainDict",
    "LabelMapd",
    "LabelMapD",
    "LabelMapDict",
    "LabelDetector",
    "InvertBoxesd",
    "InvertBoxesD",
    "InvertBoxesDict",
    "BoxesToROId",
    "BoxesToROID",
    "BoxesToROIDict",
]


class RunChaind(MapTransform):
    """Run a ctmtl preprocessing chain (``transforms/*.json``) on the file named by ``d[key]``.

    The chain gets a fresh load request ``{key: path, meta_key: {"entry_id": <file name>}}`` (not the whole
    request dict: a MONAI Label request carries keys of its own) and must yield exactly one sample, a 2D slice;
    that sample's keys (``image`` ``1 x H x W`` in [0, 1], ``meta`` with the geometry record, ...) replace or join
    the request's.

    Args:
        chain: a chain file (or a name known to :func:`ctmtl.data.chains.find_chain`).
        overrides: chain parameters of training, e.g. ``{"spatial_size": [256, 256]}``.
        keys: the key holding the file path (one key).
        meta_key: the chain's per-sample meta dict.

    Raises:
        ChainError: the chain cannot be built.
        DataError: the file gives no sample or several (a volume study for a 2D model).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        chain: str | Path,
        overrides: Mapping[str, Any] | None = None,
        keys: KeysCollection = "image",
        meta_key: str = "meta",
    ) -> None:
        from ctmtl.data.chains import load_chain

        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"RunChaind takes one key (the file path), got {self.keys}.")
        self.chain = load_chain(chain, dict(overrides or {}))
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        path = d[key]
        if not isinstance(path, (str, Path)):
            raise DataError(f"preprocessing: {key!r} must be a file path, got {type(path).__name__}")
        out = self.chain({key: str(path), self.meta_key: {"entry_id": Path(path).name}})
        samples = out if isinstance(out, list) else [out]
        if len(samples) != 1:
            raise DataError(
                f"{path}: chain {self.chain.name!r} gave {len(samples)} slices; this model takes 2D studies (one slice)"
            )
        d.update(samples[0])
        return d


class LabelMapd(MapTransform):
    """A label map of one 2D sample, as MONAI Label writes it: ``1 x H x W`` -> 2D, ``uint8``, in ITK's axis order.

    MONAI Label's ``Writer`` transposes the array before handing it to ITK (MONAI reads a 2D file as ``x, y``),
    so a map in ctmtl's ``H x W`` order (rows first, as PIL reads the file) is transposed here; the PNG written
    then has the study's rows and columns. ``uint8`` because ITK writes PNG / JPEG labels only as 8 or 16 bit.
    MONAI Label's own ``Restored`` step, run after this one, leaves the map as it is: the chain's ``image`` carries
    no ``spatial_shape`` for it to resize to (the map is already on the file's grid).

    Args:
        keys: label maps ``1 x H x W`` (or ``H x W``) on the file's grid, integer values 0..255.
        transpose: give the map in ``W x H`` (ITK / MONAI) order; ``False`` keeps ``H x W``.
        allow_missing_keys: skip absent keys.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection = "pred", transpose: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transpose = transpose

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            x = x.detach().cpu()
            if x.ndim == 3 and x.shape[0] == 1:
                x = x[0]
            if x.ndim != 2:
                raise DataError(f"label map {key!r}: expected 1 x H x W or H x W, got shape {tuple(x.shape)}")
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 255):
                raise DataError(f"label map {key!r}: values {float(x.min())}..{float(x.max())} do not fit uint8")
            array = x.round().to(torch.uint8).numpy()
            d[key] = np.ascontiguousarray(array.T if self.transpose else array)
        return d


class LabelDetector:
    """The ``detector`` of an exported detection bundle: MONAI Label sets :attr:`network` (the bundle's
    ``network_def``, a single-output detection wrapper in evaluation mode) and calls
    ``detector(images, use_inferer=True)``.

    Returns one dict per image: ``box`` (``N x 4`` xyxy pixels of the network input), ``label`` (int64, 1..K),
    ``label_scores`` (``N`` in [0, 1]); MONAI Label merges the dict of its single image into the request dict.

    Args:
        score_threshold: boxes scoring below it are dropped (``ctmtl predict``'s ``score_threshold``).
        box_key, label_key, score_key: output keys (MONAI Label's ``DetectionWriter`` reads ``box`` and ``label``).
        inferer: how the network is called when ``use_inferer`` (the bundle's ``inferer``, e.g. the trained model's
            test-time mirroring); None: directly.
    """

    def __init__(
        self,
        score_threshold: float = 0.5,
        box_key: str = "box",
        label_key: str = "label",
        score_key: str = "label_scores",
        inferer: Callable[..., Any] | None = None,
    ) -> None:
        self.network: torch.nn.Module | None = None
        self.inferer = inferer
        self.score_threshold = float(score_threshold)
        self.box_key, self.label_key, self.score_key = box_key, label_key, score_key

    def eval(self) -> LabelDetector:
        if self.network is not None:
            self.network.eval()
        return self

    def __call__(self, images: torch.Tensor, use_inferer: bool = True) -> list[dict[str, torch.Tensor]]:
        if self.network is None:
            raise RuntimeError("LabelDetector.network is not set (MONAI Label sets it before inference)")
        images = images.as_tensor() if isinstance(images, MetaTensor) else images
        found_all = self.inferer(images, self.network) if use_inferer and self.inferer is not None else self.network(images)
        out = []
        for found in found_all:
            keep = found["scores"] >= self.score_threshold
            out.append({self.box_key: found["boxes"][keep].float(), self.label_key: found["labels"][keep].long(),
                        self.score_key: found["scores"][keep].float()})
        return out


class InvertBoxesd(MapTransform):
    """Detected boxes (xyxy pixels of the network input) back onto the study's slice as stored in its file, by the
    sample's geometry record (:func:`ctmtl.inference.boxes.invert_boxes`, as ``ctmtl predict`` does); boxes left
    with no area are dropped together with their labels and scores.

    Args:
        keys: ``N x 4`` box tensors.
        other_keys: per-box tensors (labels, scores) kept in step with the boxes.
        meta_key: the sample's meta dict (holds the geometry record).
        allow_missing_keys: skip absent keys.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection = "box",
        other_keys: KeysCollection = ("label", "label_scores"),
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.other_keys = ensure_tuple(other_keys)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from ctmtl.inference.boxes import invert_boxes

        d = dict(data)
        for key in self.key_iterator(d):
            d[key], kept = invert_boxes(d[key], d[self.meta_key])
            for other in self.other_keys:
                if other in d:
                    d[other] = torch.as_tensor(d[other])[kept.to(torch.as_tensor(d[other]).device)]
        return d


class BoxesToROId(MapTransform):
    """2D ``xyxy`` pixel boxes -> the ``N x 6`` centre / size boxes MONAI Label's ``DetectionWriter`` sends to
    3D Slicer as ROI markups: ``[cx, cy, 0, w, h, 1]``, x along the columns.

    For a 2D PNG / JPEG study (pixel spacing 1, origin 0) these are the ITK physical coordinates (LPS, mm) of
    the boxes, which is how Slicer places the study.

    Args:
        keys: ``N x 4`` box tensors.
        allow_missing_keys: skip absent keys.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "box", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            b = torch.as_tensor(d[key], dtype=torch.float32).reshape(-1, 4)
            centre, size = (b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]
            zeros, ones = torch.zeros(len(b), 1), torch.ones(len(b), 1)
            d[key] = torch.cat([centre, zeros, size, ones], dim=1)
        return d


RunChainD = RunChainDict = RunChaind
LabelMapD = LabelMapDict = LabelMapd
InvertBoxesD = InvertBoxesDict = InvertBoxesd
BoxesToROID = BoxesToROIDict = BoxesToROId

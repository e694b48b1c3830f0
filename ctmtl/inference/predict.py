"""Predicting on files with a trained model: what ``ctmtl predict`` does, as an API the CLI is a thin layer over.

:class:`Predictor` holds a loaded trained bundle (:func:`ctmtl.inference.load_model`) and runs an input through

1. the input's preprocessing chain -- the same chains as training (``ct_volume_hu`` for NIfTI, ``dicom_series``
   for DICOM, ``slice_8bit`` for 2D images, or a manifest entry's own; a name is looked up in the trained
   bundle's ``chains/`` first, :attr:`LoadedModel.chain_dirs`), with the model's ``chain_overrides``
   (slice size, window...) and every slice selected (``slice_mode="all"``);
2. the network, batch by batch, on the model's device, with only the heads the model has among ``class``,
   ``seg`` and ``det`` (``recon`` is not run: its output is the input), through the bundle's ``inferer``
   (test-time mirroring when the run set ``tta_flip_axes``, :class:`ctmtl.engines.inferers.FlipInferer`);
3. the ``inference_post`` chain (softmax class probabilities; sigmoid + threshold, or softmax + argmax, lesion
   labels), then :func:`ctmtl.data.pipeline.assemble_volume`, which puts the labels back onto the input's own
   grid (resize, pad/crop and orientation undone: shape and affine of the file); detected boxes go back by the
   same geometry record (:func:`ctmtl.inference.boxes.invert_boxes`).

and returns a :class:`Prediction`; :meth:`Predictor.write` writes it to ``OUT/<name>/``:

* ``mask.nii.gz`` -- uint8 lesion labels in the input's exact geometry: the NIfTI's shape and affine; a DICOM
  series' ``(rows, columns, slices)`` with its RAS affine (spacing, origin, direction; see
  :class:`ctmtl.data.io.DicomSeries`); a 2D image's ``(H, W)`` with a unit affine;
* ``mask.png`` (2D inputs) -- uint8 ``H x W``, pixel = label, aligned pixel for pixel with the input as PIL reads it;
* ``prediction.json`` -- class probabilities per slice and per input (the mean of the slice probabilities),
  lesion burden (voxels, mL from the affine's voxel volume, slices with lesion), model and input provenance;
* ``detections.json`` -- boxes in pixels of the stored slice and, for volumes, in world millimetres;
* ``overlay*.png`` -- a few slices with the mask contour and the boxes.

Files of heads the model does not have are not written. :func:`predict_files` is the whole command: resolve and
check every input, refuse existing output folders (unless ``overwrite``), load the model, then predict and write.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm import tqdm

from ctmtl import __version__
from ctmtl.constants import LESION_LABELS, SHORT_TASKS
from ctmtl.data.chains import Chain, load_chain
from ctmtl.data.pipeline import _root_cause, assemble_volume, invert_prediction, multitask_collate, save_volume, torch_threads
from ctmtl.errors import ChainError, CtmtlError, DataError, ModelError
from ctmtl.inference.boxes import RAS_TO_LPS, boxes_to_world, invert_boxes
from ctmtl.inference.inputs import PredictInput, find_inputs
from ctmtl.inference.model import LoadedModel, load_model
from ctmtl.inference.overlay import overlay_image

__all__ = [
    "Detection",
    "Prediction",
    "Predictor",
    "check_outputs",
    "predict_files",
    "PREDICTION_FORMAT",
    "DETECTIONS_FORMAT",
    "POST_CHAIN",
]

CLASS, SEG, RECON, DET = SHORT_TASKS
#: heads whose outputs are predictions (``recon`` reproduces the input and is not run)
PREDICTED_TASKS: tuple[str, ...] = (CLASS, SEG, DET)
#: post-processing chain of one sample's outputs (``transforms/inference_post.json``)
POST_CHAIN = "inference_post"
PREDICTION_FORMAT = "ctmtl-prediction/1"
DETECTIONS_FORMAT = "ctmtl-detections/1"
BOX_CONVENTION = "xyxy pixels of the slice as stored in the input (x = column, y = row; pixel edges: columns 3..7 are x1=3, x2=8)"


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Detection:
    """One detected box, on the input as stored.

    Attributes:
        slice: slice index (last voxel axis) of a volume; 0 for a 2D image.
        box: ``(x1, y1, x2, y2)`` pixels of that slice (x = column, y = row, pixel edges).
        score: detector score in [0, 1].
        label: detection class label, 1..K.
        class_name: its name (``lesion`` unless the model says otherwise).
        world: volumes only: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` RAS millimetres of the box on the
            slice's slab (the axis-aligned box around its corners); ``None`` for a 2D image.
        slice_uid: DICOM series: the slice's SOPInstanceUID.
    """

    slice: int
    box: tuple[float, float, float, float]
    score: float
    label: int
    class_name: str
    world: tuple[float, ...] | None = None
    slice_uid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"slice": self.slice, "class": self.class_name, "label": self.label, "score": _round(self.score),
                               "box": [_round(v, 3) for v in self.box]}
        if self.slice_uid:
            out["sop_uid"] = self.slice_uid
        if self.world is not None:
            ras = np.asarray(self.world, dtype=np.float64).reshape(2, 3)
            lps = np.sort((RAS_TO_LPS[:3, :3] @ ras.T).T, axis=0)
            out["world_ras_mm"] = {"min": _round(ras[0], 3), "max": _round(ras[1], 3), "center": _round(ras.mean(0), 3)}
            out["patient_lps_mm"] = {"min": _round(lps[0], 3), "max": _round(lps[1], 3), "center": _round(lps.mean(0), 3)}
        return out


@dataclass
class Prediction:
    """The predictions of one input, on the input's own grid.

    Attributes:
        source: the input (:class:`ctmtl.inference.PredictInput`: name, kind, path, provenance).
        shape: spatial shape of the input as stored: ``(H, W)`` for a 2D image (rows x columns as PIL reads it),
            ``(H, W, D)`` for a NIfTI volume (its voxel axes) or a DICOM series (rows, columns, slices sorted
            along the slice normal).
        affine: float64 ``4 x 4`` voxel -> world (RAS mm) of the input; the identity for a 2D image.
        mask: ``seg`` head: uint8 lesion labels of shape ``shape`` (0 background; 1 lesion for a single-channel
            model, else the lesion labels 1..K of ``ctmtl.constants.LESION_LABELS``); for a 2D image it aligns
            pixel for pixel with ``numpy.asarray(PIL.Image.open(path))``. ``None`` without a ``seg`` head.
        class_names: the diagnosis classes, in label order.
        slice_probabilities: ``class`` head: float32 ``(D, C)`` softmax probabilities of each slice (``D = 1`` for
            a 2D image); ``None`` without a ``class`` head.
        probabilities: ``class`` head: class name -> probability of the input, the mean of its slice
            probabilities (every slice counts alike); ``None`` without a ``class`` head.
        detections: ``det`` head: the boxes scoring at least the predictor's ``score_threshold``, best first;
            ``None`` without a ``det`` head.
        burden: ``seg`` head: lesion burden (see :meth:`Predictor.burden`); ``None`` without a ``seg`` head.
        slice_uids: DICOM series: SOPInstanceUID of each slice index.
        previews: slice index -> float32 ``(H, W)`` in [0, 1], the network's input mapped back onto the stored
            slice, for the overlay pictures (a few slices, see :class:`Predictor`).
        chain: the preprocessing chain used (name, file, parameters).
        seconds: wall time of the prediction (preprocessing, network, post-processing).
    """

    source: PredictInput
    shape: tuple[int, ...]
    affine: np.ndarray
    mask: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    slice_probabilities: np.ndarray | None = None
    probabilities: dict[str, float] | None = None
    detections: list[Detection] | None = None
    burden: dict[str, Any] | None = None
    slice_uids: list[str] | None = None
    previews: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    chain: dict[str, Any] = field(default_factory=dict, repr=False)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """Output folder name of the input."""
        return self.source.name

    @property
    def num_slices(self) -> int:
        return 1 if len(self.shape) == 2 else int(self.shape[2])

    @property
    def predicted_class(self) -> str | None:
        """The class of highest mean probability, or ``None`` without a ``class`` head."""
        if not self.probabilities:
            return None
        return max(self.probabilities, key=self.probabilities.get)

    def summary(self) -> str:
        """One line: the predicted class, lesion burden and box count."""
        parts = []
        if self.probabilities:
            top = self.predicted_class
            parts.append(f"class {top} ({self.probabilities[top]:.2f})")
        if self.burden is not None:
            b = self.burden
            volume = f"{b['lesion_volume_ml']:.2f} mL" if b.get("lesion_volume_ml") is not None else f"{b['lesion_voxels']} px"
            parts.append(f"lesion {volume} in {b['slices_with_lesion']}/{b['slices']} slice(s)")
        if self.detections is not None:
            parts.append(f"{len(self.detections)} box(es)")
        return ", ".join(parts)


def _round(value: Any, digits: int = 6) -> Any:
    if isinstance(value, np.ndarray):
        return [_round(v, digits) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    return round(float(value), digits)


# --------------------------------------------------------------------------------------------- predictor


def _progress_default() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Predictor:
    """Predict lesion masks, class probabilities and boxes for files with a trained model.

    Args:
        model: a :class:`ctmtl.inference.LoadedModel`, or a trained bundle folder / its ``models/model.pt``
            (loaded with :func:`ctmtl.inference.load_model`).
        device: where the network runs; default the loaded model's (CUDA when there is one). A loaded model is
            moved there.
        batch_size: slices per forward pass.
        threshold: a pixel whose ``seg`` probability is at least this is lesion (single-channel sigmoid models, MONAI
            ``AsDiscrete(threshold=...)``); a multi-class model takes the argmax.
        score_threshold: ``det`` boxes scoring below this are dropped.
        overlays: number of slices kept for overlay pictures (those with the most lesion, then the best boxes,
            else evenly spread); 0 keeps none.
        progress: show a progress bar over slices (tqdm); default when stderr is a terminal.
        threads: torch intra-op CPU threads while predicting (``None``: torch's setting). On a CPU shared with
            other work, ``1`` can be many times faster than contended threads (see
            :func:`ctmtl.data.pipeline.torch_threads`).

    Example::

        predictor = Predictor("runs/exp1/bundle")
        pred = predictor.predict("scan.png")     # pred.mask: uint8 (H, W), aligned with PIL.Image.open("scan.png")
        predictor.write(pred, "out")             # out/scan/{mask.nii.gz, mask.png, prediction.json, ...}

    Raises:
        ModelError: the model does not load, or has none of the ``class``, ``seg``, ``det`` heads.
    """

    def __init__(
        self,
        model: LoadedModel | str | Path,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        threshold: float = 0.5,
        score_threshold: float = 0.5,
        overlays: int = 4,
        progress: bool | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, LoadedModel):
            if device is not None and torch.device(device) != model.device:
                model.network.to(device)
                model.device = torch.device(device)
        else:
            model = load_model(model, device)
        model.network.eval()
        self.model = model
        self.tasks = tuple(t for t in PREDICTED_TASKS if t in model.tasks)
        if not self.tasks:
            raise ModelError(f"{model.bundle_root}: the network has heads {model.tasks}, none of {PREDICTED_TASKS} to predict with")
        self.batch_size = int(batch_size)
        self.threshold = float(threshold)
        self.score_threshold = float(score_threshold)
        self.overlays = int(overlays)
        self.progress = _progress_default() if progress is None else bool(progress)
        self.threads = threads
        self._chains: dict[tuple[str, str], Chain] = {}
        self._post: dict[bool, Chain] = {}
        self._provenance: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def det_class_names(self) -> tuple[str, ...]:
        """Detection class names, label ``i + 1`` for entry ``i``: the bundle's ``det_class_names``, else the
        chain parameter ``box_classes`` of training, else ``("lesion",)``."""
        config = self.model.config
        if config is not None and "det_class_names" in config:
            return tuple(config.get_parsed_content("det_class_names"))
        return tuple(self.model.chain_overrides.get("box_classes") or ("lesion",))

    # ---------------------------------------------------------------------------------------- chains

    def chain_for(self, item: PredictInput) -> Chain:
        """The input's preprocessing chain with the model's ``chain_overrides`` and every slice selected (cached).

        Raises:
            ChainError: the chain does not exist or does not build (one line naming the input).
        """
        key = (item.chain_name, str(item.chain_dir or ""))
        if key not in self._chains:
            overrides = {**self.model.chain_overrides, "slice_mode": "all"}
            try:
                self._chains[key] = load_chain(item.chain_name, overrides, search_dirs=self.model.chain_dirs,
                                               base_dir=item.chain_dir)
            except ChainError as err:
                raise ChainError([f"{item.path}: {line}" for line in err.problems]) from None
        return self._chains[key]

    def check(self, inputs: Sequence[PredictInput]) -> None:
        """Build the chain of every input now, so a bad chain fails before the first prediction.

        Raises:
            ChainError: one line per input whose chain does not build.
        """
        problems: list[str] = []
        for item in inputs:
            try:
                self.chain_for(item)
            except ChainError as err:
                problems += err.problems
        if problems:
            raise ChainError(problems)

    def _post_chain(self, multiclass: bool) -> Chain:
        if multiclass not in self._post:
            params = {"multiclass_seg": multiclass, "seg_threshold": self.threshold, "invert": False}
            self._post[multiclass] = load_chain(POST_CHAIN, params, search_dirs=self.model.chain_dirs, strict=True)
        return self._post[multiclass]

    def _preprocess(self, item: PredictInput, chain: Chain) -> list[dict]:
        request = {"image": str(item.path), "meta": {"entry_id": item.name, "kind": item.kind, "chain": chain.name}}
        try:
            with torch_threads(1):  # per-slice transforms gain nothing from intra-op threads (see torch_threads)
                out = chain(request)
        except Exception as err:  # noqa: BLE001 - MONAI wraps the error of the step that failed; report that one
            cause = _root_cause(err)
            if isinstance(cause, CtmtlError):
                raise type(cause)(cause.problems) from None
            msg = " ".join(str(cause).split()) or type(cause).__name__
            raise DataError(f"{item.path}: chain {chain.name!r}: {type(cause).__name__}: {msg}") from None
        return out if isinstance(out, list) else [out]

    # --------------------------------------------------------------------------------------- predict

    def predict(self, source: PredictInput | str | Path) -> Prediction:
        """Predict one input: a NIfTI file, a DICOM series folder, a 2D image, or a :class:`PredictInput`.

        Returns:
            a :class:`Prediction` on the input's own grid.

        Raises:
            DataError: the path is not one input (missing, not an image, a folder of several inputs...), or the
                input fails in its chain.
            ChainError: its chain does not build.
        """
        with torch_threads(self.threads):
            return self._predict(source)

    def _predict(self, source: PredictInput | str | Path) -> Prediction:
        start = time.perf_counter()
        item = source if isinstance(source, PredictInput) else self._single_input(source)
        chain = self.chain_for(item)
        samples = self._preprocess(item, chain)
        metas = [s["meta"] for s in samples]
        first = metas[0]
        original = [int(s) for s in first["original_shape"]]
        shape = tuple(original[:2]) if item.is_2d else tuple(original)
        affine = np.asarray(first.get("affine", np.eye(4)), dtype=np.float64)

        class_probs: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        raw_dets: list[dict[str, torch.Tensor]] = []
        multiclass = False
        bar = tqdm(total=len(samples), desc=item.name, unit="slice", disable=not self.progress, leave=False)
        with torch.no_grad():
            for begin in range(0, len(samples), self.batch_size):
                batch = multitask_collate(samples[begin : begin + self.batch_size])
                out = self.model.inferer(batch["image"].to(self.device), self.model.network, tasks=self.tasks)
                seg = out[SEG].float().cpu() if SEG in out else None
                logits = out[CLASS].float().cpu() if CLASS in out else None
                multiclass = seg is not None and seg.shape[1] > 1
                post = self._post_chain(multiclass)
                for i, meta in enumerate(batch["meta"]):
                    d: dict[str, Any] = {"meta": meta}
                    if logits is not None:
                        d[CLASS] = logits[i]
                    if seg is not None:
                        d[SEG] = seg[i]
                    d = post(d)
                    if logits is not None:
                        class_probs.append(torch.as_tensor(d[CLASS]).float())
                    if seg is not None:
                        labels.append(torch.as_tensor(d[SEG]))
                if DET in out:
                    raw_dets += [{k: v.detach().float().cpu() for k, v in det.items()} for det in out[DET]]
                bar.update(len(batch["meta"]))
        bar.close()

        pred = Prediction(source=item, shape=shape, affine=affine, class_names=tuple(self.model.class_names),
                          chain={"name": chain.name, "path": str(chain.path), "digest": chain.digest, "params": chain.params})
        uids = [m.get("slice_uid") for m in metas]
        pred.slice_uids = [str(u) for u in uids] if all(uids) else None
        if labels:
            volume = assemble_volume(zip(labels, metas), mode="nearest")
            mask = np.rint(volume[0].numpy()).astype(np.uint8)
            pred.mask = mask[..., 0] if item.is_2d else mask
            pred.burden = self.burden(pred.mask, affine, is_2d=item.is_2d, multiclass=multiclass)
        if class_probs:
            pred.slice_probabilities = torch.stack(class_probs).numpy().astype(np.float32)
            names = self._class_names(pred.slice_probabilities.shape[1])
            pred.class_names = names
            pred.probabilities = {n: float(p) for n, p in zip(names, pred.slice_probabilities.mean(axis=0))}
        if DET in self.tasks:
            pred.detections = self._detections(raw_dets, metas, affine, item.is_2d)
        pred.previews = self._previews(pred, samples)
        pred.seconds = time.perf_counter() - start
        return pred

    def _single_input(self, path: str | Path) -> PredictInput:
        inputs = find_inputs([path])
        if len(inputs) != 1:
            raise DataError(f"{path}: holds {len(inputs)} inputs; predict them one by one (find_inputs) or with predict_files")
        return inputs[0]

    def _class_names(self, n: int) -> tuple[str, ...]:
        names = tuple(self.model.class_names)
        return names if len(names) == n else tuple(f"class-{i}" for i in range(n))

    def _detections(self, raw: list[dict[str, torch.Tensor]], metas: list[dict], affine: np.ndarray, is_2d: bool) -> list[Detection]:
        names = self.det_class_names
        found: list[Detection] = []
        for det, meta in zip(raw, metas):
            keep = det["scores"] >= self.score_threshold
            if not bool(keep.any()):
                continue
            boxes, kept = invert_boxes(det["boxes"][keep], meta)
            scores, labels = det["scores"][keep][kept], det["labels"][keep][kept].long()
            k = int(meta.get("slice") or 0)
            world = None if is_2d else boxes_to_world(boxes, affine, k)
            for j in range(boxes.shape[0]):
                label = int(labels[j])
                found.append(Detection(
                    slice=k,
                    box=tuple(float(v) for v in boxes[j]),
                    score=float(scores[j]),
                    label=label,
                    class_name=names[label - 1] if 1 <= label <= len(names) else f"class-{label}",
                    world=None if world is None else tuple(float(v) for v in world[j]),
                    slice_uid=meta.get("slice_uid"),
                ))
        found.sort(key=lambda d: -d.score)
        return found

    def _previews(self, pred: Prediction, samples: list[dict]) -> dict[int, np.ndarray]:
        """The network input of a few slices mapped back onto the stored slice (bilinear), for overlays."""
        if self.overlays <= 0:
            return {}
        n = pred.num_slices
        chosen: list[int] = []
        if pred.mask is not None:
            area = (pred.mask.reshape(*pred.mask.shape[:2], -1) > 0).sum(axis=(0, 1))
            chosen += [int(k) for k in np.argsort(-area, kind="stable") if area[k] > 0]
        for det in pred.detections or []:
            chosen.append(det.slice)
        chosen = list(dict.fromkeys(chosen))[: self.overlays]
        if not chosen:
            chosen = sorted(set(np.linspace(0, n - 1, min(self.overlays, n)).round().astype(int).tolist()))
        by_slice = {int(s["meta"].get("slice") or 0): s for s in samples}
        out = {}
        for k in sorted(chosen):
            sample = by_slice[k]
            out[k] = invert_prediction(sample["image"], sample["meta"], mode="bilinear")[0].numpy().astype(np.float32)
        return out

    @staticmethod
    def burden(mask: np.ndarray, affine: np.ndarray, is_2d: bool = False, multiclass: bool = False) -> dict[str, Any]:
        """Lesion burden of a label mask.

        Args:
            mask: ``(H, W)`` or ``(H, W, D)`` integer labels.
            affine: ``4 x 4`` voxel -> world mm; a voxel's volume is ``|det(affine[:3, :3])|``.
            is_2d: a 2D image: no physical spacing, so no volume (``lesion_volume_ml`` is ``None``).
            multiclass: also count each lesion label (names from ``ctmtl.constants.LESION_LABELS``).

        Returns:
            ``lesion_voxels``; ``voxel_volume_ml`` and ``lesion_volume_ml`` (``None`` for 2D); ``slices``,
            ``slices_with_lesion`` and ``slices_with_lesion_percent`` (100 x slices with any lesion voxel / slices);
            ``lesion_percent`` (100 x lesion voxels / voxels); ``per_label`` ({name: {voxels, volume_ml}}) when
            ``multiclass``.
        """
        volume = mask.reshape(*mask.shape[:2], -1)
        lesion = volume > 0
        per_slice = lesion.any(axis=(0, 1))
        voxel_ml = None if is_2d else float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
        n = int(lesion.sum())
        out: dict[str, Any] = {
            "lesion_voxels": n,
            "voxel_volume_ml": None if voxel_ml is None else _round(voxel_ml, 9),
            "lesion_volume_ml": None if voxel_ml is None else _round(n * voxel_ml, 4),
            "slices": int(volume.shape[-1]),
            "slices_with_lesion": int(per_slice.sum()),
            "slices_with_lesion_percent": _round(100.0 * per_slice.mean(), 3),
            "lesion_percent": _round(100.0 * lesion.mean(), 4),
        }
        if multiclass:
            out["per_label"] = {}
            for value, name in LESION_LABELS.items():
                if value == 0:
                    continue
                count = int((volume == value).sum())
                out["per_label"][name] = {"voxels": count, "volume_ml": None if voxel_ml is None else _round(count * voxel_ml, 4)}
        return out

    # ----------------------------------------------------------------------------------------- write

    def provenance(self) -> dict[str, Any]:
        """The model's part of ``prediction.json``: bundle, weights (file and SHA-256), metadata name and version,
        slice size, heads, classes, device, ctmtl version."""
        if self._provenance is None:
            model = self.model
            weights = getattr(model, "weights", None)
            info: dict[str, Any] = {"bundle": str(model.bundle_root)}
            if weights is not None:
                info["weights"] = str(weights)
                info["weights_sha256"] = _sha256(Path(weights))
            metadata = Path(model.bundle_root) / "configs" / "metadata.json"
            if metadata.is_file():
                try:
                    meta = json.loads(metadata.read_text())
                    info.update({k: meta[k] for k in ("name", "version") if k in meta})
                except (OSError, ValueError):
                    pass
            info.update({"image_size": list(model.image_size), "heads": list(model.tasks), "heads_run": list(self.tasks),
                         "class_names": list(model.class_names), "chain_overrides": model.chain_overrides})
            self._provenance = info
        return {**self._provenance, "device": str(self.device), "ctmtl_version": __version__}

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "score_threshold": self.score_threshold, "batch_size": self.batch_size}

    def _input_info(self, pred: Prediction) -> dict[str, Any]:
        item = pred.source
        info: dict[str, Any] = {"name": item.name, "path": str(item.path), "kind": item.kind, "shape": list(pred.shape),
                                "affine": _round(pred.affine), "chain": pred.chain}
        if not item.is_2d:
            info["spacing_mm"] = _round(np.linalg.norm(pred.affine[:3, :3], axis=0), 6)
        info.update(item.provenance)
        return info

    def prediction_json(self, pred: Prediction) -> dict[str, Any]:
        """The content of ``prediction.json`` (see the module docstring)."""
        doc: dict[str, Any] = {
            "format": PREDICTION_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": self._input_info(pred),
            "model": self.provenance(),
            "settings": self.settings(),
            "seconds": round(pred.seconds, 3),
        }
        if pred.probabilities is not None:
            doc["classification"] = {
                "classes": list(pred.class_names),
                "predicted": pred.predicted_class,
                "probabilities": {k: _round(v) for k, v in pred.probabilities.items()},
                "aggregation": "mean of the slice probabilities (softmax of each slice), every slice counting alike",
            }
        if pred.mask is not None:
            merged = "per_label" not in (pred.burden or {})
            doc["segmentation"] = {
                "mask": "mask.nii.gz",
                "labels": {"0": "background", "1": "lesion"} if merged else {str(k): v for k, v in LESION_LABELS.items()},
                "burden": pred.burden,
            }
        slices = []
        area = None if pred.mask is None else (pred.mask.reshape(*pred.mask.shape[:2], -1) > 0).sum(axis=(0, 1))
        for k in range(pred.num_slices):
            row: dict[str, Any] = {"slice": k}
            if pred.slice_uids:
                row["sop_uid"] = pred.slice_uids[k]
            if pred.slice_probabilities is not None:
                row["probabilities"] = {n: _round(p) for n, p in zip(pred.class_names, pred.slice_probabilities[k])}
            if area is not None:
                row["lesion_pixels"] = int(area[k])
            if pred.detections is not None:
                row["boxes"] = sum(1 for d in pred.detections if d.slice == k)
            slices.append(row)
        doc["slices"] = slices
        return doc

    def detections_json(self, pred: Prediction) -> dict[str, Any]:
        """The content of ``detections.json``."""
        doc = {
            "format": DETECTIONS_FORMAT,
            "input": {"name": pred.name, "path": str(pred.source.path), "kind": pred.source.kind, "shape": list(pred.shape)},
            "classes": list(self.det_class_names),
            "score_threshold": self.score_threshold,
            "box": BOX_CONVENTION,
            "detections": [d.to_dict() for d in pred.detections or []],
        }
        if not pred.source.is_2d:
            doc["world"] = ("world_ras_mm: RAS millimetres (the affine of mask.nii.gz); patient_lps_mm: DICOM patient "
                            "coordinates (LPS); min/max of the box on its slice's slab")
        return doc

    def write(self, pred: Prediction, out_dir: str | Path, overwrite: bool = False, overlays: bool = True) -> Path:
        """Write a prediction to ``out_dir/<name>/`` (see the module docstring for the files).

        The files are written to a hidden sibling folder first and moved into place at the end, so an interrupted
        run leaves no half-written output folder.

        Args:
            pred: from :meth:`predict`.
            out_dir: the output folder of the run (``--out``).
            overwrite: replace an existing ``out_dir/<name>/`` (removed first); otherwise it is an error.
            overlays: also write the overlay pictures.

        Returns:
            the folder written.

        Raises:
            DataError: the folder exists and ``overwrite`` is not set.
        """
        out_dir = Path(out_dir)
        target = out_dir / pred.name
        check_outputs([pred.source], out_dir, overwrite)
        partial = out_dir / f".{pred.name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        if pred.mask is not None:
            save_volume(MetaTensor(torch.from_numpy(np.ascontiguousarray(pred.mask)), affine=torch.as_tensor(pred.affine)),
                        partial / "mask.nii.gz")
            if pred.source.is_2d:
                from PIL import Image

                Image.fromarray(np.ascontiguousarray(pred.mask, dtype=np.uint8), mode="L").save(partial / "mask.png")
        _write_json(partial / "prediction.json", self.prediction_json(pred))
        if pred.detections is not None:
            _write_json(partial / "detections.json", self.detections_json(pred))
        if overlays:
            for k, image in pred.previews.items():
                mask = None if pred.mask is None else (pred.mask if pred.source.is_2d else pred.mask[..., k])
                dets = [d for d in pred.detections or [] if d.slice == k]
                name = "overlay.png" if pred.source.is_2d else f"overlay_slice{k:03d}.png"
                overlay_image(image, mask, [d.box for d in dets], [f"{d.class_name} {d.score:.2f}" for d in dets], partial / name)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        partial.rename(target)
        return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON with nested objects indented, and short ones (a slice's row, a box, an affine) kept on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    flat = json.dumps(value, default=str)
    if len(flat) + indent <= 120 and not any(isinstance(v, Mapping) and len(v) > 4 for v in _values(value)):
        return flat
    if isinstance(value, Mapping) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        return "[\n" + ",\n".join(f"{inner}{_dumps(v, indent + 2)}" for v in value) + "\n" + pad + "]"
    return flat


def _values(value: Any) -> list:
    return list(value.values()) if isinstance(value, Mapping) else list(value) if isinstance(value, (list, tuple)) else []


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(_dumps(doc) + "\n")


# ------------------------------------------------------------------------------------------ the command


def check_outputs(inputs: Sequence[PredictInput], out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse to overwrite: every ``out_dir/<name>`` that exists is a problem unless ``overwrite``.

    Raises:
        DataError: ``out_dir`` is a file, or one line per existing output folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: the output folder is a file")
    if overwrite:
        return
    taken = [out_dir / item.name for item in inputs if (out_dir / item.name).exists()]
    if taken:
        raise DataError([f"{folder}: output exists (use --overwrite to replace it)" for folder in taken])


def predict_files(
    model: LoadedModel | str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    split: str | None = None,
    overwrite: bool = False,
    overlays: bool = True,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    threshold: float = 0.5,
    score_threshold: float = 0.5,
    progress: bool | None = None,
    threads: int | None = None,
    log: Callable[[str], Any] | None = print,
) -> list[Path]:
    """``ctmtl predict``: check every input and output first, then predict and write each input.

    Args:
        model: trained bundle folder, its ``models/model.pt``, or a loaded model.
        paths: inputs (see :func:`ctmtl.inference.find_inputs`).
        out_dir: output folder; each input writes ``out_dir/<name>/``.
        split: for manifest inputs, only this split.
        overwrite: replace existing output folders.
        overlays: write overlay pictures.
        device, batch_size, threshold, score_threshold, progress, threads: see :class:`Predictor`.
        log: called with one line per input written (``None``: silent).

    Returns:
        the folders written, in input order.

    Raises:
        DataError: a bad input (all listed, one line each) or an existing output, before any prediction;
            a failure while predicting an input.
        ModelError: the model does not load (after the inputs and outputs were checked).
        ChainError: an input's chain does not build (before any prediction).
    """
    inputs = find_inputs(paths, split)
    check_outputs(inputs, out_dir, overwrite)
    predictor = Predictor(model, device=device, batch_size=batch_size, threshold=threshold, score_threshold=score_threshold,
                          overlays=4 if overlays else 0, progress=progress, threads=threads)
    predictor.check(inputs)
    written = []
    for item in inputs:
        pred = predictor.predict(item)
        folder = predictor.write(pred, out_dir, overwrite=overwrite, overlays=overlays)
        written.append(folder)
        if log is not None:
            size = " x ".join(str(s) for s in pred.shape)
            log(f"{item.path} ({item.kind}, {size}) -> {folder}: {pred.summary()} [{pred.seconds:.1f} s]")
    return written

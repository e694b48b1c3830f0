"""Validation and test metrics of every task, as accumulators and one Ignite adapter.

Each task has an accumulator with ``reset()``, ``update(out, batch)`` and ``compute() -> dict``:

- ``out`` is the output of :class:`ctmtl.networks.MultiTaskNet` in eval mode (``out["class"]`` logits
  ``B x K``, ``out["seg"]`` logits ``B x C x H x W``, ``out["recon"]`` ``B x 1 x H x W``, ``out["det"]`` a list
  of B dicts with ``boxes`` / ``labels`` / ``scores`` [/ ``masks``]), see docs/architecture.md;
- ``batch`` is the output of ``ctmtl.data.pipeline.multitask_collate``. A sample whose
  ``batch["has"][task]`` is False carries no label for that task and is skipped by that task's metrics.

``compute()`` returns a flat dict whose keys start with the short task name (``class_``, ``seg_``,
``recon_``, ``det_``). Scalars are Python floats (NaN where undefined, with a line in ``notes``); per-class
values are lists in class order; ``<task>_n`` is the number of labelled samples seen. The keys are fixed
for a given configuration, whatever the data (see each class for its list).

The numbers come from MONAI (segmentation, reconstruction, detection matching and COCO AP) and
scikit-learn (classification, ROC curves). Hand-written code is limited to what neither has: the
Youden cut-off, the pixel subsampling for the pixel ROC, and the mask IoU matrix of the mask AP.

:class:`MultiTaskMetrics` holds one accumulator per task; :class:`IgniteMetricAdapter` lets an Ignite
evaluator attach any of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU, MSEMetric, PSNRMetric, SSIMMetric
from monai.utils import convert_to_tensor
from sklearn.metrics import accuracy_score, auc, confusion_matrix, f1_score, roc_curve

from ctmtl.constants import CLASS_NAMES, LESION_LABELS, SHORT_TASKS

__all__ = [
    "TaskMetrics",
    "ClassificationMetrics",
    "SegmentationMetrics",
    "ReconstructionMetrics",
    "DetectionMetrics",
    "MultiTaskMetrics",
    "IgniteMetricAdapter",
    "TASK_METRICS",
    "roc_with_youden",
    "mask_iou",
    "instance_masks_from_boxes",
]

logger = logging.getLogger(__name__)

NAN = float("nan")
MetricDict = dict[str, Any]


def _plain(x: Any) -> torch.Tensor:
    """A detached plain ``torch.Tensor`` (MetaTensor -> Tensor, numpy -> Tensor), on its own device."""
    return convert_to_tensor(x, track_meta=False).detach()


def _numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A CPU numpy array of a tensor / array / list."""
    if isinstance(x, torch.Tensor):
        x = _plain(x).cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _float(x: Any) -> float:
    """A Python float of a 0-d tensor / numpy scalar / number."""
    return float(x.item()) if hasattr(x, "item") else float(x)


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is (no RuntimeWarning, unlike ``np.nanmean``)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else NAN


def _labelled(batch: Mapping[str, Any], task: str) -> torch.Tensor:
    """Indices (int64, CPU) of the samples of ``batch`` that carry a label for ``task`` (``batch["has"][task]``)."""
    try:
        has = batch["has"][task]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"batch has no has[{task!r}]: expected the output of multitask_collate (docs/architecture.md, Batch)"
        ) from err
    return torch.nonzero(torch.as_tensor(has, dtype=torch.bool).reshape(-1).cpu()).reshape(-1)


def _output(out: Mapping[str, Any], task: str) -> Any:
    """``out[task]``, or a clear error when the network did not compute that head."""
    if task not in out:
        raise ValueError(
            f"network output has no {task!r} head (got {sorted(out)}); run the net with tasks including {task!r} "
            f"or leave {task!r} out of the metrics"
        )
    return out[task]


def roc_with_youden(y_true: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """ROC curve, its area and the Youden-index cut-off of one binary problem (scikit-learn ``roc_curve``).

    Args:
        y_true: ``N`` bool / {0, 1}, True for the positive class.
        score: ``N`` float, higher means more likely positive (e.g. a softmax probability in [0, 1]).

    Returns:
        ``{"fpr": N_t, "tpr": N_t, "thresholds": N_t, "auc": float, "youden_threshold": float, "youden_j": float}``.
        The Youden index is ``J = sensitivity + specificity - 1 = tpr - fpr``; the cut-off is the score
        threshold of the ROC point with the largest J (predict positive when ``score >= cut-off``). The first
        ROC point ``(0, 0)`` has an infinite threshold and is never chosen. When ``y_true`` holds only one
        value the ROC curve is undefined: every number is NaN and the arrays are empty.
    """
    y_true = np.asarray(y_true).astype(bool).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if y_true.all() or not y_true.any():
        empty = np.zeros(0)
        return {"fpr": empty, "tpr": empty, "thresholds": empty, "auc": NAN, "youden_threshold": NAN, "youden_j": NAN}
    fpr, tpr, thresholds = roc_curve(y_true, score)
    # scikit-learn has no Youden cut-off; it is one argmax over its ROC curve (first point skipped, see above)
    j = tpr[1:] - fpr[1:]
    best = int(np.argmax(j)) + 1
    return {
        "fpr": fpr,
        "tpr": tpr,
        "thresholds": thresholds,
        "auc": float(auc(fpr, tpr)),
        "youden_threshold": float(thresholds[best]),
        "youden_j": float(tpr[best] - fpr[best]),
    }


class TaskMetrics:
    """Base of the per-task accumulators.

    Subclasses set ``task`` (short task name) and implement ``reset``, ``update`` and ``compute``.
    ``notes`` lists, after ``compute()``, why any value is NaN (e.g. a class absent from the ground truth).
    """

    task: str = ""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.num_samples = 0

    def reset(self) -> None:
        """Forget every sample seen."""
        raise NotImplementedError

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Add the labelled samples of one batch (network output ``out``, collated ``batch``)."""
        raise NotImplementedError

    def compute(self) -> MetricDict:
        """Metrics over every sample seen since ``reset()`` (a flat dict, keys prefixed with ``task``)."""
        raise NotImplementedError

    def roc_curves(self) -> dict[str, dict[str, Any]]:
        """ROC curves by class name (``{"fpr", "tpr", "auc"}``) for tasks that have them; empty otherwise."""
        return {}

    def _note(self, message: str) -> None:
        self.notes.append(f"{self.task}: {message}")
        logger.warning("%s: %s", self.task, message)


class ClassificationMetrics(TaskMetrics):
    """Diagnosis classification metrics (scikit-learn) from ``out["class"]`` logits ``B x K`` and ``batch["class"]``.

    Probabilities are ``softmax(logits)``; the predicted class is their argmax.

    Keys of ``compute()`` (K = ``len(class_names)``; lists in class order):

    - ``class_accuracy``: float in [0, 1].
    - ``class_f1_macro``: mean of the per-class F1 over classes present in the ground truth or predictions.
    - ``class_f1``: list of K floats; NaN for a class that is neither in the ground truth nor predicted.
    - ``class_auc``: list of K one-vs-rest ROC AUCs of the class probability; NaN (and a note) when the
      ground truth has no sample of the class, or only samples of it.
    - ``class_auc_macro``: mean of the defined ``class_auc`` values (NaN when none is defined).
    - ``class_youden_threshold``, ``class_youden_j``: per class, the probability cut-off that maximises the
      Youden index on the one-vs-rest ROC curve, and that maximum (see :func:`roc_with_youden`).
    - ``class_confusion_matrix``: K x K list of int counts, rows = ground truth, columns = prediction.
    - ``class_n``: number of labelled samples.

    Args:
        class_names: names of the classes in label order.
    """

    task = "class"

    def __init__(self, class_names: Sequence[str] = CLASS_NAMES) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self.num_samples = 0
        self.notes = []

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Args: ``out["class"]`` float ``B x K`` logits; ``batch["class"]`` int64 ``B``; ``batch["has"]["class"]``."""
        idx = _labelled(batch, self.task)
        if idx.numel() == 0:
            return
        logits = _plain(_output(out, self.task)).float()
        if logits.ndim != 2 or logits.shape[1] != len(self.class_names):
            raise ValueError(
                f"out['class'] has shape {tuple(logits.shape)}, expected B x {len(self.class_names)} "
                f"(classes {self.class_names})"
            )
        labels = _plain(batch["class"]).reshape(-1).cpu()[idx].long()
        bad = labels[(labels < 0) | (labels >= len(self.class_names))]
        if bad.numel():
            raise ValueError(f"batch['class'] holds {bad.tolist()}, expected labels in 0..{len(self.class_names) - 1}")
        self._probs.append(torch.softmax(logits[idx.to(logits.device)], dim=1).cpu())
        self._labels.append(labels)
        self.num_samples += int(idx.numel())

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.class_names)
        if not self._labels:
            return np.zeros(0, dtype=np.int64), np.zeros((0, k))
        return torch.cat(self._labels).numpy(), torch.cat(self._probs).double().numpy()

    def compute(self) -> MetricDict:
        self.notes = []
        k = len(self.class_names)
        y_true, probs = self._arrays()
        if y_true.size == 0:
            self._note("no labelled sample; every metric is NaN")
            nan_list = [NAN] * k
            return {
                "class_accuracy": NAN,
                "class_f1_macro": NAN,
                "class_f1": nan_list,
                "class_auc_macro": NAN,
                "class_auc": list(nan_list),
                "class_youden_threshold": list(nan_list),
                "class_youden_j": list(nan_list),
                "class_confusion_matrix": [[0] * k for _ in range(k)],
                "class_n": 0,
            }
        y_pred = probs.argmax(axis=1)
        labels = list(range(k))
        # zero_division=nan: a class absent from both ground truth and prediction has no F1 and is left
        # out of the macro mean, rather than counting as 0
        f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
        rocs = [roc_with_youden(y_true == c, probs[:, c]) for c in labels]
        for c, roc in zip(labels, rocs):
            if math.isnan(roc["auc"]):
                what = "no sample" if not (y_true == c).any() else "only samples"
                self._note(f"ground truth has {what} of class {self.class_names[c]!r}: its ROC AUC is NaN")
        aucs = [roc["auc"] for roc in rocs]
        return {
            "class_accuracy": float(accuracy_score(y_true, y_pred)),
            "class_f1_macro": _nanmean([float(v) for v in f1]),
            "class_f1": [float(v) for v in f1],
            "class_auc_macro": _nanmean(aucs),
            "class_auc": aucs,
            "class_youden_threshold": [roc["youden_threshold"] for roc in rocs],
            "class_youden_j": [roc["youden_j"] for roc in rocs],
            "class_confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
            "class_n": int(y_true.size),
        }

    def roc_curves(self) -> dict[str, dict[str, Any]]:
        """One-vs-rest ROC curve per class with a defined AUC: ``{name: {"fpr", "tpr", "auc"}}`` (numpy arrays)."""
        y_true, probs = self._arrays()
        curves = {}
        for c, name in enumerate(self.class_names):
            roc = roc_with_youden(y_true == c, probs[:, c])
            if not math.isnan(roc["auc"]):
                curves[name] = {"fpr": roc["fpr"], "tpr": roc["tpr"], "auc": roc["auc"]}
        return curves


def _lesion_names(num_channels: int) -> tuple[str, ...]:
    """Default names of the lesion classes scored for a seg head with ``num_channels`` output channels."""
    if num_channels == 1:
        return ("lesion",)
    return tuple(LESION_LABELS.get(c, f"label-{c}") for c in range(1, num_channels))


class SegmentationMetrics(TaskMetrics):
    """Lesion segmentation metrics (MONAI) from ``out["seg"]`` logits and ``batch["mask"]``.

    Head types (docs/architecture.md):

    - ``C = 1`` (merged lesions): lesion probability ``sigmoid(logit)``, predicted lesion where it is
      ``>= threshold``; every non-zero ground-truth label counts as lesion. One lesion class, ``lesion``.
    - ``C = K + 1`` (softmax): prediction = argmax; lesion classes 1..K are scored one-vs-rest, background
      (channel 0) is not. The mask must hold labels in 0..K.

    Two aggregations, because empty masks are common (most slices have no lesion):

    - *Global* (``seg_dice``, ``seg_iou``, ``seg_sensitivity``, ``seg_specificity``, ``seg_precision``): the
      confusion counts (TP, FP, TN, FN) are summed over every pixel of every labelled image of the split,
      then turned into metrics (MONAI ``ConfusionMatrixMetric``, ``compute_sample=False``). Images without
      lesions count through their false positives. This is what the demo reports as "Dice". Dice is the
      F1 score of the counts, IoU the threat score ``TP / (TP + FP + FN)``.
    - *Per image* (``seg_dice_per_image``, ``seg_iou_per_image``): MONAI ``DiceMetric`` / ``MeanIoU`` with
      ``ignore_empty=True``, averaged over the images whose ground truth has that lesion class; images
      without it are left out whatever the prediction (NaN when no image has it).

    ``seg_auc`` is the pixel ROC AUC of the lesion probability, on a fixed-seed uniform subsample of
    ``auc_pixels_per_image`` pixels per image (scikit-learn; reproducible for the same data order).

    With several lesion classes, each scalar key is the mean over the classes with a defined value, and
    the ``*_per_class`` list gives the class values (in label order 1..K; one element when merged).

    Keys: ``seg_dice``, ``seg_iou``, ``seg_sensitivity``, ``seg_specificity``, ``seg_precision``, ``seg_auc``,
    ``seg_dice_per_image``, ``seg_iou_per_image``; lists ``seg_dice_per_class``, ``seg_iou_per_class``,
    ``seg_sensitivity_per_class``, ``seg_specificity_per_class``, ``seg_precision_per_class``,
    ``seg_auc_per_class``; and ``seg_n`` (number of labelled images). Values in [0, 1], NaN where a
    denominator is zero (with a note).

    Args:
        threshold: probability cut-off of the sigmoid head, in (0, 1).
        auc_pixels_per_image: pixels sampled per image for the pixel ROC (all when the image has fewer).
        seed: seed of the pixel sampling; the generator restarts at ``reset()``.
        lesion_names: names of the scored lesion classes; default ``("lesion",)`` for a sigmoid head and
            ``LESION_LABELS[1..K]`` for a softmax head.
    """

    task = "seg"
    _CM_NAMES = ("f1 score", "threat score", "sensitivity", "specificity", "precision")
    _CM_KEYS = ("dice", "iou", "sensitivity", "specificity", "precision")

    def __init__(
        self,
        threshold: float = 0.5,
        auc_pixels_per_image: int = 4096,
        seed: int = 0,
        lesion_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.auc_pixels_per_image = int(auc_pixels_per_image)
        self.seed = seed
        self._names = tuple(lesion_names) if lesion_names is not None else None
        self._cm = ConfusionMatrixMetric(
            include_background=True, metric_name=list(self._CM_NAMES), compute_sample=False, reduction="sum_batch"
        )
        self._dice = DiceMetric(include_background=True, reduction="mean_batch", get_not_nans=True, ignore_empty=True)
        self._iou = MeanIoU(include_background=True, reduction="mean_batch", get_not_nans=True, ignore_empty=True)
        self.reset()

    @property
    def lesion_names(self) -> tuple[str, ...]:
        """Names of the scored lesion classes (known after the first ``update`` unless given)."""
        if self._names is not None:
            return self._names
        return _lesion_names(self._channels) if self._channels else ("lesion",)

    def reset(self) -> None:
        self._cm.reset()
        self._dice.reset()
        self._iou.reset()
        self._generator = torch.Generator().manual_seed(self.seed)
        self._scores: list[torch.Tensor] = []
        self._truth: list[torch.Tensor] = []
        self._channels = 0
        self.num_samples = 0
        self.notes = []

    def _one_hot(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lesion probabilities, binary prediction and binary truth, each ``B x K x H x W`` (background dropped)."""
        if logits.shape[1] == 1:
            prob = torch.sigmoid(logits)
            return prob, (prob >= self.threshold).float(), (mask > 0).float()
        num = logits.shape[1]
        bad = mask[(mask < 0) | (mask >= num)]
        if bad.numel():
            raise ValueError(
                f"batch['mask'] holds labels {sorted(set(bad.tolist()))} but out['seg'] has {num} channels "
                f"(labels 0..{num - 1}); merge the labels or widen the head"
            )
        prob = torch.softmax(logits, dim=1)
        pred = torch.nn.functional.one_hot(prob.argmax(dim=1), num).permute(0, 3, 1, 2).float()
        truth = torch.nn.functional.one_hot(mask[:, 0].long(), num).permute(0, 3, 1, 2).float()
        return prob[:, 1:], pred[:, 1:], truth[:, 1:]

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Args: ``out["seg"]`` float ``B x C x H x W`` logits; ``batch["mask"]`` int ``B x 1 x H x W``;
        ``batch["has"]["seg"]``."""
        idx = _labelled(batch, self.task)
        if idx.numel() == 0:
            return
        logits = _plain(_output(out, self.task)).float()
        mask = _plain(batch["mask"])
        if logits.ndim != 4 or mask.ndim != 4 or logits.shape[2:] != mask.shape[2:] or mask.shape[1] != 1:
            raise ValueError(
                f"out['seg'] {tuple(logits.shape)} and batch['mask'] {tuple(mask.shape)} must be B x C x H x W "
                f"and B x 1 x H x W with the same H x W"
            )
        if self._channels and logits.shape[1] != self._channels:
            raise ValueError(f"out['seg'] has {logits.shape[1]} channels, earlier batches had {self._channels}")
        self._channels = logits.shape[1]
        logits = logits[idx.to(logits.device)]
        mask = mask[idx.to(mask.device)].to(logits.device)
        prob, pred, truth = self._one_hot(logits, mask)
        self._cm(pred, truth)
        self._dice(pred, truth)
        self._iou(pred, truth)
        # pixel ROC: a uniform fixed-seed sample of pixels per image keeps memory bounded over a split
        # (MONAI / scikit-learn need all scores in memory at once; neither subsamples)
        b, k, h, w = prob.shape
        n = min(self.auc_pixels_per_image, h * w)
        for i in range(b):
            pick = torch.randperm(h * w, generator=self._generator)[:n].to(prob.device)
            self._scores.append(prob[i].reshape(k, -1)[:, pick].T.cpu())
            self._truth.append(truth[i].reshape(k, -1)[:, pick].T.bool().cpu())
        self.num_samples += b

    def _empty(self) -> MetricDict:
        k = len(self.lesion_names)
        result: MetricDict = {}
        for key in (*self._CM_KEYS, "auc"):
            result[f"seg_{key}"] = NAN
        result["seg_dice_per_image"] = NAN
        result["seg_iou_per_image"] = NAN
        for key in (*self._CM_KEYS, "auc"):
            result[f"seg_{key}_per_class"] = [NAN] * k
        result["seg_n"] = 0
        return result

    def compute(self) -> MetricDict:
        self.notes = []
        if self.num_samples == 0:
            self._note("no labelled sample; every metric is NaN")
            return self._empty()
        names = self.lesion_names
        per_class: dict[str, list[float]] = {}
        for key, value in zip(self._CM_KEYS, self._cm.aggregate()):
            per_class[key] = [_float(v) for v in value.reshape(-1)]
        for c, name in enumerate(names):
            undefined = [key for key, vals in per_class.items() if math.isnan(vals[c])]
            if undefined:
                self._note(f"{', '.join(undefined)} of {name!r} undefined (zero denominator over the split)")

        def per_image(metric: DiceMetric | MeanIoU) -> float:
            value, not_nans = metric.aggregate()
            # MONAI returns 0 where no image counted; make that NaN
            vals = [_float(v) if _float(c) > 0 else NAN for v, c in zip(value.reshape(-1), not_nans.reshape(-1))]
            return _nanmean(vals)

        scores, truth = self._pixels()
        aucs = []
        for c, name in enumerate(names):
            value = roc_with_youden(truth[:, c], scores[:, c])["auc"]
            if math.isnan(value):
                self._note(f"pixel ROC AUC of {name!r} is undefined (sampled pixels are all of one kind)")
            aucs.append(value)
        per_class["auc"] = aucs
        dice_img = per_image(self._dice)
        if math.isnan(dice_img):
            self._note("no image has a lesion: per-image Dice / IoU are NaN")
        result: MetricDict = {f"seg_{key}": _nanmean(vals) for key, vals in per_class.items()}
        result["seg_dice_per_image"] = dice_img
        result["seg_iou_per_image"] = per_image(self._iou)
        result.update({f"seg_{key}_per_class": vals for key, vals in per_class.items()})
        result["seg_n"] = self.num_samples
        return result

    def _pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Sampled pixels: lesion probabilities float64 ``N x K`` and truth bool ``N x K``."""
        k = len(self.lesion_names)
        if not self._scores:
            return np.zeros((0, k)), np.zeros((0, k), dtype=bool)
        return torch.cat(self._scores).double().numpy(), torch.cat(self._truth).numpy()

    def roc_curves(self) -> dict[str, dict[str, Any]]:
        """Pixel ROC curve (on the sampled pixels) per lesion class with a defined AUC."""
        scores, truth = self._pixels()
        curves = {}
        for c, name in enumerate(self.lesion_names):
            roc = roc_with_youden(truth[:, c], scores[:, c])
            if not math.isnan(roc["auc"]):
                curves[name] = {"fpr": roc["fpr"], "tpr": roc["tpr"], "auc": roc["auc"]}
        return curves


class ReconstructionMetrics(TaskMetrics):
    """Image reconstruction metrics (MONAI ``MSEMetric``, ``PSNRMetric``, ``SSIMMetric``).

    Compares ``out["recon"]`` (``B x 1 x H x W``, linear output) with ``batch["image"]`` (``B x 1 x H x W`` in
    [0, 1]); each metric is computed per image, then averaged over images.

    Keys: ``recon_mse`` (>= 0), ``recon_psnr`` (dB, ``10 log10(data_range^2 / MSE)``; inf for a perfect
    image), ``recon_ssim`` (<= 1, Gaussian window), ``recon_n``.

    Args:
        data_range: intensity range of the images (1 for the [0, 1] images of ctmtl).
        clip: clip the reconstruction to ``[0, data_range]`` first, as a displayed image would be.
        win_size: SSIM window side, odd; H and W must be at least this.
    """

    task = "recon"

    def __init__(self, data_range: float = 1.0, clip: bool = True, win_size: int = 11) -> None:
        super().__init__()
        self.data_range = float(data_range)
        self.clip = clip
        self._mse = MSEMetric(reduction="mean")
        self._psnr = PSNRMetric(max_val=self.data_range, reduction="mean")
        self._ssim = SSIMMetric(spatial_dims=2, data_range=self.data_range, win_size=win_size, reduction="mean")
        self.reset()

    def reset(self) -> None:
        self._mse.reset()
        self._psnr.reset()
        self._ssim.reset()
        self.num_samples = 0
        self.notes = []

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Args: ``out["recon"]`` float ``B x 1 x H x W``; ``batch["image"]`` float ``B x 1 x H x W`` in [0, 1];
        ``batch["has"]["recon"]``."""
        idx = _labelled(batch, self.task)
        if idx.numel() == 0:
            return
        pred = _plain(_output(out, self.task)).float()
        target = _plain(batch["image"]).float().to(pred.device)
        if pred.shape != target.shape:
            raise ValueError(f"out['recon'] {tuple(pred.shape)} does not match batch['image'] {tuple(target.shape)}")
        pred, target = pred[idx.to(pred.device)], target[idx.to(pred.device)]
        if self.clip:
            pred = pred.clamp(0.0, self.data_range)
        self._mse(pred, target)
        self._psnr(pred, target)
        self._ssim(pred, target)
        self.num_samples += int(idx.numel())

    def compute(self) -> MetricDict:
        self.notes = []
        if self.num_samples == 0:
            self._note("no labelled sample; every metric is NaN")
            return {"recon_mse": NAN, "recon_psnr": NAN, "recon_ssim": NAN, "recon_n": 0}
        return {
            "recon_mse": _float(self._mse.aggregate()),
            "recon_psnr": _float(self._psnr.aggregate()),
            "recon_ssim": _float(self._ssim.aggregate()),
            "recon_n": self.num_samples,
        }


def mask_iou(pred_masks: torch.Tensor, gt_masks: torch.Tensor) -> np.ndarray:
    """IoU matrix of two sets of binary masks.

    Hand-written: MONAI and torchvision have box IoU only, and pycocotools is not a dependency.

    Args:
        pred_masks: bool ``D x H x W``.
        gt_masks: bool ``G x H x W``.

    Returns:
        float64 ``D x G`` in [0, 1]; 0 where both masks are empty.
    """
    p = pred_masks.flatten(1).double()
    g = gt_masks.flatten(1).to(p.device).double()
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))
    return iou.cpu().numpy()


def instance_masks_from_boxes(mask: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Ground-truth instance masks for mask AP: the lesion pixels (``mask > 0``) inside each box.

    Args:
        mask: int ``1 x H x W`` (or ``H x W``) lesion labels.
        boxes: float ``N x 4`` xyxy pixels (x = column, y = row); rounded outwards to whole pixels.

    Returns:
        bool ``N x H x W``.
    """
    lesion = _plain(mask).reshape(mask.shape[-2:]) > 0
    h, w = lesion.shape
    out = torch.zeros((len(boxes), h, w), dtype=torch.bool, device=lesion.device)
    for j, (x1, y1, x2, y2) in enumerate(_numpy(boxes, dtype=np.float64).reshape(-1, 4)):
        c1, r1 = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
        c2, r2 = min(int(math.ceil(x2)), w), min(int(math.ceil(y2)), h)
        out[j, r1:r2, c1:c2] = lesion[r1:r2, c1:c2]
    return out


class DetectionMetrics(TaskMetrics):
    """Lesion detection metrics: COCO AP / AR with MONAI ``matching_batch`` + ``COCOMetric``.

    Predictions: ``out["det"]``, the eval-mode list of B dicts (``boxes`` float ``N x 4`` xyxy pixels,
    ``labels`` int64 ``N`` in 1..len(class_names), ``scores`` float ``N`` [, ``masks`` float ``N x 1 x H x W``]).
    Ground truth: ``batch["boxes"]`` / ``batch["box_labels"]`` (labels 1..; 0 is torchvision's background,
    so label ``l`` is COCO class index ``l - 1``). Images with no ground-truth box still count: their
    detections are false positives.

    Keys (IoU thresholds 0.50:0.05:0.95, at most ``max_detections`` per image):

    - ``det_map``: COCO mAP@[.5:.95]; ``det_ap50``, ``det_ap75``: AP at IoU 0.5 / 0.75 (101-point
      interpolated precision, as COCO).
    - ``det_recall``: recall at IoU 0.5 (share of ground-truth boxes matched by some detection);
      ``det_mar``: COCO AR, recall averaged over IoU 0.5:0.95.
    - ``det_n``: number of labelled images.
    - with ``masks=True`` also ``det_mask_map``, ``det_mask_ap50``, ``det_mask_ap75``, ``det_mask_recall``,
      ``det_mask_mar``: the same matching on mask IoU (prediction ``masks >= mask_threshold`` against
      :func:`instance_masks_from_boxes` of ``batch["mask"]``), over images labelled for both ``det`` and ``seg``.

    With several classes each value is the mean over the classes that have ground truth; a class with no
    ground-truth box has no AP (NaN and a note), it is not counted as 0.

    Args:
        class_names: names of detection labels 1, 2, ... in order.
        masks: also compute mask AP (Mask R-CNN outputs).
        mask_threshold: cut-off of the predicted mask probabilities.
        max_detections: detections per image kept by score (COCO: 100).
    """

    task = "det"
    _IOU_LIST = (0.5, 0.75)
    _IOU_RANGE = (0.5, 0.95, 0.05)

    def __init__(
        self,
        class_names: Sequence[str] = ("lesion",),
        masks: bool = False,
        mask_threshold: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.masks = masks
        self.mask_threshold = mask_threshold
        self.max_detections = int(max_detections)
        self._coco = COCOMetric(
            classes=list(self.class_names),
            iou_list=self._IOU_LIST,
            iou_range=self._IOU_RANGE,
            max_detection=(1, 10, self.max_detections),
            per_class=True,
            verbose=False,
        )
        self.reset()

    def reset(self) -> None:
        self._box_results: list[dict] = []
        self._mask_results: list[dict] = []
        self.num_samples = 0
        self.num_mask_samples = 0
        self.notes = []

    def _gt(self, batch: Mapping[str, Any], i: int) -> tuple[np.ndarray, np.ndarray]:
        boxes = _numpy(batch["boxes"][i], dtype=np.float64).reshape(-1, 4)
        labels = _numpy(batch["box_labels"][i], dtype=np.int64).reshape(-1) - 1
        bad = labels[(labels < 0) | (labels >= len(self.class_names))]
        if bad.size:
            raise ValueError(
                f"batch['box_labels'][{i}] holds {sorted(set((bad + 1).tolist()))}, "
                f"expected 1..{len(self.class_names)} (classes {self.class_names})"
            )
        return boxes, labels

    def _match(self, iou_fn: Callable, pred: tuple, gt: tuple) -> dict:
        (p_boxes, p_labels, p_scores), (g_boxes, g_labels) = pred, gt
        return matching_batch(
            iou_fn=iou_fn,
            iou_thresholds=self._coco.iou_thresholds,
            pred_boxes=[p_boxes],
            pred_classes=[p_labels],
            pred_scores=[p_scores],
            gt_boxes=[g_boxes],
            gt_classes=[g_labels],
            max_detections=self.max_detections,
        )[0]

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Args: ``out["det"]`` list of B prediction dicts; ``batch["boxes"]`` / ``batch["box_labels"]`` lists of B;
        ``batch["has"]["det"]`` (and ``batch["mask"]``, ``batch["has"]["seg"]`` for mask AP)."""
        idx = _labelled(batch, self.task)
        if idx.numel() == 0:
            return
        preds = _output(out, self.task)
        if isinstance(preds, Mapping):
            raise ValueError("out['det'] is a dict of losses (training mode); evaluate with net.eval()")
        seg_idx = set(_labelled(batch, "seg").tolist()) if self.masks and "seg" in batch.get("has", {}) else set()
        for i in idx.tolist():
            pred = preds[i]
            p_boxes = _numpy(pred["boxes"], dtype=np.float64).reshape(-1, 4)
            p_labels = _numpy(pred["labels"], dtype=np.int64).reshape(-1) - 1
            p_scores = _numpy(pred["scores"], dtype=np.float64).reshape(-1)
            gt = self._gt(batch, i)
            self._box_results.append(self._match(box_iou, (p_boxes, p_labels, p_scores), gt))
            if self.masks and i in seg_idx:
                if "masks" not in pred:
                    raise ValueError("DetectionMetrics(masks=True) needs out['det'][i]['masks'] (Mask R-CNN)")
                p_masks = _plain(pred["masks"]).reshape(len(p_boxes), *batch["mask"].shape[-2:]) >= self.mask_threshold
                g_masks = instance_masks_from_boxes(batch["mask"][i], batch["boxes"][i]).to(p_masks.device)
                ious = mask_iou(p_masks, g_masks)

                # matching_batch takes boxes; give it row indices into the IoU matrix as one-column "boxes"
                def iou_fn(a: np.ndarray, b: np.ndarray, ious: np.ndarray = ious) -> np.ndarray:
                    return ious[np.ix_(a[:, 0].astype(int), b[:, 0].astype(int))]

                p_index = np.arange(len(p_boxes), dtype=np.float64)[:, None]
                g_index = np.arange(len(gt[0]), dtype=np.float64)[:, None]
                self._mask_results.append(
                    self._match(iou_fn, (p_index, p_labels, p_scores), (g_index, gt[1]))
                )
                self.num_mask_samples += 1
        self.num_samples += int(idx.numel())

    def _coco_values(self, results: list[dict], prefix: str) -> MetricDict:
        """COCO values from matching results; per-class -1 (class without ground truth) becomes NaN."""
        n_gt = np.zeros(len(self.class_names), dtype=np.int64)
        for res in results:
            for c, r in res.items():
                if 0 <= c < len(n_gt):
                    n_gt[c] += int(np.count_nonzero(np.asarray(r["gtIgnore"]) == 0))
        for c, name in enumerate(self.class_names):
            if n_gt[c] == 0:
                kind = "mask " if prefix.endswith("mask") else ""
                self._note(f"no ground-truth box of class {name!r}: its {kind}AP and recall are NaN")
        values = self._coco(results)[0] if n_gt.sum() > 0 else {}
        start, stop, step = self._IOU_RANGE
        iou_range, m = f"{start:.2f}_{stop:.2f}_{step:.2f}", self.max_detections
        # names of COCOMetric's result keys (per class they start with "<class name>_")
        keys = {
            "map": f"mAP_IoU_{iou_range}_MaxDet_{m}",
            "ap50": f"AP_IoU_0.50_MaxDet_{m}",
            "ap75": f"AP_IoU_0.75_MaxDet_{m}",
            "recall": f"AR_IoU_0.50_MaxDet_{m}",
            "mar": f"mAR_IoU_{iou_range}_MaxDet_{m}",
        }
        out: MetricDict = {}
        for short, coco_key in keys.items():
            # per class, then mean: COCOMetric's all-class value averages in the -1 of absent classes
            per_class = []
            for c, name in enumerate(self.class_names):
                v = float(values.get(f"{name}_{coco_key}", -1.0))
                per_class.append(v if n_gt[c] > 0 and v >= 0 else NAN)
            out[f"{prefix}_{short}"] = _nanmean(per_class)
        return out

    def compute(self) -> MetricDict:
        self.notes = []
        if self.num_samples == 0:
            self._note("no labelled sample; every metric is NaN")
        result = self._coco_values(self._box_results, "det")
        if self.masks:
            if self.num_mask_samples == 0 and self.num_samples:
                self._note("no image labelled for both det and seg: mask AP is NaN")
            result.update(self._coco_values(self._mask_results, "det_mask"))
        result["det_n"] = self.num_samples
        return result


#: Default accumulator class per short task name.
TASK_METRICS: dict[str, type[TaskMetrics]] = {
    "class": ClassificationMetrics,
    "seg": SegmentationMetrics,
    "recon": ReconstructionMetrics,
    "det": DetectionMetrics,
}


class MultiTaskMetrics:
    """One accumulator per task, updated together; ``compute()`` merges their flat dicts.

    Args:
        tasks: short task names (``class``, ``seg``, ``recon``, ``det``) to measure, e.g. a stage's tasks.
        metrics: accumulators to use instead of the defaults, by task (e.g.
            ``{"det": DetectionMetrics(masks=True)}``); a task given here need not be in ``tasks``.

    Example::

        metrics = MultiTaskMetrics(("class", "recon"))
        for batch in loader:
            metrics.update(net(batch["image"], tasks=("class", "recon")), batch)
        values = metrics.compute()  # {"class_accuracy": ..., "recon_psnr": ..., ...}
    """

    def __init__(
        self, tasks: Sequence[str] = SHORT_TASKS, metrics: Mapping[str, TaskMetrics] | None = None
    ) -> None:
        metrics = dict(metrics or {})
        unknown = sorted(set(tasks) - set(TASK_METRICS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected some of {list(TASK_METRICS)}")
        self.metrics: dict[str, TaskMetrics] = {}
        for task in (*tasks, *(t for t in metrics if t not in tasks)):
            self.metrics[task] = metrics[task] if task in metrics else TASK_METRICS[task]()

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.metrics)

    @property
    def notes(self) -> list[str]:
        """Notes of every task's last ``compute()``."""
        return [note for m in self.metrics.values() for note in m.notes]

    def __getitem__(self, task: str) -> TaskMetrics:
        return self.metrics[task]

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Update every task's accumulator with a network output dict and its collated batch."""
        for m in self.metrics.values():
            m.update(out, batch)

    def compute(self) -> MetricDict:
        result: MetricDict = {}
        for m in self.metrics.values():
            result.update(m.compute())
        return result

    def roc_curves(self) -> dict[str, dict[str, dict[str, Any]]]:
        """ROC curves by task then class name, for the tasks that have them (``class``, ``seg``)."""
        curves = {task: m.roc_curves() for task, m in self.metrics.items()}
        return {task: c for task, c in curves.items() if c}


def _default_output_transform(output: Any) -> Any:
    return output


class IgniteMetricAdapter(Metric):
    """An Ignite ``Metric`` around a :class:`TaskMetrics` or :class:`MultiTaskMetrics`.

    Assumed engine output: a mapping with ``"pred"`` (the network's output dict) and ``"batch"`` (the
    collated batch), e.g. an evaluator iteration returning ``{"pred": net(batch["image"]), "batch": batch}``
    with ``decollate=False``. Pass ``output_transform`` returning ``(pred, batch)`` for another layout.
    ``compute()`` returns the accumulator's flat dict, which Ignite writes key by key into
    ``engine.state.metrics`` (``metrics_result_mode="flatten"``), so ``state.metrics["seg_dice"]`` works for
    checkpoint selection and early stopping. Values are computed on each process's own samples (no
    distributed reduction).

    Example::

        IgniteMetricAdapter(MultiTaskMetrics(("seg", "recon"))).attach(evaluator, "val")
    """

    required_output_keys = ("pred", "batch")

    def __init__(
        self,
        metrics: TaskMetrics | MultiTaskMetrics,
        output_transform: Callable[[Any], Any] = _default_output_transform,
    ) -> None:
        self.metrics = metrics
        super().__init__(output_transform=output_transform, skip_unrolling=True, metrics_result_mode="flatten")

    def reset(self) -> None:
        self.metrics.reset()

    def update(self, output: Sequence[Any]) -> None:
        pred, batch = output
        self.metrics.update(pred, batch)

    def compute(self) -> MetricDict:
        return self.metrics.compute()

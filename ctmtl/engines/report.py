"""Run report: ``report.md`` with metric tables per task, and PNG plots beside it.

Data in, files out: :func:`write_report` takes plain Python / numpy / torch values (a per-epoch history,
the test metrics of :mod:`ctmtl.engines.metrics`, ROC curves, a few test slices) and knows nothing of the
trainer. Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change),
so it runs headless and in threads.

Files written in ``out_dir`` (each only when its data is given):

- ``report.md``;
- ``loss_curves.png``, ``metric_curves.png``: training losses and validation metrics per epoch, stages marked;
- ``roc_<task>.png``: ROC curves per class (``roc_class.png``, pixel ROC ``roc_seg.png``);
- ``confusion_matrix.png``;
- ``overlay_masks.png``: test slices with ground-truth (green) and predicted (red) lesion contours;
- ``overlay_boxes.png``: test slices with ground-truth (green) and predicted (red, dashed) boxes.

NaN / missing values are shown as ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ctmtl.constants import CLASS_NAMES, LESION_LABELS, LONG_TASKS, SHORT_TASKS

__all__ = ["write_report", "format_value", "DEFAULT_CURVE_METRICS"]

#: Validation metrics drawn in ``metric_curves.png`` by default (those present in the history).
DEFAULT_CURVE_METRICS: tuple[str, ...] = (
    "class_accuracy",
    "class_f1_macro",
    "class_auc_macro",
    "seg_dice",
    "seg_iou",
    "seg_auc",
    "recon_psnr",
    "recon_ssim",
    "det_ap50",
    "det_map",
    "det_recall",
)

#: Readable names of metric keys (keys not listed are shown as they are).
LABELS: dict[str, str] = {
    "class_accuracy": "accuracy",
    "class_f1_macro": "F1 (macro)",
    "class_auc_macro": "ROC AUC (macro, one-vs-rest)",
    "class_f1": "F1",
    "class_auc": "ROC AUC",
    "class_youden_threshold": "Youden cut-off",
    "class_youden_j": "Youden J",
    "seg_dice": "Dice (global)",
    "seg_iou": "IoU (global)",
    "seg_sensitivity": "sensitivity (global)",
    "seg_specificity": "specificity (global)",
    "seg_precision": "precision (global)",
    "seg_auc": "pixel ROC AUC",
    "seg_dice_per_image": "Dice (mean over images with lesions)",
    "seg_iou_per_image": "IoU (mean over images with lesions)",
    "seg_dice_per_class": "Dice",
    "seg_iou_per_class": "IoU",
    "seg_sensitivity_per_class": "sensitivity",
    "seg_specificity_per_class": "specificity",
    "seg_precision_per_class": "precision",
    "seg_auc_per_class": "pixel ROC AUC",
    "recon_mse": "MSE",
    "recon_psnr": "PSNR (dB)",
    "recon_ssim": "SSIM",
    "det_map": "box mAP@[.5:.95]",
    "det_ap50": "box AP50",
    "det_ap75": "box AP75",
    "det_recall": "box recall@0.5",
    "det_mar": "box AR@[.5:.95]",
    "det_mask_map": "mask mAP@[.5:.95]",
    "det_mask_ap50": "mask AP50",
    "det_mask_ap75": "mask AP75",
    "det_mask_recall": "mask recall@0.5",
    "det_mask_mar": "mask AR@[.5:.95]",
}

_GT, _PRED = "#2ca02c", "#d62728"
_MAX_EXAMPLES = 8


def format_value(value: Any, digits: int = 4) -> str:
    """Text of one metric value: ``n/a`` for None / NaN, integers as they are, floats with ``digits`` decimals."""
    if value is None:
        return "n/a"
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def _label(key: str) -> str:
    return LABELS.get(key, key)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _has_value(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    """Whether some epoch's ``val`` has a finite number under ``key``."""
    return any(_is_number(v := (row.get("val") or {}).get(key)) and math.isfinite(v) for row in rows)


def _np(x: Any) -> np.ndarray:
    """numpy array of a tensor (any device) / array / list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _image2d(x: Any) -> np.ndarray:
    """``H x W`` array of an ``H x W`` / ``1 x H x W`` / ``1 x 1 x H x W`` image or mask."""
    a = _np(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2D slice (H x W, or 1 x H x W), got shape {a.shape}")
    return a


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=100)
    return path.name


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _list_names(key: str, length: int, class_names: Sequence[str], lesion_names: Sequence[str] | None) -> list[str]:
    """Column names of a per-class list metric."""
    if key.startswith("class_") and length == len(class_names):
        return list(class_names)
    if key.startswith("seg_"):
        if lesion_names is not None and len(lesion_names) == length:
            return list(lesion_names)
        if length == 1:
            return ["lesion"]
        return [LESION_LABELS.get(c, f"label-{c}") for c in range(1, length + 1)]
    return [str(i) for i in range(length)]


def _task_section(
    task: str, metrics: Mapping[str, Any], class_names: Sequence[str], lesion_names: Sequence[str] | None
) -> list[str]:
    """Markdown of one task's test metrics: a scalar table, a per-class table, the confusion matrix."""
    prefix = f"{task}_"
    own = {k: v for k, v in metrics.items() if k.startswith(prefix)}
    n = own.pop(f"{task}_n", None)
    heading = f"### {LONG_TASKS.get(task, task).capitalize()}" + (f" (n = {format_value(n)})" if n is not None else "")
    lines = [heading, ""]
    scalars = [(k, v) for k, v in own.items() if not isinstance(v, (list, tuple, np.ndarray))]
    if scalars:
        lines += _md_table(["metric", "value"], [[_label(k), format_value(v)] for k, v in scalars])
        lines.append("")
    matrix = own.pop("class_confusion_matrix", None)
    lists = [(k, list(v)) for k, v in own.items() if isinstance(v, (list, tuple, np.ndarray))]
    by_length: dict[int, list[tuple[str, list]]] = {}
    for key, values in lists:
        by_length.setdefault(len(values), []).append((key, values))
    for length, group in by_length.items():
        names = _list_names(group[0][0], length, class_names, lesion_names)
        rows = [[_label(k)] + [format_value(v) for v in values] for k, values in group]
        lines += _md_table(["per class", *names], rows)
        lines.append("")
    if matrix is not None:
        names = _list_names("class_", len(matrix), class_names, None)
        lines.append("Confusion matrix (rows: ground truth, columns: prediction):")
        lines.append("")
        lines += _md_table(["", *names], [[name] + [format_value(v) for v in row] for name, row in zip(names, matrix)])
        lines.append("")
    return lines


def _epoch_axis(ax: Any, stages: Sequence[str]) -> None:
    """x axis 1..len(stages) in whole epochs, dotted lines where the stage changes, stage names along the top."""
    ax.set_xlim(0.5, len(stages) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    start = 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            if start > 0:
                ax.axvline(start + 0.5, color="0.5", linestyle=":", linewidth=1)
            if stages[start]:
                ax.text((start + i + 1) / 2, 1.0, stages[start], transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="0.3")
            start = i


def _plot_losses(history: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    keys: list[str] = []
    for row in history:
        for k in row.get("loss", {}) or {}:
            if k not in keys:
                keys.append(k)
    if not keys:
        return None
    x = np.arange(1, len(history) + 1)
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    for k in keys:
        y = [float((row.get("loss") or {}).get(k, math.nan)) for row in history]
        ax.plot(x, y, marker="o", markersize=3, label=k, linewidth=2 if k == "total" else 1)
    _epoch_axis(ax, [str(row.get("stage", "")) for row in history])
    ax.set_xlabel("epoch (all stages in order)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_metric_curves(history: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path) -> str | None:
    present = [k for k in keys if _has_value(history, k)]
    if not present:
        return None
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig = _new_figure(3.2 * cols, 2.6 * rows)
    x = np.arange(1, len(history) + 1)
    stages = [str(row.get("stage", "")) for row in history]
    for i, key in enumerate(present):
        ax = fig.add_subplot(rows, cols, i + 1)
        y = [float(v) if _is_number(v := (row.get("val") or {}).get(key)) else math.nan for row in history]
        ax.plot(x, y, marker="o", markersize=3)
        _epoch_axis(ax, stages)
        ax.set_title(_label(key), fontsize=9, pad=14)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_roc(task: str, curves: Mapping[str, Mapping[str, Any]], path: Path) -> str | None:
    if not curves:
        return None
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.plot(_np(c["fpr"]), _np(c["tpr"]), label=f"{name} (AUC {format_value(c.get('auc'), 3)})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, {LONG_TASKS.get(task, task)}" + (" (pixels)" if task == "seg" else ""))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> str:
    m = np.asarray(matrix, dtype=float)
    fig = _new_figure(1.4 * len(names) + 2, 1.4 * len(names) + 1.5)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues")
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, str(int(v)), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def _plot_mask_overlays(examples: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    chosen = [(i, e) for i, e in enumerate(examples) if e.get("mask") is not None or e.get("pred_mask") is not None]
    chosen = chosen[:_MAX_EXAMPLES]
    if not chosen:
        return None
    rows, cols = _grid(len(chosen))
    fig = _new_figure(3 * cols, 3 * rows + 0.4)
    for pos, (i, ex) in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, pos + 1)
        ax.imshow(_image2d(ex["image"]), cmap="gray", vmin=0, vmax=1)
        for key, color, style in (("mask", _GT, "solid"), ("pred_mask", _PRED, "dashed")):
            if ex.get(key) is not None:
                m = _image2d(ex[key]) > 0
                if m.any():
                    ax.contour(m.astype(float), levels=[0.5], colors=[color], linewidths=1.2, linestyles=style)
        ax.set_title(str(ex.get("title", f"example {i + 1}")), fontsize=8)
        ax.axis("off")
    fig.legend(handles=[Line2D([], [], color=_GT, label="ground truth"),
                        Line2D([], [], color=_PRED, linestyle="--", label="prediction")],
               loc="outside lower center", ncols=2, fontsize=8)
    return _save(fig, path)


def _plot_box_overlays(examples: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    chosen = [(i, e) for i, e in enumerate(examples) if e.get("boxes") is not None or e.get("pred_boxes") is not None]
    chosen = chosen[:_MAX_EXAMPLES]
    if not chosen:
        return None
    rows, cols = _grid(len(chosen))
    fig = _new_figure(3 * cols, 3 * rows + 0.4)
    for pos, (i, ex) in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, pos + 1)
        ax.imshow(_image2d(ex["image"]), cmap="gray", vmin=0, vmax=1)
        for key, color, style in (("boxes", _GT, "-"), ("pred_boxes", _PRED, "--")):
            boxes = _np(ex[key]).reshape(-1, 4) if ex.get(key) is not None else np.zeros((0, 4))
            scores = None
            if key == "pred_boxes" and ex.get("pred_scores") is not None:
                scores = _np(ex["pred_scores"]).reshape(-1)
            for j, (x1, y1, x2, y2) in enumerate(boxes):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linestyle=style,
                                       linewidth=1.2))
                if scores is not None and j < len(scores):
                    ax.text(x1, y1, f"{scores[j]:.2f}", color=color, fontsize=6, va="bottom")
        ax.set_title(str(ex.get("title", f"example {i + 1}")), fontsize=8)
        ax.axis("off")
    fig.legend(handles=[Line2D([], [], color=_GT, label="ground truth"),
                        Line2D([], [], color=_PRED, linestyle="--", label="prediction")],
               loc="outside lower center", ncols=2, fontsize=8)
    return _save(fig, path)


def _history_table(history: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    loss_keys = ["total"] if any("total" in (row.get("loss") or {}) for row in history) else []
    val_keys = [k for k in keys if _has_value(history, k)]
    header = ["epoch", "stage", *(f"loss {k}" for k in loss_keys), *(f"val {_label(k)}" for k in val_keys)]
    rows = []
    for row in history:
        loss, val = row.get("loss") or {}, row.get("val") or {}
        rows.append(
            [format_value(row.get("epoch")), str(row.get("stage", ""))]
            + [format_value(loss.get(k)) for k in loss_keys]
            + [format_value(val.get(k)) for k in val_keys]
        )
    return _md_table(header, rows)


def write_report(
    out_dir: str | Path,
    history: Sequence[Mapping[str, Any]] = (),
    test_metrics: Mapping[str, Any] | None = None,
    roc_data: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    examples: Sequence[Mapping[str, Any]] = (),
    title: str = "ctmtl report",
    extra_lines: Sequence[str] = (),
    class_names: Sequence[str] = CLASS_NAMES,
    lesion_names: Sequence[str] | None = None,
    curve_metrics: Sequence[str] = DEFAULT_CURVE_METRICS,
) -> Path:
    """Write ``out_dir/report.md`` and its PNG plots; return the path of ``report.md``.

    Args:
        out_dir: folder to write into (created if missing); existing files of the same names are replaced.
        history: one mapping per epoch, in the order run: ``{"epoch": int, "stage": str, "loss": {"total":
            float, "<task>": float, ...}, "val": {metric key: value}}`` (``val`` as returned by
            ``MultiTaskMetrics.compute()``; ``loss`` / ``val`` may be missing or partial).
        test_metrics: flat metrics of the test split (``MultiTaskMetrics.compute()``): scalars, per-class
            lists and ``class_confusion_matrix``; keys are grouped by their task prefix.
        roc_data: ROC curves by task then class name, ``{"class": {"covid-19": {"fpr": array, "tpr": array,
            "auc": float}, ...}, "seg": {...}}`` (``MultiTaskMetrics.roc_curves()``).
        examples: test slices to overlay (at most 8 drawn per figure), each ``{"image": H x W in [0, 1],
            "mask": H x W ground-truth labels, "pred_mask": H x W predicted labels / binary, "boxes": N x 4
            ground truth, "pred_boxes": M x 4, "pred_scores": M, "title": str}``; all but ``image`` optional,
            arrays or tensors, boxes xyxy in pixels of the slice. Boxes are drawn as given (filter by score
            before).
        title: first heading of the report.
        extra_lines: markdown lines put under the title (run settings, wall time, metric notes).
        class_names: diagnosis class names, in label order (per-class columns, confusion matrix).
        lesion_names: names of the scored lesion classes (default from the list lengths).
        curve_metrics: validation metric keys drawn in ``metric_curves.png`` and listed per epoch.

    Returns:
        Path of the written ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_metrics = dict(test_metrics or {})
    roc_data = roc_data or {}
    lines = [f"# {title}", ""]
    if extra_lines:
        lines += [*extra_lines, ""]

    if test_metrics:
        lines += ["## Test metrics", ""]
        tasks = [t for t in SHORT_TASKS if any(k.startswith(f"{t}_") for k in test_metrics)]
        for task in tasks:
            lines += _task_section(task, test_metrics, class_names, lesion_names)
            if task == "class" and test_metrics.get("class_confusion_matrix") is not None:
                matrix = test_metrics["class_confusion_matrix"]
                names = _list_names("class_", len(matrix), class_names, None)
                lines += [f"![confusion matrix]({_plot_confusion(matrix, names, out / 'confusion_matrix.png')})", ""]
            if roc_data.get(task):
                png = _plot_roc(task, roc_data[task], out / f"roc_{task}.png")
                lines += [f"![ROC curves, {LONG_TASKS.get(task, task)}]({png})", ""]
        others = [k for k in test_metrics if not any(k.startswith(f"{t}_") for t in SHORT_TASKS)]
        if others:
            lines += ["### Other", ""]
            lines += _md_table(["metric", "value"], [[k, format_value(test_metrics[k])] for k in others])
            lines.append("")

    if history:
        lines += ["## Training", ""]
        losses = _plot_losses(history, out / "loss_curves.png")
        if losses:
            lines += [f"![training losses]({losses})", ""]
        curves = _plot_metric_curves(history, curve_metrics, out / "metric_curves.png")
        if curves:
            lines += [f"![validation metrics]({curves})", ""]
        lines += _history_table(history, curve_metrics)
        lines.append("")

    if examples:
        pngs = [
            ("lesion contours, ground truth (green) and prediction (red)",
             _plot_mask_overlays(examples, out / "overlay_masks.png")),
            ("boxes, ground truth (green) and prediction (red)",
             _plot_box_overlays(examples, out / "overlay_boxes.png")),
        ]
        if any(png for _, png in pngs):
            lines += ["## Test examples", ""]
            lines += [f"![{alt}]({png})\n" for alt, png in pngs if png]

    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path

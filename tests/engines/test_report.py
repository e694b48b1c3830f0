"""ctmtl.engines.report: report.md carries the numbers given, NaN as n/a, and valid PNG plots."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ctmtl.engines.report import format_value, write_report

TEST_METRICS = {
    "class_accuracy": 0.9166666,
    "class_f1_macro": 0.9,
    "class_f1": [1.0, 0.8, math.nan],
    "class_auc_macro": 0.95,
    "class_auc": [1.0, 0.9, math.nan],
    "class_youden_threshold": [0.4, 0.6, math.nan],
    "class_youden_j": [1.0, 0.8, math.nan],
    "class_confusion_matrix": [[5, 0, 0], [1, 4, 0], [0, 0, 0]],
    "class_n": 10,
    "seg_dice": 0.8312,
    "seg_iou": 0.7111,
    "seg_dice_per_image": math.nan,
    "seg_dice_per_class": [0.8312],
    "seg_n": 12,
    "recon_psnr": 27.5,
    "recon_ssim": 0.91,
    "recon_n": 12,
    "det_ap50": 0.6543,
    "det_map": 0.3,
    "det_n": 8,
}


def _history():
    rows = []
    for epoch, stage in enumerate(["cr", "cr", "sr", "sr", "dr"], start=1):
        val = {"class_accuracy": 0.5 + 0.1 * epoch, "recon_psnr": 20.0 + epoch} if stage == "cr" else {}
        if stage == "sr":
            val = {"seg_dice": 0.2 * epoch, "recon_psnr": 22.0 + epoch}
        if stage == "dr":
            val = {"det_ap50": math.nan, "recon_psnr": 26.0}
        rows.append({"epoch": epoch, "stage": stage, "loss": {"total": 1.0 / epoch, "recon": 0.1 / epoch}, "val": val})
    return rows


def _examples():
    image = torch.rand(1, 32, 32)
    mask = torch.zeros(1, 32, 32, dtype=torch.int64)
    mask[0, 8:16, 8:16] = 1
    pred = torch.zeros(32, 32, dtype=torch.int64)
    pred[9:17, 8:15] = 1
    return [
        {"image": image, "mask": mask, "pred_mask": pred, "title": "slice 4"},
        {"image": image.numpy()[0], "boxes": np.array([[8.0, 8, 16, 16]]),
         "pred_boxes": torch.tensor([[9.0, 8, 15, 17]]), "pred_scores": torch.tensor([0.87])},
        {"image": image, "mask": torch.zeros(32, 32), "pred_mask": torch.zeros(32, 32)},  # nothing to outline
    ]


def _roc():
    return {
        "class": {"covid-19": {"fpr": np.array([0, 0, 1.0]), "tpr": np.array([0, 1, 1.0]), "auc": 1.0}},
        "seg": {"lesion": {"fpr": np.array([0, 0.1, 1.0]), "tpr": np.array([0, 0.8, 1.0]), "auc": 0.85}},
    }


def test_format_value():
    assert format_value(math.nan) == "n/a" and format_value(None) == "n/a" and format_value(np.float32("nan")) == "n/a"
    assert format_value(0.123456) == "0.1235" and format_value(3) == "3" and format_value(math.inf) == "inf"
    assert format_value(torch.tensor(0.5)) == "0.5000"


def test_write_report(tmp_path):
    path = write_report(
        tmp_path / "run",
        history=_history(),
        test_metrics=TEST_METRICS,
        roc_data=_roc(),
        examples=_examples(),
        title="demo report",
        extra_lines=["Wall time: 12 min."],
    )
    assert path == tmp_path / "run" / "report.md"
    text = path.read_text()
    assert text.startswith("# demo report\n") and "Wall time: 12 min." in text
    for expected in ("| accuracy | 0.9167 |", "| Dice (global) | 0.8312 |", "| PSNR (dB) | 27.5000 |",
                     "| box AP50 | 0.6543 |", "### Classification (n = 10)", "### Segmentation (n = 12)"):
        assert expected in text
    # NaN shows as n/a, in scalar rows and per-class columns
    assert "| Dice (mean over images with lesions) | n/a |" in text
    assert "| F1 | 1.0000 | 0.8000 | n/a |" in text
    assert "| per class | covid-19 | non-covid | cancer |" in text
    assert "| non-covid | 1 | 4 | 0 |" in text
    assert "nan" not in text.lower()
    pngs = ["loss_curves.png", "metric_curves.png", "roc_class.png", "roc_seg.png", "confusion_matrix.png",
            "overlay_masks.png", "overlay_boxes.png"]
    for name in pngs:
        assert f"]({name})" in text
        with Image.open(path.parent / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    assert sorted(p.name for p in path.parent.glob("*.png")) == sorted(pngs)


def test_write_report_minimal(tmp_path):
    path = write_report(tmp_path, test_metrics={"recon_mse": 0.01, "recon_n": 3})
    text = path.read_text()
    assert "### Reconstruction (n = 3)" in text and "| MSE | 0.0100 |" in text
    assert list(tmp_path.glob("*.png")) == []

"""Metric accumulators of ctmtl.engines.metrics against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from ctmtl.constants import CLASS_NAMES
from ctmtl.engines.metrics import (
    ClassificationMetrics,
    DetectionMetrics,
    IgniteMetricAdapter,
    MultiTaskMetrics,
    ReconstructionMetrics,
    SegmentationMetrics,
    instance_masks_from_boxes,
    mask_iou,
    roc_with_youden,
)

approx = pytest.approx


def _has(**flags: list[bool]) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(v, dtype=torch.bool) for task, v in flags.items()}


# ---------------------------------------------------------------- classification

# six samples, true labels 0 0 1 1 2 2; probabilities chosen so predictions are 0 1 1 1 2 0
Y6 = [0, 0, 1, 1, 2, 2]
P6 = [
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.2, 0.7, 0.1],
    [0.1, 0.8, 0.1],
    [0.1, 0.1, 0.8],
    [0.5, 0.2, 0.3],
]


def _class_batch(labels, probs, has=None):
    logits = torch.log(torch.tensor(probs, dtype=torch.float64)).float()  # softmax(log p) = p
    has = has if has is not None else [True] * len(labels)
    return {"class": logits}, {"class": torch.tensor(labels), "has": _has(**{"class": has})}


def test_classification_hand_computed():
    m = ClassificationMetrics()
    m.update(*_class_batch(Y6, P6))
    r = m.compute()
    assert r["class_n"] == 6
    assert r["class_accuracy"] == approx(4 / 6)
    # class 0: TP 1 (s0), FP 1 (s5), FN 1 (s1) -> 2/(2+1+1); class 1: TP 2, FP 1 (s1) -> 4/5; class 2: TP 1, FN 1 -> 2/3
    assert r["class_f1"] == approx([0.5, 0.8, 2 / 3])
    assert r["class_f1_macro"] == approx((0.5 + 0.8 + 2 / 3) / 3)
    # AUC = share of (positive, negative) pairs ranked right. Class 0: positives 0.7, 0.3 vs negatives
    # 0.2 0.1 0.1 0.5 -> 4 + 3 of 8 pairs. Classes 1 and 2 are separated perfectly.
    assert r["class_auc"] == approx([7 / 8, 1.0, 1.0])
    assert r["class_auc_macro"] == approx((7 / 8 + 2) / 3)
    # Youden: class 0 at cut-off 0.3 has tpr 1, fpr 1/4 (J 0.75), better than 0.7 (tpr .5, fpr 0);
    # class 1 at 0.7 (its lowest positive) has tpr 1, fpr 0
    assert r["class_youden_threshold"][:2] == approx([0.3, 0.7])
    assert r["class_youden_j"] == approx([0.75, 1.0, 1.0])
    assert r["class_confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.notes == []
    assert set(m.roc_curves()) == set(CLASS_NAMES)


def test_classification_skips_unlabelled_and_accumulates():
    m = ClassificationMetrics()
    # two batches; the extra samples are wrong but not labelled for "class"
    m.update(*_class_batch(Y6[:3] + [2], P6[:3] + [[0.9, 0.05, 0.05]], has=[True, True, True, False]))
    m.update(*_class_batch([0] + Y6[3:], [[0.05, 0.05, 0.9]] + P6[3:], has=[False, True, True, True]))
    r = m.compute()
    assert r["class_n"] == 6
    assert r["class_accuracy"] == approx(4 / 6)
    assert r["class_auc"] == approx([7 / 8, 1.0, 1.0])
    m.reset()
    assert m.compute()["class_n"] == 0


def test_classification_absent_class_is_nan_with_note():
    m = ClassificationMetrics()
    # no "cancer" in the ground truth, and never predicted
    m.update(*_class_batch([0, 0, 1, 1], [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]]))
    r = m.compute()
    assert math.isnan(r["class_auc"][2]) and math.isnan(r["class_youden_threshold"][2])
    assert r["class_auc"][:2] == approx([1.0, 1.0])
    assert r["class_auc_macro"] == approx(1.0)  # mean of the defined AUCs
    assert math.isnan(r["class_f1"][2])  # neither in truth nor predicted: no F1, left out of the macro
    assert r["class_f1_macro"] == approx((2 / 3 + 0.8) / 2)
    assert any("cancer" in note for note in m.notes)
    assert "cancer" not in m.roc_curves()


def test_classification_empty_has_same_keys():
    full = ClassificationMetrics()
    full.update(*_class_batch(Y6, P6))
    empty = ClassificationMetrics()
    empty.update(*_class_batch([0, 1], P6[:2], has=[False, False]))
    r = empty.compute()
    assert set(r) == set(full.compute())
    assert math.isnan(r["class_accuracy"]) and r["class_n"] == 0


def test_youden_separable_case():
    roc = roc_with_youden(np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9]))
    assert roc["auc"] == approx(1.0)
    assert roc["youden_threshold"] == approx(0.6)  # lowest positive score: tpr 1, fpr 0
    assert roc["youden_j"] == approx(1.0)
    assert math.isnan(roc_with_youden(np.ones(3), np.arange(3.0))["auc"])


# ---------------------------------------------------------------- segmentation

T4 = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # 4 lesion pixels
P4 = [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]  # 5 predicted pixels
# TP 3, FP 2 ((0,2), (3,3)), FN 1 ((1,1)), TN 10


def _seg_batch(preds, masks, has):
    logits = torch.tensor(preds, dtype=torch.float32)[:, None] * 10.0 - 5.0  # +5 on prediction, -5 off
    mask = torch.tensor(masks, dtype=torch.int64)[:, None]
    return {"seg": logits}, {"mask": mask, "has": _has(seg=has)}


def test_segmentation_hand_computed_4x4():
    m = SegmentationMetrics()
    garbage = [[1] * 4] * 4
    m.update(*_seg_batch([P4, garbage], [T4, [[0] * 4] * 4], has=[True, False]))
    r = m.compute()
    assert r["seg_n"] == 1
    assert r["seg_dice"] == approx(2 * 3 / (2 * 3 + 2 + 1))
    assert r["seg_iou"] == approx(3 / (3 + 2 + 1))
    assert r["seg_sensitivity"] == approx(3 / 4)
    assert r["seg_specificity"] == approx(10 / 12)
    assert r["seg_precision"] == approx(3 / 5)
    assert r["seg_dice_per_image"] == approx(2 / 3)
    assert r["seg_iou_per_image"] == approx(0.5)
    # pixel AUC with two score levels: pairs (4 lesion x 12 background): 3*10 right, 3*2 + 1*10 ties (half)
    assert r["seg_auc"] == approx((30 + 0.5 * 16) / 48)
    assert r["seg_dice_per_class"] == approx([2 / 3])
    assert m.lesion_names == ("lesion",)


def test_segmentation_empty_mask_counts_globally_not_per_image():
    m = SegmentationMetrics()
    fp_only = [[1, 1, 0, 0]] + [[0] * 4] * 3
    m.update(*_seg_batch([P4, fp_only], [T4, [[0] * 4] * 4], has=[True, True]))
    r = m.compute()
    # global: TP 3, FP 2 + 2, FN 1 -> Dice 6 / 11; per image: the image without lesion is left out
    assert r["seg_dice"] == approx(6 / 11)
    assert r["seg_precision"] == approx(3 / 7)
    assert r["seg_specificity"] == approx((10 + 14) / (12 + 16))
    assert r["seg_dice_per_image"] == approx(2 / 3)


def test_segmentation_no_lesion_anywhere_is_nan():
    m = SegmentationMetrics()
    m.update(*_seg_batch([[[0] * 4] * 4], [[[0] * 4] * 4], has=[True]))
    r = m.compute()
    assert math.isnan(r["seg_dice"]) and math.isnan(r["seg_dice_per_image"]) and math.isnan(r["seg_auc"])
    assert r["seg_specificity"] == approx(1.0)
    assert m.notes


def test_segmentation_multiclass_per_class():
    # labels 0..2, softmax head with 3 channels; 2 x 2 image
    mask = torch.tensor([[[[0, 1], [2, 2]]]])
    pred = torch.tensor([[1, 1], [1, 2]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1)[None].float() * 8.0
    m = SegmentationMetrics()
    m.update({"seg": logits}, {"mask": mask, "has": _has(seg=[True])})
    r = m.compute()
    # class 1: TP 1, FP 2 -> Dice 2/4; class 2: TP 1, FN 1 -> Dice 2/3
    assert r["seg_dice_per_class"] == approx([0.5, 2 / 3])
    assert r["seg_dice"] == approx((0.5 + 2 / 3) / 2)
    assert r["seg_sensitivity_per_class"] == approx([1.0, 0.5])
    assert m.lesion_names == ("ground-glass", "consolidation")
    with pytest.raises(ValueError, match="labels"):
        m.update({"seg": logits}, {"mask": mask + 1, "has": _has(seg=[True])})


def test_segmentation_pixel_sampling_is_seeded():
    torch.manual_seed(1)
    logits, mask = torch.randn(3, 1, 32, 32), (torch.rand(3, 1, 32, 32) > 0.7).long()
    batch = {"mask": mask, "has": _has(seg=[True] * 3)}
    values = []
    for _ in range(2):
        m = SegmentationMetrics(auc_pixels_per_image=100, seed=3)
        m.update({"seg": logits}, batch)
        values.append(m.compute()["seg_auc"])
    assert values[0] == values[1]


# ---------------------------------------------------------------- reconstruction


def test_reconstruction_psnr_of_known_mse():
    target = torch.rand(2, 1, 16, 16) * 0.8
    pred = target + 0.1  # MSE 0.01 -> PSNR 10 log10(1 / 0.01) = 20 dB
    m = ReconstructionMetrics()
    m.update({"recon": pred}, {"image": target, "has": _has(recon=[True, True])})
    r = m.compute()
    assert r["recon_mse"] == approx(0.01, rel=1e-4)
    assert r["recon_psnr"] == approx(20.0, rel=1e-4)
    assert r["recon_ssim"] < 1.0
    m.reset()
    garbage = torch.cat([target[:1], torch.zeros(1, 1, 16, 16)])
    m.update({"recon": garbage}, {"image": target, "has": _has(recon=[True, False])})
    r = m.compute()
    assert r["recon_n"] == 1 and r["recon_mse"] == 0.0 and r["recon_ssim"] == approx(1.0)


def test_reconstruction_clips_to_data_range():
    target = torch.ones(1, 1, 16, 16)
    batch = {"image": target, "has": _has(recon=[True])}
    clipped, raw = ReconstructionMetrics(), ReconstructionMetrics(clip=False)
    for m in (clipped, raw):
        m.update({"recon": target * 1.5}, batch)
    assert clipped.compute()["recon_mse"] == 0.0
    assert raw.compute()["recon_mse"] == approx(0.25)


# ---------------------------------------------------------------- detection

GT2 = torch.tensor([[0, 0, 50, 50], [100, 100, 150, 150]], dtype=torch.float32)
# hit on the first box (IoU 50*39 / 50*50 = 0.78), and a false positive; the second box is missed
PRED2 = {
    "boxes": torch.tensor([[0, 0, 50, 39], [200, 200, 230, 230]], dtype=torch.float32),
    "labels": torch.tensor([1, 1]),
    "scores": torch.tensor([0.9, 0.8]),
}


def _det_batch(gt_boxes, has):
    return {
        "boxes": gt_boxes,
        "box_labels": [torch.ones(len(b), dtype=torch.int64) for b in gt_boxes],
        "has": _has(det=has),
    }


def test_detection_ap50_two_boxes_by_hand():
    m = DetectionMetrics()
    unlabelled = {"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1]), "scores": torch.tensor([1.0])}
    m.update({"det": [PRED2, unlabelled]}, _det_batch([GT2, torch.zeros(0, 4)], has=[True, False]))
    r = m.compute()
    # Ranked by score: hit (precision 1, recall 1/2), then false positive (precision 1/2, recall 1/2).
    # COCO AP samples the interpolated precision at recall 0, 0.01, ..., 1: it is 1 up to recall 0.50
    # (51 points) and 0 beyond (recall never reached) -> AP = 51 / 101.
    assert r["det_ap50"] == approx(51 / 101)
    assert r["det_recall"] == approx(0.5)
    # IoU 0.78 passes the thresholds 0.50 ... 0.75 (6 of 10); at 0.80 ... 0.95 AP and recall are 0
    assert r["det_ap75"] == approx(51 / 101)
    assert r["det_map"] == approx(6 / 10 * 51 / 101)
    assert r["det_mar"] == approx(6 / 10 * 0.5)
    assert r["det_n"] == 1


def test_detection_false_positive_on_image_without_boxes():
    m = DetectionMetrics()
    fp = {"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.95])}
    m.update({"det": [PRED2, fp]}, _det_batch([GT2, torch.zeros(0, 4)], has=[True, True]))
    r = m.compute()
    # ranked: FP 0.95, hit 0.9, FP 0.8 -> precision 1/2 at recall 1/2 -> AP = 51 * 0.5 / 101
    assert r["det_ap50"] == approx(51 * 0.5 / 101)
    assert r["det_recall"] == approx(0.5)


def test_detection_class_without_ground_truth_is_nan():
    m = DetectionMetrics(class_names=("lesion", "nodule"))
    m.update({"det": [PRED2]}, _det_batch([GT2], has=[True]))
    r = m.compute()
    assert r["det_ap50"] == approx(51 / 101)  # the class without boxes is left out, not averaged as 0
    assert any("nodule" in note for note in m.notes)
    with pytest.raises(ValueError, match="box_labels"):
        m.update({"det": [PRED2]}, {**_det_batch([GT2], [True]), "box_labels": [torch.tensor([1, 3])]})


def test_detection_mask_ap():
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.int64)
    mask[0, 0, :4, :4] = 1
    pred_mask = torch.zeros(1, 1, 8, 8)
    pred_mask[0, 0, :3, :3] = 0.9  # mask IoU 9 / 16 = 0.5625 -> matched at IoU 0.50 and 0.55 only
    pred = {"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
            "masks": pred_mask}
    batch = {**_det_batch([torch.tensor([[0.0, 0, 4, 4]])], [True]), "mask": mask}
    batch["has"]["seg"] = torch.tensor([True])
    m = DetectionMetrics(masks=True)
    m.update({"det": [pred]}, batch)
    r = m.compute()
    assert r["det_map"] == approx(1.0)  # box IoU 1
    assert r["det_mask_ap50"] == approx(1.0)
    assert r["det_mask_ap75"] == approx(0.0)
    assert r["det_mask_map"] == approx(2 / 10)


def test_mask_iou_and_instance_masks():
    mask = torch.zeros(1, 6, 6, dtype=torch.int64)
    mask[0, 1:3, 1:3] = 2
    mask[0, 4:6, 4:6] = 1
    inst = instance_masks_from_boxes(mask, torch.tensor([[0.0, 0, 3, 3], [3.5, 3.5, 6, 6]]))
    assert inst.shape == (2, 6, 6) and inst.sum(dim=(1, 2)).tolist() == [4, 4]
    ious = mask_iou(inst, inst[:1])
    assert ious[:, 0] == approx([1.0, 0.0])
    assert mask_iou(inst, inst[:0]).shape == (2, 0) and mask_iou(inst[:0], inst).shape == (0, 2)


# ---------------------------------------------------------------- multi-task and Ignite


def _multi_batch():
    out, batch = _class_batch(Y6, P6)
    out["recon"] = torch.full((6, 1, 16, 16), 0.6)
    batch["image"] = torch.full((6, 1, 16, 16), 0.5)
    batch["has"]["recon"] = torch.ones(6, dtype=torch.bool)
    return out, batch


def test_multitask_metrics_merges_and_checks():
    m = MultiTaskMetrics(("class", "recon"))
    out, batch = _multi_batch()
    m.update(out, batch)
    r = m.compute()
    assert r["class_accuracy"] == approx(4 / 6) and r["recon_psnr"] == approx(20.0, rel=1e-4)
    assert set(m.roc_curves()) == {"class"}
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskMetrics(("class", "segmentation"))
    seg = MultiTaskMetrics(("seg",))
    with pytest.raises(ValueError, match="no 'seg' head"):
        seg.update(out, {**batch, "has": {**batch["has"], "seg": torch.ones(6, dtype=torch.bool)}})
    with pytest.raises(ValueError, match="has\\['seg'\\]"):
        seg.update(out, batch)


def test_ignite_adapter_flattens_into_state_metrics():
    out, batch = _multi_batch()
    halves = [
        ({k: v[:3] for k, v in out.items()}, {**batch, "class": batch["class"][:3], "image": batch["image"][:3],
                                              "has": {k: v[:3] for k, v in batch["has"].items()}}),
        ({k: v[3:] for k, v in out.items()}, {**batch, "class": batch["class"][3:], "image": batch["image"][3:],
                                              "has": {k: v[3:] for k, v in batch["has"].items()}}),
    ]
    evaluator = Engine(lambda engine, item: {"pred": item[0], "batch": item[1]})
    IgniteMetricAdapter(MultiTaskMetrics(("class", "recon"))).attach(evaluator, "val")
    state = evaluator.run(halves, max_epochs=1)
    assert state.metrics["class_accuracy"] == approx(4 / 6)
    assert state.metrics["class_auc"] == approx([7 / 8, 1.0, 1.0])
    assert state.metrics["recon_n"] == 6
    assert "val" not in state.metrics

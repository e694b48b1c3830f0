"""Each head learns 8 synthetic slices (bright ellipses on noise) on CPU within a bounded number of iterations."""

from __future__ import annotations

import pytest
import torch
from monai.metrics import compute_dice
from torchvision.ops import box_iou

from ctmtl.losses import MultiTaskLoss
from ctmtl.networks import MultiTaskNet, detection_targets

LIGHT_MASKRCNN = dict(
    fpn_channels=16,
    box_batch_size_per_image=32,
    rpn_batch_size_per_image=64,
    rpn_pre_nms_top_n=(200, 200),
    rpn_post_nms_top_n=(100, 100),
)


def _fit(net, batch, metric, goal, max_iters, lr, check_every=10, targets=None):
    """Adam on the batch until ``metric(eval output) >= goal`` (checked every ``check_every`` steps); best metric."""
    loss_fn = MultiTaskLoss()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    best = 0.0
    for it in range(1, max_iters + 1):
        net.train()
        total, _ = loss_fn(net(batch["image"], targets=targets), batch)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        if it % check_every == 0:
            net.eval()
            with torch.no_grad():
                best = max(best, metric(net(batch["image"])))
            if best >= goal:
                break
    return best


def _recall(found, batch, iou=0.5, score=0.5):
    """Fraction of ground-truth boxes hit (IoU >= iou) by one of the image's n_gt + 1 best detections with
    score >= score."""
    hits = total = 0
    for det, gt in zip(found, batch["boxes"]):
        order = det["scores"].argsort(descending=True)[: len(gt) + 1]
        boxes = det["boxes"][order][det["scores"][order] >= score]
        total += len(gt)
        if len(boxes):
            hits += int((box_iou(gt, boxes).max(dim=1).values >= iou).sum())
    return hits / total


def test_segmentation_head_reaches_dice_0_9(batch):
    net = MultiTaskNet("small", tasks=("seg",))

    def dice(out):
        return compute_dice((out["seg"] > 0).float(), batch["mask"].float()).mean().item()

    assert _fit(net, batch, dice, 0.9, 150, 1e-2) > 0.9


def test_classifier_reaches_accuracy_1(batch):
    net = MultiTaskNet("small", tasks=("class",))

    def accuracy(out):
        return (out["class"].argmax(1) == batch["class"]).float().mean().item()

    assert _fit(net, batch, accuracy, 1.0, 200, 3e-3) == 1.0


def test_retinanet_recalls_the_boxes(batch):
    net = MultiTaskNet(
        "small", tasks=("det",), det_head="retinanet", image_size=(64, 64), det_kwargs={"fpn_channels": 32}
    )
    recall = _fit(net, batch, lambda out: _recall(out["det"], batch), 1.0, 200, 3e-3, targets=detection_targets(batch))
    assert recall == 1.0


@pytest.mark.slow
def test_maskrcnn_recalls_the_boxes_and_masks(batch):
    net = MultiTaskNet("small", tasks=("det",), det_head="maskrcnn", image_size=(64, 64), det_kwargs=LIGHT_MASKRCNN)
    targets = detection_targets(batch, with_masks=True)
    recall = _fit(net, batch, lambda out: _recall(out["det"], batch), 1.0, 250, 3e-3, targets=targets)
    assert recall == 1.0
    net.eval()
    with torch.no_grad():
        found = net(batch["image"])["det"]
    for det, lesion in zip(found, batch["mask"][:, 0] > 0):
        top = det["masks"][det["scores"] >= 0.5, 0] >= 0.5
        assert top.shape[0] >= 1
        precision = (top & lesion).sum() / top.sum()  # predicted instance pixels lie on the lesions
        assert precision > 0.8

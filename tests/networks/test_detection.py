"""Detection heads on the shared encoder: the torchvision/MONAI contract, negatives, missing labels, boxes."""

from __future__ import annotations

import pytest
import torch

from ctmtl.networks import ENCODERS, MaskRCNNHead, RetinaNetHead, StageFPN, box_masks, detection_targets
from ctmtl.networks.detection import AnchorFocalLoss

CHANNELS = ENCODERS["small"].out_channels
LIGHT_MASKRCNN = dict(
    fpn_channels=16, box_batch_size_per_image=32, rpn_pre_nms_top_n=(200, 200), rpn_post_nms_top_n=(100, 100)
)


def _features(batch=2, height=64, width=64):
    encoder = ENCODERS.build("small")
    image = torch.rand(batch, 1, height, width)
    return image, encoder(image)


def _target(boxes, size=(64, 64)):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "masks": box_masks(boxes, size)}


def _heads():
    return [
        RetinaNetHead(CHANNELS, fpn_channels=16),
        RetinaNetHead(CHANNELS, fpn_channels=16, cls_loss="focal", box_loss="giou"),
        MaskRCNNHead(CHANNELS, image_size=(64, 64), **LIGHT_MASKRCNN),
    ]


HEAD_IDS = ["retinanet", "retinanet-focal-giou", "maskrcnn"]


def test_stage_fpn_levels_and_strides():
    image, features = _features()
    fpn = StageFPN(CHANNELS, levels=(1, 2, 3, 4), out_channels=16, extra_pool=True)
    out = fpn(features)
    assert list(out) == ["0", "1", "2", "3", "pool"] and fpn.strides == [4, 8, 16, 32, 64]
    assert [tuple(v.shape) for v in out.values()] == [(2, 16, s, s) for s in (16, 8, 4, 2, 1)]
    with pytest.raises(ValueError, match="levels must be increasing stage indices in 0..4"):
        StageFPN(CHANNELS, levels=(3, 2), out_channels=16)


@pytest.mark.parametrize("head", _heads(), ids=HEAD_IDS)
def test_training_losses_with_positive_and_negative_samples(head):
    image, features = _features()
    targets = [_target([[8, 10, 30, 28], [40, 40, 60, 56]]), _target([])]  # the second slice has no lesion
    losses = head.train()(image, features, targets)
    assert set(losses) == set(head.loss_names)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("head", _heads(), ids=HEAD_IDS)
def test_all_negative_batch(head):
    image, features = _features()
    losses = head.train()(image, features, [_target([]), _target([])])
    assert torch.isfinite(sum(losses.values()))
    assert losses[head.loss_names[0]] > 0  # background classification still learns


@pytest.mark.parametrize("head", _heads(), ids=HEAD_IDS)
def test_samples_without_detection_labels_add_nothing(head):
    image, features = _features(batch=3)
    features = [f.detach().requires_grad_() for f in features]
    losses = head.train()(image, features, [None, _target([[8, 10, 30, 28]]), None])
    sum(losses.values()).backward()
    used = [f for f in features if f.grad is not None]  # the pyramid's stages
    assert len(used) >= 3
    for f in used:  # no gradient reaches the unlabelled samples' features
        assert f.grad[[0, 2]].abs().sum() == 0 and f.grad[1].abs().sum() > 0
    head.zero_grad()
    losses = head(image, features, [None, None, None])
    assert set(losses) == set(head.loss_names) and all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()  # a valid graph: every head parameter gets a zero gradient
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in head.parameters())


@pytest.mark.parametrize("head", _heads(), ids=HEAD_IDS)
def test_eval_returns_one_dict_per_image(head):
    image, features = _features(batch=2)
    with torch.no_grad():
        found = head.eval()(image, features)
    assert len(found) == 2
    for d in found:
        keys = {"boxes", "labels", "scores"} | ({"masks"} if isinstance(head, MaskRCNNHead) else set())
        assert set(d) == keys
        n = d["boxes"].shape[0]
        assert d["boxes"].shape == (n, 4) and d["labels"].dtype == torch.int64 and d["scores"].shape == (n,)
        if n:
            assert d["labels"].min() >= 1
        if "masks" in d:
            assert d["masks"].shape == (n, 1, 64, 64)


def test_retinanet_boxes_are_xyxy_with_x_along_columns():
    """On a 64 x 128 (H x W) image, boxes reach x = 128 but never y > 64: MONAI's (H-first) boxes are converted."""
    head = RetinaNetHead(CHANNELS, fpn_channels=16, score_thresh=0.0, nms_thresh=0.9, detections_per_img=300).eval()
    image, features = _features(batch=1, height=64, width=128)
    with torch.no_grad():
        boxes = head(image, features)[0]["boxes"]
    assert boxes.shape[0] > 50
    assert boxes[:, 2].max() > 96 and boxes[:, 2].max() <= 128
    assert boxes[:, 3].max() <= 64 and boxes[:, :2].min() >= 0


def test_bad_targets_are_named():
    head = RetinaNetHead(CHANNELS, fpn_channels=16).train()
    image, features = _features()
    good = _target([[8, 10, 30, 28]])
    with pytest.raises(ValueError, match="needs targets"):
        head(image, features)
    with pytest.raises(ValueError, match="got 1 detection targets for a batch of 2"):
        head(image, features, [good])
    flat = {"boxes": torch.tensor([[8.0, 10, 8, 28]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"detection target 1: box 0 \[8.0, 10.0, 8.0, 28.0\] has no area"):
        head(image, features, [good, flat])
    background = {"boxes": torch.tensor([[8.0, 10, 30, 28]]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match=r"labels must be in 1..1 \(0 is background\)"):
        head(image, features, [good, background])
    with pytest.raises(ValueError, match="labels must be int64"):
        head(image, features, [good, {"boxes": good["boxes"], "labels": good["labels"].int()}])
    maskrcnn = MaskRCNNHead(CHANNELS, image_size=(64, 64), **LIGHT_MASKRCNN).train()
    with pytest.raises(ValueError, match="detection target 0: missing 'masks'"):
        maskrcnn(image, features, [{"boxes": good["boxes"], "labels": good["labels"]}, good])
    with pytest.raises(ValueError, match=r"masks must be N x H x W = \(1, 64, 64\)"):
        maskrcnn(image, features, [{**good, "masks": good["masks"][:, :32]}, good])


def test_box_masks_cut_boxes_from_the_lesion_mask():
    boxes = torch.tensor([[2.0, 1.0, 6.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    masks = box_masks(boxes, (6, 8))
    assert masks.dtype == torch.uint8 and masks.shape == (2, 6, 8)
    assert masks[0].sum() == 4 * 3 and masks[0, 1:4, 2:6].all()
    lesion = torch.zeros(6, 8, dtype=torch.bool)
    lesion[2, 3] = True
    cut = box_masks(boxes, (6, 8), lesion)
    assert cut[0].sum() == 1 and cut[0, 2, 3] == 1
    assert torch.equal(cut[1], masks[1])  # no lesion pixel in the box: the filled box


def test_detection_targets_from_a_batch(batch):
    batch["has"]["det"][1] = False
    batch["has"]["seg"][2] = False
    targets = detection_targets(batch, with_masks=True)
    assert targets[1] is None and len(targets) == 8
    t0 = targets[0]
    assert torch.equal(t0["boxes"], batch["boxes"][0]) and t0["labels"].dtype == torch.int64
    assert t0["masks"].shape == (len(t0["boxes"]), 64, 64)
    assert (t0["masks"].bool() & ~(batch["mask"][0, 0] > 0)).sum() == 0  # cut from the lesion mask
    assert torch.equal(targets[2]["masks"], box_masks(batch["boxes"][2], (64, 64)))  # no mask: filled boxes
    assert "masks" not in detection_targets(batch)[0]


@pytest.mark.parametrize("detections_per_img", [100, 5])
def test_fast_box_selector_selects_what_monai_selects(detections_per_img):
    """torchvision's NMS in place of MONAI's Python loop: the same boxes, scores and labels in the same order."""
    from monai.apps.detection.utils.box_selector import BoxSelector

    from ctmtl.networks.detection import FastBoxSelector

    g = torch.Generator().manual_seed(0)
    boxes, logits = [], []
    for n in (400, 120, 30):  # three levels of anchors, many overlapping candidates above the score threshold
        start = torch.rand(n, 2, generator=g) * 60
        boxes.append(torch.cat([start, start + 2 + torch.rand(n, 2, generator=g) * 20], dim=1))
        logits.append(torch.randn(n, 2, generator=g))  # two classes: NMS keeps classes apart
    kwargs = dict(score_thresh=0.3, topk_candidates_per_level=100, nms_thresh=0.5, detections_per_img=detections_per_img)
    expected = BoxSelector(**kwargs).select_boxes_per_image(boxes, logits, (64, 64))
    got = FastBoxSelector(**kwargs).select_boxes_per_image(boxes, logits, (64, 64))
    assert 5 <= len(expected[0]) <= detections_per_img
    for e, o in zip(expected, got):
        assert torch.equal(e, o)
    assert type(RetinaNetHead(CHANNELS, fpn_channels=16).detector.box_selector) is FastBoxSelector


def test_anchor_focal_loss_is_summed_and_divided_by_the_foreground_anchors():
    """Hand values: at p = 0.5 a foreground anchor costs 0.25 * 0.5^2 * ln 2, a background one 0.75 * 0.5^2 * ln 2."""
    import math

    fg, bg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    loss = AnchorFocalLoss()
    assert loss(torch.zeros(3, 1), torch.tensor([[1.0], [0.0], [0.0]])).item() == pytest.approx(fg + 2 * bg, rel=1e-5)
    assert loss(torch.zeros(3, 1), torch.tensor([[1.0], [1.0], [0.0]])).item() == pytest.approx((2 * fg + bg) / 2, rel=1e-5)
    assert loss(torch.zeros(2, 1), torch.zeros(2, 1)).item() == pytest.approx(2 * bg, rel=1e-5)  # no foreground: / 1
    with pytest.raises(ValueError, match="cls_loss must be 'bce' or 'focal'"):
        RetinaNetHead(CHANNELS, cls_loss="dice")
    assert RetinaNetHead(CHANNELS, cls_loss="focal").detector.fg_bg_sampler is None  # every anchor counts


def test_giou_box_loss_is_one_minus_giou_of_the_matched_anchors():
    """With the regression output zeroed, every predicted box is its anchor: the loss is the mean of 1 - GIoU between
    the ATSS-matched anchors and their boxes (GIoU from torchvision, not MONAI's)."""
    from torchvision.ops import generalized_box_iou_loss

    torch.manual_seed(0)
    head = RetinaNetHead(CHANNELS, fpn_channels=16, cls_loss="focal", box_loss="giou").train()
    last = head.detector.network.regression_head.bbox_reg
    torch.nn.init.zeros_(last.weight), torch.nn.init.zeros_(last.bias)
    image, features = _features(batch=1)
    target = _target([[8, 10, 30, 28], [40, 40, 60, 56]])
    loss = head(image, features, [target])["box_regression"]

    det = head.detector
    outputs, num_locs = head._head_outputs(image, features)
    boxes = target["boxes"][:, [1, 0, 3, 2]]  # MONAI's H-first order, as the head passes them
    matched = det.compute_anchor_matched_idxs(det.anchors, [{"boxes": boxes, "labels": torch.zeros(2).long()}], num_locs)[0]
    fg = matched >= 0
    assert 2 <= int(fg.sum()) < len(matched)
    expected = generalized_box_iou_loss(det.anchors[0][fg], boxes[matched[fg]], reduction="mean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and 0 < loss.item() < 2
    smooth_l1 = RetinaNetHead(CHANNELS, fpn_channels=16).detector
    assert smooth_l1.encode_gt and not smooth_l1.decode_pred  # MONAI's default: offsets, not boxes
    with pytest.raises(ValueError, match="box_loss must be 'smooth_l1' or 'giou'"):
        RetinaNetHead(CHANNELS, box_loss="l2")
    with pytest.raises(ValueError, match="atss_candidates must be >= 1"):
        RetinaNetHead(CHANNELS, atss_candidates=0)

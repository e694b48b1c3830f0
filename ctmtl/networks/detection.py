"""Detection heads on a feature pyramid over the shared encoder's stages.

Both heads keep the torchvision / MONAI detection contract and take the encoder's feature maps, computed once by
:class:`ctmtl.networks.MultiTaskNet`, instead of running a backbone of their own:

- :class:`RetinaNetHead`: MONAI ``RetinaNet`` classification / regression heads with the parts of MONAI's
  ``RetinaNetDetector`` (anchor generator, ATSS matcher, hard-negative sampler, box coder, losses, box selector);
- :class:`MaskRCNNHead`: torchvision Mask R-CNN's ``RegionProposalNetwork`` and ``RoIHeads`` (boxes and instance
  masks); images are never rescaled (``min_size``/``max_size`` are the input size).

Boxes everywhere in ctmtl are ``xyxy`` in pixels of the input image, x along the column (W) axis, as in torchvision;
labels are 1..K (0 is background). ``forward(image, features, targets)``:

- training: ``targets`` is a list of B entries, each a dict (``boxes`` float ``N x 4``, ``labels`` int64 ``N``,
  ``masks`` uint8 ``N x H x W`` for Mask R-CNN; N may be 0 for a negative slice) or ``None`` for a sample that
  carries no detection label (it adds no loss). Returns a dict of scalar losses.
- evaluation: a list of B dicts ``boxes`` ``N x 4``, ``labels`` int64 ``N``, ``scores`` ``N`` in [0, 1]
  (+ ``masks`` float ``N x 1 x H x W`` in [0, 1] for Mask R-CNN).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGenerator as MonaiAnchorGenerator
from monai.apps.detection.utils.box_selector import BoxSelector
from monai.data.box_utils import box_iou, clip_boxes_to_image
from monai.losses import BoxGIoULoss
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, batched_nms, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = [
    "DETECTION_HEADS",
    "AnchorFocalLoss",
    "DetectionHead",
    "FastBoxSelector",
    "MaskRCNNHead",
    "RetinaNetHead",
    "StageFPN",
    "box_masks",
    "detection_targets",
]


class StageFPN(nn.Module):
    """torchvision ``FeaturePyramidNetwork`` over some stages of an encoder.

    Args:
        encoder_channels: channels of every encoder stage (stage i has stride 2^(i+1)).
        levels: indices of the stages fed to the pyramid, shallowest first.
        out_channels: channels of every pyramid map.
        extra_pool: add torchvision's ``LastLevelMaxPool`` map (key ``"pool"``, stride twice the last level).

    Forward: the encoder's list of maps -> ``OrderedDict`` ``"0"``, ``"1"``, ... (+ ``"pool"``) of
    ``B x out_channels x h_l x w_l`` maps, finest first.
    """

    def __init__(
        self, encoder_channels: Sequence[int], levels: Sequence[int], out_channels: int, extra_pool: bool = False
    ) -> None:
        super().__init__()
        levels = tuple(int(level) for level in levels)
        if not levels or list(levels) != sorted(set(levels)) or levels[0] < 0 or levels[-1] >= len(encoder_channels):
            raise ValueError(
                f"levels must be increasing stage indices in 0..{len(encoder_channels) - 1}, got {levels}."
            )
        self.levels = levels
        self.out_channels = out_channels  # read by MONAI's RetinaNet
        self.names = [str(k) for k in range(len(levels))]
        self.strides = [2 ** (level + 1) for level in levels] + ([2 ** (levels[-1] + 2)] if extra_pool else [])
        self.fpn = FeaturePyramidNetwork(
            [encoder_channels[level] for level in levels],
            out_channels,
            extra_blocks=LastLevelMaxPool() if extra_pool else None,
        )

    def forward(self, features: list[Tensor]) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((name, features[level]) for name, level in zip(self.names, self.levels)))


class DetectionHead(nn.Module):
    """Shared behaviour of the detection heads: target checks, samples without detection labels, zero losses.

    Written here because neither torchvision nor MONAI detectors accept a batch in which some samples carry no
    detection label (as opposed to zero boxes): those are dropped before the losses, and an all-unlabelled batch
    gives exact zeros. Subclasses implement :meth:`losses` (training) and :meth:`detect` (evaluation) on the kept samples, and
    name their losses in :attr:`loss_names`.
    """

    loss_names: tuple[str, ...] = ()
    needs_masks = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}.")
        self.num_classes = num_classes

    def forward(
        self, image: Tensor, features: list[Tensor], targets: Sequence[Mapping[str, Tensor] | None] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """
        Args:
            image: ``B x C x H x W`` input of the encoder (its size and device are used, not its values).
            features: the encoder's maps for ``image``.
            targets: training only; B entries, a dict or ``None`` (no detection label) each.
        """
        if not self.training:
            return self.detect(image, features)
        if targets is None:
            raise ValueError("detection in training mode needs targets (a list of B dicts or None).")
        if len(targets) != image.shape[0]:
            raise ValueError(f"got {len(targets)} detection targets for a batch of {image.shape[0]} images.")
        keep = [i for i, t in enumerate(targets) if t is not None]
        if not keep:
            # no sample carries boxes: exactly zero, attached to every head parameter (a valid graph; DDP-safe)
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {name: zero for name in self.loss_names}
        checked = [self.check_target(targets[i], i, image) for i in keep]
        if len(keep) < image.shape[0]:
            index = torch.as_tensor(keep, device=image.device)
            image, features = image[index], [f[index] for f in features]
        return self.losses(image, features, checked)

    def check_target(self, target: Mapping[str, Tensor], index: int, image: Tensor) -> dict[str, Tensor]:
        """Validate one target (``xyxy`` pixel boxes with area, labels in 1..K) and move it to the image's device."""
        for key in ("boxes", "labels") + (("masks",) if self.needs_masks else ()):
            if key not in target:
                raise ValueError(f"detection target {index}: missing {key!r} (has {sorted(target)}).")
        boxes = torch.as_tensor(target["boxes"], device=image.device)
        labels = torch.as_tensor(target["labels"], device=image.device)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"detection target {index}: boxes must be float N x 4, got {boxes.dtype} {tuple(boxes.shape)}."
            )
        if labels.dtype != torch.int64 or labels.shape != (boxes.shape[0],):
            raise ValueError(
                f"detection target {index}: labels must be int64 of shape ({boxes.shape[0]},), "
                f"got {labels.dtype} {tuple(labels.shape)}."
            )
        flat = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if flat.any():
            j = int(flat.nonzero()[0])
            raise ValueError(f"detection target {index}: box {j} {boxes[j].tolist()} has no area (xyxy pixels).")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > self.num_classes):
            raise ValueError(
                f"detection target {index}: labels must be in 1..{self.num_classes} (0 is background), "
                f"got {labels.tolist()}."
            )
        checked = {"boxes": boxes.to(torch.float32), "labels": labels}
        if self.needs_masks:
            masks = torch.as_tensor(target["masks"], device=image.device)
            if masks.shape != (boxes.shape[0], *image.shape[-2:]):
                raise ValueError(
                    f"detection target {index}: masks must be N x H x W = "
                    f"{(boxes.shape[0], *image.shape[-2:])}, got {tuple(masks.shape)}."
                )
            checked["masks"] = masks.to(torch.uint8)
        return checked

    def losses(self, image: Tensor, features: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def detect(self, image: Tensor, features: list[Tensor]) -> list[dict[str, Tensor]]:
        raise NotImplementedError


def _swap_xy(boxes: Tensor) -> Tensor:
    """torchvision ``xyxy`` (x along W) <-> MONAI 2D boxes (first coordinate along the first spatial axis, H)."""
    return boxes[:, [1, 0, 3, 2]]


class FastBoxSelector(BoxSelector):
    """MONAI's ``BoxSelector`` (per-level score threshold and top-k, clipping, NMS over the image, top detections)
    with the NMS done by torchvision's compiled ``batched_nms`` (2D boxes only).

    MONAI's ``batched_nms`` is a Python loop over the sorted boxes; while the detector is still unsure it keeps
    thousands of candidates above ``score_thresh`` per image, and that loop took two thirds of a validation pass of
    the demo's DR stage on CPU. torchvision's NMS has the same rule (greedy by score, drop IoU > ``nms_thresh``,
    classes kept apart), so the output is the same boxes in the same order (tested against MONAI's).
    """

    def select_boxes_per_image(
        self, boxes_list: list[Tensor], logits_list: list[Tensor], spatial_size: list[int] | tuple[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        if len(boxes_list) != len(logits_list):
            raise ValueError(f"got boxes for {len(boxes_list)} levels but logits for {len(logits_list)}")
        if boxes_list[0].shape[-1] != 4 or self.box_overlap_metric is not box_iou:
            return super().select_boxes_per_image(boxes_list, logits_list, spatial_size)  # 3D or not IoU: MONAI's
        boxes, scores, labels = [], [], []
        for boxes_per_level, logits_per_level in zip(boxes_list, logits_list):
            topk_idxs, scores_per_level, labels_per_level = self.select_top_score_idx_per_level(logits_per_level)
            kept_boxes, keep = clip_boxes_to_image(boxes_per_level[topk_idxs], spatial_size, remove_empty=True)
            boxes.append(kept_boxes)
            scores.append(scores_per_level[keep])
            labels.append(labels_per_level[keep])
        boxes_t, scores_t, labels_t = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep_t = batched_nms(boxes_t.float(), scores_t.float(), labels_t, self.nms_thresh)
        if self.detections_per_img >= 1:
            keep_t = keep_t[: self.detections_per_img]
        return boxes_t[keep_t].to(boxes_list[0].dtype), scores_t[keep_t].to(logits_list[0].dtype), labels_t[keep_t]


class AnchorFocalLoss(nn.Module):
    """RetinaNet's classification loss (Lin et al. 2017, as in torchvision's ``RetinaNet``): torchvision's
    ``sigmoid_focal_loss`` summed over every matched or background anchor and divided by the number of foreground
    anchors. MONAI's detector takes any ``cls_loss``, but its own choices (BCE or MONAI's ``FocalLoss``) average
    over all anchors, which scales the loss by 1 / (anchors per batch) instead; this is that normalisation.

    Input logits ``N x K``, one-hot targets ``N x K`` (all zero for a background anchor); returns a scalar.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss = sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="sum")
        return loss / targets.sum().clamp(min=1.0)


class RetinaNetHead(DetectionHead):
    """MONAI RetinaNet (ATSS matcher, hard-negative sampler) on an FPN over the shared encoder's stages.

    A MONAI ``RetinaNetDetector`` holds the network (``RetinaNet`` whose ``feature_extractor`` is the
    :class:`StageFPN`, fed the encoder's maps) and the training / inference parts; its own ``forward`` is not
    used because it would run a backbone on the image.

    Args:
        encoder_channels: channels of every encoder stage.
        num_classes: foreground classes (labels 1..num_classes).
        image_size: unused (kept for a common signature with :class:`MaskRCNNHead`).
        levels: encoder stages in the pyramid (default strides 8, 16, 32).
        fpn_channels: pyramid and head width (a multiple of 8: the heads use GroupNorm(8)).
        anchor_scale: base anchor size in units of the level's stride.
        octave_scales: anchor sizes per level, ``anchor_scale * stride * 2^(k / octave_scales)``.
        aspect_ratios: anchor aspect ratios per size.
        atss_candidates, sampler_batch_size, positive_fraction, min_neg, pool_size: ATSS matcher and
            hard-negative sampler settings (MONAI LUNA16 tutorial values).
        cls_loss: ``"bce"``: BCE on the anchors the hard-negative sampler draws (MONAI's LUNA16 tutorial);
            ``"focal"``: :class:`AnchorFocalLoss` on every anchor, no sampler (the RetinaNet paper's).
        box_loss: ``"smooth_l1"``: MONAI's default, smooth L1 (beta 1/9) on the encoded box offsets, averaged over
            the 4 offsets of every matched anchor; ``"giou"``: MONAI's ``BoxGIoULoss`` (1 - generalised IoU, in
            [0, 2)) on the decoded boxes, averaged over the matched anchors; it scores the overlap that AP50 counts,
            whatever the box size.
        score_thresh, nms_thresh, detections_per_img: box selection at inference.
    """

    loss_names = ("classification", "box_regression")

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int = 1,
        image_size: Sequence[int] | None = None,
        levels: Sequence[int] = (2, 3, 4),
        fpn_channels: int = 64,
        anchor_scale: float = 2.0,
        octave_scales: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        atss_candidates: int = 4,
        sampler_batch_size: int = 64,
        positive_fraction: float = 0.3,
        min_neg: int = 16,
        pool_size: float = 20,
        cls_loss: str = "bce",
        box_loss: str = "smooth_l1",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__(num_classes)
        if cls_loss not in ("bce", "focal"):
            raise ValueError(f"cls_loss must be 'bce' or 'focal', got {cls_loss!r}.")
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}.")
        if int(atss_candidates) < 1:  # MONAI's ATSSMatcher takes top-0 anchors without a word and matches none
            raise ValueError(f"atss_candidates must be >= 1 (anchors per pyramid level per box), got {atss_candidates}.")
        if fpn_channels % 8:
            raise ValueError(f"fpn_channels must be a multiple of 8 (GroupNorm(8) in the heads), got {fpn_channels}.")
        fpn = StageFPN(encoder_channels, levels, fpn_channels)
        sizes = [tuple(anchor_scale * s * 2 ** (k / octave_scales) for k in range(octave_scales)) for s in fpn.strides]
        anchors = MonaiAnchorGenerator(sizes, aspect_ratios=[tuple(aspect_ratios)] * len(sizes))
        network = RetinaNet(
            spatial_dims=2,
            num_classes=num_classes,
            num_anchors=anchors.num_anchors_per_location()[0],
            feature_extractor=fpn,
            size_divisible=fpn.strides[-1],
        )
        self.detector = RetinaNetDetector(network, anchors)
        self.detector.set_atss_matcher(num_candidates=int(atss_candidates), center_in_gt=False)
        if cls_loss == "focal":
            self.detector.set_cls_loss(AnchorFocalLoss())
        else:
            self.detector.set_hard_negative_sampler(
                batch_size_per_image=sampler_batch_size,
                positive_fraction=positive_fraction,
                min_neg=min_neg,
                pool_size=pool_size,
            )
        if box_loss == "giou":  # MONAI's documented GIoU setting: compare decoded boxes, not encoded offsets
            self.detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
        # what ``set_box_selector_parameters`` builds, with torchvision's NMS
        self.detector.box_selector = FastBoxSelector(
            box_overlap_metric=self.detector.box_overlap_metric,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )

    def _head_outputs(self, image: Tensor, features: list[Tensor]) -> tuple[dict[str, Tensor], list[int]]:
        """The steps of ``RetinaNetDetector.forward`` after its backbone: heads, anchors, flattened maps."""
        det = self.detector
        head_outputs = det.network(features)  # RetinaNet's feature_extractor (the FPN) takes the encoder maps
        if det.anchors is not None and det.anchors[0].device != image.device:
            det.anchors = None  # the cache only compares shapes
        det.generate_anchors(image, head_outputs)
        num_anchor_locs_per_level = [x.shape[2:].numel() for x in head_outputs[det.cls_key]]
        for key in (det.cls_key, det.box_reg_key):
            head_outputs[key] = det._reshape_maps(head_outputs[key])  # MONAI's own flattening, reused as is
        return head_outputs, num_anchor_locs_per_level

    def losses(self, image: Tensor, features: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        det = self.detector
        head_outputs, num_locs = self._head_outputs(image, features)
        monai_targets = [
            {det.target_box_key: _swap_xy(t["boxes"]), det.target_label_key: t["labels"] - 1} for t in targets
        ]  # MONAI counts foreground classes from 0
        losses = det.compute_loss(head_outputs, monai_targets, det.anchors, num_locs)
        # MONAI returns a constant CPU box loss when no anchor matched (all-negative batch)
        return {name: losses[name].to(image.device) for name in self.loss_names}

    def detect(self, image: Tensor, features: list[Tensor]) -> list[dict[str, Tensor]]:
        det = self.detector
        head_outputs, num_locs = self._head_outputs(image, features)
        image_sizes = [list(image.shape[-2:])] * image.shape[0]
        found = det.postprocess_detections(head_outputs, det.anchors, image_sizes, num_locs)
        return [
            {
                "boxes": _swap_xy(d[det.target_box_key]),
                "labels": d[det.target_label_key].long() + 1,
                "scores": d[det.pred_score_key],
            }
            for d in found
        ]


class MaskRCNNHead(DetectionHead):
    """torchvision Mask R-CNN (RPN + RoI heads with box and mask branches) on an FPN over the shared encoder.

    Equivalent to ``torchvision.models.detection.MaskRCNN`` with the shared encoder + FPN as its backbone and
    ``min_size``/``max_size`` equal to the input size, except that the image is not normalised or resized at all:
    the features come from the shared encoder, computed once on the ``[0, 1]`` single-channel input.
    ``GeneralizedRCNNTransform`` is used only to paste the ``28 x 28`` mask predictions into the image.

    Args:
        encoder_channels: channels of every encoder stage.
        num_classes: foreground classes (labels 1..num_classes).
        image_size: training slice size ``(H, W)`` (the transform's ``min_size``/``max_size``).
        levels: encoder stages in the pyramid (default strides 4..32, plus the max-pooled stride 64 map).
        fpn_channels: pyramid width.
        anchor_scale: anchor size in units of the level's stride (one size, several ratios per level).
        aspect_ratios: anchor aspect ratios.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept per level / per image, ``(training, testing)``.
        rpn_batch_size_per_image, box_batch_size_per_image: sampled anchors / proposals per image.
        representation_size: width of the box head MLP (default ``min(1024, 4 * fpn_channels)``).
        mask_layers: convolutions in the mask head.
        score_thresh, nms_thresh, detections_per_img: box selection at inference.
    """

    loss_names = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
    needs_masks = True

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int = 1,
        image_size: Sequence[int] = (256, 256),
        levels: Sequence[int] = (1, 2, 3, 4),
        fpn_channels: int = 64,
        anchor_scale: float = 4.0,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n: tuple[int, int] = (1000, 500),
        rpn_post_nms_top_n: tuple[int, int] = (500, 300),
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 128,
        representation_size: int | None = None,
        mask_layers: int = 4,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__(num_classes)
        self.fpn = StageFPN(encoder_channels, levels, fpn_channels, extra_pool=True)
        sizes = tuple((anchor_scale * s,) for s in self.fpn.strides)
        anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(fpn_channels, len(aspect_ratios)),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=0.5,
            pre_nms_top_n={"training": rpn_pre_nms_top_n[0], "testing": rpn_pre_nms_top_n[1]},
            post_nms_top_n={"training": rpn_post_nms_top_n[0], "testing": rpn_post_nms_top_n[1]},
            nms_thresh=0.7,
        )
        representation_size = representation_size or min(1024, 4 * fpn_channels)
        self.roi_heads = RoIHeads(
            box_roi_pool=MultiScaleRoIAlign(self.fpn.names, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(self.fpn.names, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * mask_layers, 1),
            mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
        )
        self.image_size = tuple(int(s) for s in image_size)
        self.transform = GeneralizedRCNNTransform(
            min_size=min(self.image_size), max_size=max(self.image_size), image_mean=[0.0], image_std=[1.0]
        )

    def _images(self, image: Tensor) -> ImageList:
        return ImageList(image, [(int(image.shape[-2]), int(image.shape[-1]))] * image.shape[0])

    def losses(self, image: Tensor, features: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        images, pyramid = self._images(image), self.fpn(features)
        proposals, rpn_losses = self.rpn(images, pyramid, targets)
        _, roi_losses = self.roi_heads(pyramid, proposals, images.image_sizes, targets)
        return {**roi_losses, **rpn_losses}

    def detect(self, image: Tensor, features: list[Tensor]) -> list[dict[str, Tensor]]:
        images, pyramid = self._images(image), self.fpn(features)
        proposals, _ = self.rpn(images, pyramid)
        found, _ = self.roi_heads(pyramid, proposals, images.image_sizes)
        return self.transform.postprocess(found, images.image_sizes, images.image_sizes)


#: detection heads by name (``MultiTaskNet(det_head=...)``)
DETECTION_HEADS: dict[str, type[DetectionHead]] = {"retinanet": RetinaNetHead, "maskrcnn": MaskRCNNHead}


def box_masks(boxes: Tensor, size: Sequence[int], foreground: Tensor | None = None) -> Tensor:
    """Instance masks for ``xyxy`` pixel boxes: the pixels whose centres lie in each box, intersected with
    ``foreground`` (``H x W`` bool, e.g. the lesion mask) where that leaves any pixel.

    (MONAI's ``convert_box_to_mask`` draws boxes in MONAI's axis order, through NumPy on the CPU, and returns a
    background image rather than ``0 x H x W`` for no box; this stays on the boxes' device in torchvision's ``xyxy``.)

    Returns:
        uint8 ``N x H x W`` in {0, 1}.
    """
    height, width = int(size[0]), int(size[1])
    boxes = boxes.float()
    cols = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    rows = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    in_x = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # N x W
    in_y = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # N x H
    masks = in_y[:, :, None] & in_x[:, None, :]
    if foreground is not None and masks.shape[0]:
        cut = masks & foreground.to(device=masks.device, dtype=torch.bool)[None]
        has_pixels = cut.flatten(1).any(dim=1)
        masks = torch.where(has_pixels[:, None, None], cut, masks)
    return masks.to(torch.uint8)


def detection_targets(batch: Mapping[str, Any], with_masks: bool = False) -> list[dict[str, Tensor] | None]:
    """Detection targets of a collated batch (see docs/architecture.md, "Batch").

    Args:
        batch: with ``image`` ``B x 1 x H x W``, ``boxes`` / ``box_labels`` lists, ``has["det"]`` (and, for
            masks, ``mask`` ``B x 1 x H x W`` and ``has["seg"]``).
        with_masks: add ``masks`` (uint8 ``N x H x W``) for Mask R-CNN: each box cut from the sample's lesion mask,
            or the filled box where the sample has no mask (or the mask is empty inside the box).

    Returns:
        B entries: a target dict, or ``None`` where ``has["det"]`` is False (the sample adds no detection loss).
    """
    has = batch["has"]["det"]
    has_mask = batch["has"].get("seg")
    size = batch["image"].shape[-2:]
    targets: list[dict[str, Tensor] | None] = []
    for i, boxes in enumerate(batch["boxes"]):
        if not bool(has[i]):
            targets.append(None)
            continue
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "labels": torch.as_tensor(batch["box_labels"][i], dtype=torch.int64)}
        if with_masks:
            lesion = batch["mask"][i, 0] > 0 if has_mask is not None and bool(has_mask[i]) else None
            target["masks"] = box_masks(boxes, size, lesion)
        targets.append(target)
    return targets

"""The multi-task network: one shared encoder, heads for classification, segmentation, reconstruction, detection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ctmtl.constants import CLASS_NAMES, SHORT_TASKS
from ctmtl.errors import ConfigError
from ctmtl.networks.detection import DETECTION_HEADS
from ctmtl.networks.encoders import ENCODERS
from ctmtl.networks.heads import ClassificationHead, UNetHead, default_decoder_channels

__all__ = ["MultiTaskNet", "SegmentationNet", "TaskOutput"]

CLASS, SEG, RECON, DET = SHORT_TASKS


class SegmentationNet(nn.Module):
    """Encoder + one dense head as a single-output module (TorchScript-ready: ``torch.jit.script`` or ``trace``).

    Forward: ``B x C x H x W`` image -> ``B x out x H x W`` raw outputs of the head.
    """

    def __init__(self, encoder: nn.Module, head: UNetHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.encoder(image))


class MultiTaskNet(nn.Module):
    """One shared encoder and the heads of the tasks it is built for.

    Args:
        encoder: a name registered in :data:`ctmtl.networks.encoders.ENCODERS` (``small``, ``vgg13``,
            ``resnet50``, ``efficientnet-b0``, ...).
        in_channels: image channels (1 for CT).
        num_classes: diagnosis classes of the ``class`` head.
        seg_channels: ``seg`` output channels: 1 (sigmoid, merged lesions) or K + 1 (softmax, K lesion labels).
        tasks: heads to build, short task names (``class``, ``seg``, ``recon``, ``det``).
        det_head: ``retinanet`` or ``maskrcnn`` (required when ``det`` is in ``tasks``).
        image_size: training slice size ``(H, W)`` (Mask R-CNN's ``min_size``/``max_size``: no rescaling).
        det_classes: foreground detection classes (labels 1..det_classes).
        decoder_channels: widths of the segmentation / reconstruction decoder blocks, deepest first
            (default :func:`ctmtl.networks.heads.default_decoder_channels` of the encoder).
        encoder_weights: local ``state_dict`` file for the encoder (never downloaded).
        encoder_kwargs: further arguments of the encoder class, e.g. ``{"norm": "instance"}`` for ``small``.
        class_hidden, class_dropout: the classification MLP (dense 128 -> 64, dropout 0.5).
        class_pool: global pooling before the MLP, ``avg`` or ``max`` (:class:`ClassificationHead`).
        class_levels: encoder maps pooled for the MLP, indices into the encoder's list (default ``(-1,)``, the
            deepest; e.g. ``(2, 3, 4)`` adds the stride 8 and 16 maps).
        det_kwargs: further arguments of the detection head (:class:`~ctmtl.networks.detection.RetinaNetHead`,
            :class:`~ctmtl.networks.detection.MaskRCNNHead`), e.g. ``{"fpn_channels": 32, "levels": (1, 2, 3)}``.

    ``forward(image, tasks=None, targets=None) -> dict`` with, for the heads asked for (all built ones by default):

    - ``class``: logits ``B x num_classes``;
    - ``seg``: logits ``B x seg_channels x H x W``;
    - ``recon``: linear ``B x 1 x H x W`` (the input intensities, [0, 1]);
    - ``det``: training: dict of scalar losses (``targets``: B dicts ``boxes`` float ``N x 4`` xyxy pixels,
      ``labels`` int64 ``N`` in 1..det_classes, + ``masks`` uint8 ``N x H x W`` for Mask R-CNN; ``None`` for a
      sample without detection labels); evaluation: B dicts ``boxes``, ``labels``, ``scores`` (+ ``masks``
      float ``N x 1 x H x W``).

    ``image`` is float ``B x in_channels x H x W`` in [0, 1], H and W divisible by 32. The encoder runs once.
    """

    def __init__(
        self,
        encoder: str = "small",
        in_channels: int = 1,
        num_classes: int = len(CLASS_NAMES),
        seg_channels: int = 1,
        tasks: Sequence[str] = SHORT_TASKS,
        det_head: str | None = "retinanet",
        image_size: Sequence[int] = (256, 256),
        det_classes: int = 1,
        decoder_channels: Sequence[int] | None = None,
        encoder_weights: str | Path | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
        class_hidden: Sequence[int] = (128, 64),
        class_dropout: float = 0.5,
        class_pool: str = "avg",
        class_levels: Sequence[int] = (-1,),
        det_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        tasks = tuple(dict.fromkeys(tasks))
        unknown = [t for t in tasks if t not in SHORT_TASKS]
        if unknown or not tasks:
            raise ConfigError(f"tasks must be a non-empty subset of {SHORT_TASKS}, got {tasks}")
        if DET in tasks and det_head not in DETECTION_HEADS:
            raise ConfigError(f"det_head must be one of {sorted(DETECTION_HEADS)} for task 'det', got {det_head!r}")
        self.tasks = tasks
        self.encoder_name = encoder
        self.in_channels = in_channels
        self.encoder = ENCODERS.build(encoder, in_channels, weights=encoder_weights, **dict(encoder_kwargs or {}))
        stage_channels = ENCODERS[encoder].out_channels
        self.size_divisible = 2 ** len(stage_channels)
        decoder_channels = tuple(decoder_channels or default_decoder_channels(stage_channels))
        dense_channels = (in_channels, *stage_channels)

        self.heads = nn.ModuleDict()
        if CLASS in tasks:
            levels = tuple(int(level) for level in class_levels)
            if not all(-len(stage_channels) <= level < len(stage_channels) for level in levels):
                raise ConfigError(f"class_levels {levels}: the {encoder} encoder has {len(stage_channels)} maps "
                                  f"(indices 0..{len(stage_channels) - 1}, or negative from the deepest)")
            self.heads[CLASS] = ClassificationHead(
                [stage_channels[level] for level in levels], num_classes, class_hidden, class_dropout, pool=class_pool,
                levels=levels,
            )
        if SEG in tasks:
            self.heads[SEG] = UNetHead(dense_channels, decoder_channels, seg_channels)
        if RECON in tasks:
            self.heads[RECON] = UNetHead(dense_channels, decoder_channels, 1)
        if DET in tasks:
            try:
                self.heads[DET] = DETECTION_HEADS[det_head](
                    stage_channels, num_classes=det_classes, image_size=tuple(image_size), **dict(det_kwargs or {})
                )
            except (TypeError, ValueError) as err:  # a bad or unknown det_kwargs value: one line, not a traceback
                raise ConfigError(f"det_kwargs {dict(det_kwargs or {})} for the {det_head} head: {err}") from err

    def forward(
        self,
        image: Tensor,
        tasks: Sequence[str] | None = None,
        targets: Sequence[Mapping[str, Tensor] | None] | None = None,
    ) -> dict[str, Any]:
        """Run the encoder once and the heads of ``tasks`` (default: every head built); see the class docstring."""
        tasks = self.tasks if tasks is None else (tasks,) if isinstance(tasks, str) else tuple(tasks)
        missing = [t for t in tasks if t not in self.heads]
        if missing:
            raise ValueError(f"this network has heads {self.tasks}; asked for {tuple(missing)}.")
        if not torch.jit.is_tracing():  # shapes are tensors while tracing; the checks are for eager calls
            self._check_image(image)
        features = self.encoder(image)
        out: dict[str, Any] = {}
        for task in tasks:
            if task == DET:
                out[task] = self.heads[task](image, features, targets)
            else:
                out[task] = self.heads[task](features)
        return out

    def _check_image(self, image: Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must be B x {self.in_channels} x H x W, got {tuple(image.shape)}.")
        if image.shape[-2] % self.size_divisible or image.shape[-1] % self.size_divisible:
            raise ValueError(
                f"image H and W must be divisible by {self.size_divisible}, got {tuple(image.shape[-2:])}."
            )

    def segmentation_module(self) -> SegmentationNet:
        """The segmentation path alone (encoder + ``seg`` head, sharing this network's parameters), for
        TorchScript export: ``torch.jit.script(net.segmentation_module())``."""
        return self.dense_module(SEG)

    def dense_module(self, task: str) -> SegmentationNet:
        """Encoder + the ``seg`` or ``recon`` head as one single-output module (shares parameters)."""
        built = [t for t in (SEG, RECON) if t in self.heads]
        if task not in built:
            raise ValueError(f"dense_module takes a built dense head, one of {built}; got {task!r}.")
        return SegmentationNet(self.encoder, self.heads[task])


class TaskOutput(nn.Module):
    """One head of a :class:`MultiTaskNet` as a single-output module (e.g. for a MONAI Label bundle or
    ``torch.jit.trace``): ``forward(image) -> net(image, tasks=(task,))[task]``.

    For ``class``, ``seg`` and ``recon`` the output is a tensor; for ``det`` (evaluation mode) the list of dicts.
    """

    def __init__(self, net: MultiTaskNet, task: str) -> None:
        super().__init__()
        if task not in net.heads:
            raise ValueError(f"the network has heads {net.tasks}; got {task!r}.")
        self.net = net
        self.task = task

    def forward(self, image: Tensor) -> Any:
        return self.net(image, tasks=(self.task,))[self.task]

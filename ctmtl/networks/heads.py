"""Dense heads (UNet decoders for segmentation and reconstruction) and the classification MLP.

Both take the list of feature maps of a registered encoder (see :mod:`ctmtl.networks.encoders`), so they are built
from the encoder's declared channels alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import FullyConnectedNet
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from ctmtl.errors import ConfigError

__all__ = ["ClassificationHead", "UNetHead", "default_decoder_channels"]


def default_decoder_channels(encoder_channels: Sequence[int]) -> tuple[int, ...]:
    """Decoder widths for an encoder with per-stage ``encoder_channels`` (deepest last).

    MONAI FlexibleUNet's default ``(256, 128, 64, 32, 16)``, narrowed to the encoder's own stage widths when those
    are smaller (a tiny encoder gets a tiny decoder): block ``i`` (deepest first) has
    ``min(default[i], encoder_channels[-2 - i])`` channels, the last (full-resolution) block half of the one before.
    """
    default = (256, 128, 64, 32, 16)
    n = len(encoder_channels)
    widths = [min(default[i], encoder_channels[n - 2 - i]) for i in range(n - 1)]
    return (*widths, max(widths[-1] // 2, 8))


class UNetHead(nn.Module):
    """MONAI ``UNetDecoder`` + ``SegmentationHead`` on the shared encoder's feature maps (FlexibleUNet's decoder).

    Args:
        encoder_channels: channels of the image and of each encoder stage, ``(in_channels, C_1, ..., C_n)``.
        decoder_channels: channels of each decoder block, deepest first (``n`` values).
        out_channels: output channels (segmentation: 1 for merged lesions, K+1 for K lesion classes;
            reconstruction: 1).
        norm, act, upsample, interp_mode: as in ``monai.networks.nets.FlexibleUNet``.

    Forward: list of ``n`` maps at strides 2..2^n -> ``B x out_channels x H x W`` raw outputs (logits for
    segmentation, linear intensities for reconstruction; no activation).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        out_channels: int,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        act: str | tuple = ("relu", {"inplace": True}),
        upsample: str = "nontrainable",
        interp_mode: str = "nearest",
    ) -> None:
        super().__init__()
        n = len(encoder_channels) - 1
        if len(decoder_channels) != n:
            raise ValueError(
                f"decoder_channels needs {n} values (one per encoder stage), got {tuple(decoder_channels)}."
            )
        self.skip_connect = n - 1
        self.decoder = UNetDecoder(
            spatial_dims=2,
            encoder_channels=tuple(encoder_channels),
            decoder_channels=tuple(decoder_channels),
            act=act,
            norm=norm,
            dropout=0.0,
            bias=False,
            upsample=upsample,
            pre_conv="default",
            interp_mode=interp_mode,
            align_corners=None,
            is_pad=True,
        )
        self.head = SegmentationHead(2, decoder_channels[-1], out_channels, kernel_size=3, act=None)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(features, self.skip_connect))


class ClassificationHead(nn.Module):
    """Global pooling of encoder maps, then the MLP of Amyar et al. 2020 (dense 128 -> 64, ReLU, dropout 0.5) and a
    linear layer to ``num_classes`` logits (MONAI ``FullyConnectedNet``).

    ``pool="avg"`` (global average, the default) or ``"max"`` (global max: a small finding, such as a ground-glass
    patch, moves the maximum of a feature map where it barely moves the mean; with an instance-normalised encoder,
    whose maps have the same mean in every image, the average keeps little but the shape of each map's distribution).

    ``levels`` picks the encoder maps that are pooled (default ``(-1,)``: the deepest, as in the papers); with several,
    the pooled vectors are concatenated, so the MLP also sees shallower, finer maps (e.g. ``(2, 3, 4)``: strides 8,
    16 and 32), where a finding of a few pixels is still resolved.

    Args:
        in_channels: channels of each pooled map, one per level (an int for one level).
        num_classes: output logits.
        hidden, dropout, act: the MLP.
        pool: ``avg`` or ``max``.
        levels: indices into the encoder's list of maps.

    Forward: list of encoder maps (``B x C_i x h_i x w_i``) -> ``B x num_classes`` logits.
    """

    pools = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}

    def __init__(
        self,
        in_channels: int | Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.5,
        act: str | tuple = "relu",
        pool: str = "avg",
        levels: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        if pool not in self.pools:
            raise ConfigError(f"classification pool must be one of {sorted(self.pools)}, got {pool!r}")
        channels = (in_channels,) if isinstance(in_channels, int) else tuple(in_channels)
        self.levels = tuple(int(level) for level in levels)
        if not self.levels or len(set(self.levels)) != len(self.levels) or len(channels) != len(self.levels):
            raise ConfigError(
                f"classification levels must be distinct encoder map indices, one per in_channels value; got levels "
                f"{tuple(levels)} for in_channels {channels}"
            )
        self.pool = self.pools[pool](1)
        self.mlp = FullyConnectedNet(sum(channels), num_classes, hidden, dropout=dropout, act=act, adn_ordering="AD")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = [self.pool(features[level]).flatten(1) for level in self.levels]
        return self.mlp(torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0])

"""Encoders behind one registry, in the style of MONAI's ``FLEXUNET_BACKBONE``.

Every registered encoder is a ``monai.networks.blocks.BaseEncoder``: it declares, per name, how many feature maps it
returns and how many channels each has, so decoders, the classifier and the feature pyramid of the detectors are
built from that declaration. All of them take a ``B x C x H x W`` image and return a list of 5 feature maps at
strides 2, 4, 8, 16 and 32 (so H and W must be divisible by 32).

Registered names: ``small`` (the fast CPU default), ``vgg11``/``vgg13``/``vgg16``/``vgg19`` (+ ``-bn``), and every
MONAI FlexibleUNet backbone (``resnet10`` .. ``resnet200``, ``efficientnet-b0`` .. ``efficientnet-l2``).
Weights are never downloaded; :meth:`EncoderRegistry.build` loads a local state-dict file instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import EfficientNetEncoder
from monai.networks.nets.basic_unet import TwoConv
from monai.networks.nets.flexible_unet import FlexUNetEncoderRegister
from monai.networks.nets.resnet import ResNetEncoder
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers

from ctmtl.errors import ConfigError, ModelError

__all__ = [
    "ENCODERS",
    "EfficientNetFeatures",
    "EncoderEntry",
    "EncoderRegistry",
    "SmallEncoder",
    "VGGEncoder",
    "load_encoder_weights",
]


class SmallEncoder(nn.Module, BaseEncoder):
    """A tiny VGG-style encoder for CPU work and tests.

    Five stages, each MONAI ``TwoConv`` (conv-norm-act x 2) followed by a 2x2 max pooling, widths 8 -> 128 as in
    the encoder of Ferreira et al. 2024. Written here because MONAI has no encoder this small that keeps to the
    ``BaseEncoder`` interface (``BasicUNet`` keeps its encoder inside the network).

    Args:
        model_name: a name of :attr:`backbone_names` (selects the widths).
        spatial_dims: 2 only.
        in_channels: image channels (1 for CT).
        pretrained: must be False (there are no published weights).
        act: activation of the convolutions (MONAI ``Act`` spec).
        norm: normalisation of the convolutions (MONAI ``Norm`` spec).
    """

    backbone_names = ["small"]
    widths = {"small": (8, 16, 32, 64, 128)}

    def __init__(
        self,
        model_name: str = "small",
        spatial_dims: int = 2,
        in_channels: int = 1,
        pretrained: bool = False,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"SmallEncoder is 2D only, got spatial_dims={spatial_dims}.")
        if pretrained:
            raise ValueError("SmallEncoder has no pretrained weights; pass a local weights file instead.")
        stages = []
        prev = in_channels
        for width in self.widths[model_name]:
            stages.append(nn.Sequential(TwoConv(2, prev, width, act=act, norm=norm, bias=False), nn.MaxPool2d(2)))
            prev = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``B x C x H x W`` -> 5 maps ``B x C_i x H/2^(i+1) x W/2^(i+1)``."""
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": n, "spatial_dims": 2, "in_channels": 1, "pretrained": False} for n in cls.backbone_names]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [cls.widths[n] for n in cls.backbone_names]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(cls.backbone_names)


class VGGEncoder(nn.Module, BaseEncoder):
    """torchvision VGG convolutional layers as a 5-stage encoder (the shared encoder of Amyar et al. 2020 and
    Hryniewska-Guzik et al. 2023 is VGG-13).

    The stages end at VGG's five max-pooling layers: channels (64, 128, 256, 512, 512) at strides 2 .. 32.
    Built from torchvision's ``make_layers`` (not ``vgg13()``, whose 120M-parameter classifier would only be
    thrown away); the first convolution takes ``in_channels``; initialised as torchvision initialises VGG.

    Args:
        model_name: ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg19``, with ``-bn`` for batch normalisation.
        spatial_dims: 2 only.
        in_channels: image channels (1 for CT).
        pretrained: must be False (no downloads); pass a local weights file to the registry instead.
    """

    backbone_names = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "-bn")]
    _configs = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

    def __init__(
        self, model_name: str = "vgg13", spatial_dims: int = 2, in_channels: int = 1, pretrained: bool = False
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"VGGEncoder is 2D only, got spatial_dims={spatial_dims}.")
        if pretrained:
            raise ValueError("VGGEncoder never downloads weights; pass a local weights file instead.")
        arch, batch_norm = model_name.removesuffix("-bn"), model_name.endswith("-bn")
        layers = list(vgg_make_layers(vgg_cfgs[self._configs[arch]], batch_norm=batch_norm))
        first = layers[0]
        layers[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        stages, current = [], []
        for layer in layers:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        self.stages = nn.ModuleList(stages)
        for m in self.modules():  # torchvision.models.VGG's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``B x C x H x W`` -> 5 maps ``B x C_i x H/2^(i+1) x W/2^(i+1)``, C_i = (64, 128, 256, 512, 512)."""
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": n, "spatial_dims": 2, "in_channels": 1, "pretrained": False} for n in cls.backbone_names]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 128, 256, 512, 512)] * len(cls.backbone_names)

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(cls.backbone_names)


class EfficientNetFeatures(EfficientNetEncoder):
    """MONAI's ``EfficientNetEncoder`` without the head convolution and classifier that its ``forward`` never uses
    (1.7M idle parameters for b0, which the optimiser would carry and DDP would report as unused)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conv_head = nn.Identity()
        self._bn1 = nn.Identity()
        self._fc = nn.Identity()


class EncoderEntry(NamedTuple):
    """One registered encoder name: the class that builds it, its per-stage channels and its init parameters."""

    name: str
    type: type
    out_channels: tuple[int, ...]
    parameters: dict[str, Any]

    @property
    def strides(self) -> tuple[int, ...]:
        """Downsampling factor of each returned feature map (2, 4, ..., 2^n)."""
        return tuple(2 ** (i + 1) for i in range(len(self.out_channels)))


class EncoderRegistry(FlexUNetEncoderRegister, Mapping[str, EncoderEntry]):
    """Name -> :class:`EncoderEntry`, filled with MONAI's ``register_class`` (a ``BaseEncoder`` class, or its dotted
    path, registers every name it declares).

    Example::

        ENCODERS["vgg13"].out_channels  # (64, 128, 256, 512, 512)
        encoder = ENCODERS.build("resnet50", in_channels=1)
        features = encoder(torch.zeros(2, 1, 64, 64))  # 5 maps, strides 2..32
    """

    def __getitem__(self, name: str) -> EncoderEntry:
        if name not in self.register_dict:
            raise ConfigError(f"unknown encoder {name!r}; registered encoders: {', '.join(self.register_dict)}")
        entry = self.register_dict[name]
        return EncoderEntry(name, entry["type"], tuple(entry["feature_channel"]), dict(entry["parameter"]))

    def __contains__(self, name: object) -> bool:
        return name in self.register_dict

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self.register_dict else default

    def __iter__(self) -> Iterator[str]:
        return iter(self.register_dict)

    def __len__(self) -> int:
        return len(self.register_dict)

    def build(self, name: str, in_channels: int = 1, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
        """Build encoder ``name`` for 2D images with ``in_channels`` channels, never downloading weights.

        Args:
            name: a registered encoder name.
            in_channels: image channels.
            weights: optional local file holding the encoder's ``state_dict`` (see :func:`load_encoder_weights`).
            kwargs: further constructor arguments of the encoder class (e.g. ``norm="instance"`` for ``small``).
        """
        entry = self[name]
        # a copy: MONAI's FlexibleUNet updates the registered dict in place
        parameters = {**entry.parameters, **kwargs, "spatial_dims": 2, "in_channels": in_channels, "pretrained": False}
        encoder = entry.type(**parameters)
        if weights is not None:
            load_encoder_weights(encoder, weights, name=name)
        return encoder


def load_encoder_weights(encoder: nn.Module, path: str | Path, name: str = "encoder") -> nn.Module:
    """Load a local ``state_dict`` file (``torch.save(encoder.state_dict(), path)``, optionally wrapped as
    ``{"state_dict": ...}``) into ``encoder``, all keys and shapes matching.

    Raises:
        ModelError: the file is missing or unreadable, or its keys / shapes do not fit the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"encoder weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt / non-torch file
        raise ModelError(f"encoder weights {path}: cannot be read ({err})") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelError(f"encoder weights {path}: expected a state_dict, got {type(state).__name__}")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} in file, {tuple(expected[k].shape)} in encoder"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelError(f"encoder weights {path} do not fit encoder {name!r}: " + "; ".join(problems))
    encoder.load_state_dict(state)
    return encoder


#: every encoder ctmtl can build, by name
ENCODERS = EncoderRegistry()
for _encoder in (SmallEncoder, VGGEncoder, ResNetEncoder, EfficientNetFeatures):
    ENCODERS.register_class(_encoder)

"""Intensity: CT values (Hounsfield units, or 8-bit display values) to [0, 1].

The papers window CT to the lung window (width 1500, level -600: [-1350, 150] HU) and scale it to [0, 1].
:class:`HUWindow` is MONAI's ``ScaleIntensityRange`` with the window as its input range and clipping on.
:class:`CTIntensity` adds the decision that MedSeg needs: its README does not say whether the volumes hold HU
or 0..255 display values, so ``input_range="auto"`` looks at the volume (a chest CT in HU always has air below
0; 8-bit data never does) and windows HU or scales 0..255 accordingly, writing its choice into ``meta``.

8-bit slices (UCSD-AI4H, MedSeg-derived JPGs) must not be windowed; their chain scales 0..255 -> [0, 1] with
MONAI's ``ScaleIntensityRanged`` directly. Histogram equalisation is MONAI's ``HistogramNormalized`` (in the
chains, after slicing, so each slice is equalised on its own as in the papers).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange, Transform
from monai.utils import look_up_option

__all__ = [
    "LUNG_WINDOW",
    "HUWindow",
    "HUWindowd",
    "HUWindowD",
    "HUWindowDict",
    "CTIntensity",
    "CTIntensityd",
    "CTIntensityD",
    "CTIntensityDict",
]

#: lung window, width 1500 HU at level -600
LUNG_WINDOW: tuple[float, float] = (-1350.0, 150.0)

_INPUT_RANGES = ("hu", "8bit", "auto")


def _window(window: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise ValueError(f"window {list(window)}: the upper bound must be above the lower one")
    return lo, hi


class HUWindow(ScaleIntensityRange):
    """Clip to an HU window and map it linearly to [0, 1] (MONAI ``ScaleIntensityRange``, ``clip=True``).

    Args:
        window: ``(lower, upper)`` HU; default the lung window ``(-1350, 150)`` (W1500 / L-600).

    Input any shape (HU, float); output float32, same shape, in [0, 1]: ``lower`` -> 0, ``upper`` -> 1.
    """

    def __init__(self, window: Sequence[float] = LUNG_WINDOW) -> None:
        lo, hi = _window(window)
        super().__init__(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        self.window = (lo, hi)

    @staticmethod
    def from_level_width(level: float, width: float) -> HUWindow:
        """The window ``[level - width / 2, level + width / 2]``."""
        return HUWindow((level - width / 2, level + width / 2))


class HUWindowd(MapTransform):
    """Dictionary wrapper of :class:`HUWindow`."""

    backend = HUWindow.backend

    def __init__(self, keys: KeysCollection = ("image",), window: Sequence[float] = LUNG_WINDOW, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = HUWindow(window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d


class CTIntensity(Transform):
    """CT to [0, 1]: window HU, or scale 8-bit display values, or decide from the values (``"auto"``).

    Args:
        window: HU window ``(lower, upper)`` used for HU input (default lung window).
        input_range: ``"hu"`` (window), ``"8bit"`` (0..255 -> [0, 1], clipped), or ``"auto"``: HU when the image
            has any value below 0 (air, about -1000 HU, is in every chest CT), otherwise 8-bit when all values
            are within 0..255, otherwise HU (stored values without rescale cannot be told from HU; their
            minimum is about -1024 after the reader applies the rescale).

    Input float, any shape; output float32 in [0, 1]. :meth:`range_of` gives the decision for an image.
    """

    backend = HUWindow.backend

    def __init__(self, window: Sequence[float] = LUNG_WINDOW, input_range: str = "hu") -> None:
        self.input_range = look_up_option(input_range, _INPUT_RANGES)
        self.window = HUWindow(window)
        self.scale_8bit = ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)

    def range_of(self, img: torch.Tensor) -> str:
        """``"hu"`` or ``"8bit"``: how this image is read (the fixed choice unless ``input_range="auto"``)."""
        if self.input_range != "auto":
            return self.input_range
        lo, hi = float(img.min()), float(img.max())
        return "8bit" if lo >= 0.0 and hi <= 255.0 else "hu"

    def __call__(self, img: torch.Tensor, input_range: str | None = None) -> torch.Tensor:
        kind = input_range or self.range_of(img)
        return self.window(img) if kind == "hu" else self.scale_8bit(img)


class CTIntensityd(MapTransform):
    """Dictionary wrapper of :class:`CTIntensity`; writes the choice to ``meta["intensity"]`` (``hu``/``8bit``).

    Args:
        keys: ``["image"]``.
        window, input_range: see :class:`CTIntensity`.
        meta_key: the sample's meta dict.
        allow_missing_keys: skip missing keys.
    """

    backend = CTIntensity.backend

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        window: Sequence[float] = LUNG_WINDOW,
        input_range: str = "hu",
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = CTIntensity(window, input_range)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            kind = self.converter.range_of(d[key])
            d[key] = self.converter(d[key], input_range=kind)
            if isinstance(d.get(self.meta_key), dict):
                d[self.meta_key]["intensity"] = kind
        return d


HUWindowD = HUWindowDict = HUWindowd
CTIntensityD = CTIntensityDict = CTIntensityd

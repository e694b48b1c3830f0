"""Intensity: the lung window maps HU linearly to [0, 1]; 8-bit is scaled, not windowed; equalisation
(MONAI HistogramNormalized, as the chains use it) flattens the histogram within [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import HistogramNormalized

from ctmtl.transforms import LUNG_WINDOW, CTIntensity, CTIntensityd, HUWindow, HUWindowd


def test_lung_window_is_w1500_l600():
    assert LUNG_WINDOW == (-1350.0, 150.0)
    w = HUWindow.from_level_width(-600, 1500)
    assert w.window == LUNG_WINDOW


def test_window_maps_linearly_and_clips():
    hu = torch.tensor([[-3000.0, -1350.0, -600.0, 150.0, 3000.0]])
    out = HUWindow()(hu)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    d = HUWindowd(keys="image", window=(-1000, 0))({"image": torch.tensor([[-1000.0, -500.0, 0.0]])})
    np.testing.assert_allclose(d["image"].numpy(), [[0.0, 0.5, 1.0]], atol=1e-6)


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="upper bound"):
        HUWindow((100, -100))


@pytest.mark.parametrize(
    ("values", "expected"), [([-1000.0, 40.0, 300.0], "hu"), ([0.0, 128.0, 255.0], "8bit"), ([0.0, 900.0, 2000.0], "hu")]
)
def test_auto_intensity_tells_hu_from_8bit(values, expected):
    img = torch.tensor([values])
    conv = CTIntensity(input_range="auto")
    assert conv.range_of(img) == expected
    out = conv(img)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    if expected == "8bit":
        np.testing.assert_allclose(out.numpy(), [[0.0, 128 / 255, 1.0]], atol=1e-6)
    d = CTIntensityd(keys="image", input_range="auto")({"image": img, "meta": {}})
    assert d["meta"]["intensity"] == expected


def test_histogram_equalisation_spreads_values_over_0_1():
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.beta(8, 2, size=(1, 64, 64)).astype(np.float32) * 0.3)  # squeezed into [0, 0.3]
    out = HistogramNormalized(keys="image", num_bins=256, min=0, max=1)({"image": img})["image"]
    assert out.shape == img.shape and out.dtype == torch.float32
    assert float(out.min()) == pytest.approx(0, abs=1e-6) and float(out.max()) == pytest.approx(1, abs=1e-6)
    # the cumulative histogram of the output is close to uniform
    q = np.quantile(out.numpy(), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(q, [0.25, 0.5, 0.75], atol=0.05)
    # monotone: the order of pixel values is kept
    flat_in, flat_out = img.flatten().numpy(), np.asarray(out).flatten()
    order = np.argsort(flat_in)
    assert np.all(np.diff(flat_out[order]) >= -1e-6)

"""UNet decoders and the classification MLP."""

from __future__ import annotations

import pytest
import torch

from ctmtl.networks import ClassificationHead, UNetHead, default_decoder_channels


def _features(batch=2, size=64, channels=(8, 16, 32, 64, 128)):
    return [torch.rand(batch, c, size >> (i + 1), size >> (i + 1)) for i, c in enumerate(channels)]


def test_default_decoder_channels():
    assert default_decoder_channels((64, 128, 256, 512, 512)) == (256, 128, 64, 32, 16)  # FlexibleUNet's default
    assert default_decoder_channels((64, 256, 512, 1024, 2048)) == (256, 128, 64, 32, 16)
    assert default_decoder_channels((8, 16, 32, 64, 128)) == (64, 32, 16, 8, 8)


@pytest.mark.parametrize("out_channels", [1, 4])
def test_unet_head_full_resolution_output(out_channels):
    head = UNetHead((1, 8, 16, 32, 64, 128), (64, 32, 16, 8, 8), out_channels)
    assert head(_features()).shape == (2, out_channels, 64, 64)


def test_unet_head_needs_one_decoder_block_per_stage():
    with pytest.raises(ValueError, match="decoder_channels needs 5 values"):
        UNetHead((1, 8, 16, 32, 64, 128), (32, 16, 8, 8), 1)


def test_classification_head_is_the_papers_mlp():
    head = ClassificationHead(128, 3)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 128), (128, 64), (64, 3)]
    dropouts = [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5, 0.5]
    assert head(_features()).shape == (2, 3)
    head.eval()
    features = _features()
    assert torch.equal(head(features), head(features))  # no dropout in eval


def test_classification_head_max_pool_sees_a_small_finding():
    """``pool="max"``: a bright 2x2 patch in one 8x8 map moves the pooled feature to the patch's value, where the
    average moves by 4/64 of it; an unknown pool is a config error."""
    from ctmtl.errors import ConfigError

    maps = torch.zeros(2, 4, 8, 8)
    maps[1, 0, 3:5, 3:5] = 1.0
    avg = ClassificationHead(4, 3, pool="avg").pool(maps).flatten(1)
    top = ClassificationHead(4, 3, pool="max").pool(maps).flatten(1)
    assert torch.allclose(avg[1] - avg[0], torch.tensor([4 / 64, 0.0, 0.0, 0.0]))
    assert torch.equal(top[1] - top[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert ClassificationHead(4, 3, pool="max")([maps]).shape == (2, 3)
    with pytest.raises(ConfigError, match="classification pool must be one of \\['avg', 'max'\\], got 'mean'"):
        ClassificationHead(4, 3, pool="mean")

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


def test_classification_head_pools_several_levels():
    """``levels``: each chosen map is pooled and the vectors are concatenated in order before the MLP; the MLP's
    input width is their channel sum. Levels that do not match in_channels, or repeat, are config errors; the
    network checks that they exist in its encoder."""
    from ctmtl.errors import ConfigError
    from ctmtl.networks import MultiTaskNet

    features = _features()
    head = ClassificationHead((32, 128), 3, pool="max", levels=(2, -1), dropout=0.0)
    assert head.mlp.hidden_0[0].in_features == 160
    captured = {}
    head.mlp.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    assert head(features).shape == (2, 3)
    expected = torch.cat([features[2].amax((2, 3)), features[4].amax((2, 3))], 1)
    assert torch.equal(captured["x"], expected)
    with pytest.raises(ConfigError, match="one per in_channels"):
        ClassificationHead((32, 128), 3, levels=(2,))
    with pytest.raises(ConfigError, match="distinct"):
        ClassificationHead((32, 32), 3, levels=(2, 2))
    with pytest.raises(ConfigError, match="the small encoder has 5 maps"):
        MultiTaskNet("small", tasks=("class",), det_head=None, class_levels=(3, 5))
    net = MultiTaskNet("small", tasks=("class",), det_head=None, class_levels=(2, 3, 4))
    assert net(torch.rand(2, 1, 64, 64))["class"].shape == (2, 3)

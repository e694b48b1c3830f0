"""Encoder registry: declared channels, feature shapes, no downloads, local weights files."""

from __future__ import annotations

import pytest
import torch

from ctmtl.errors import ConfigError, ModelError
from ctmtl.networks import ENCODERS, SmallEncoder, VGGEncoder, load_encoder_weights
from ctmtl.networks.encoders import EncoderEntry

# every family of the registry; the biggest members (resnet101+, efficientnet-b3+) only differ in depth / width
CPU_ENCODERS = ["small", "vgg11", "vgg13", "vgg13-bn", "resnet10", "resnet18", "resnet50", "efficientnet-b0"]


def test_registry_holds_the_papers_and_monai_backbones():
    for name in ("small", "vgg13", "resnet50", "resnet18", "efficientnet-b0", "efficientnet-b7", "resnet200"):
        assert name in ENCODERS
    assert ENCODERS["vgg13"].out_channels == (64, 128, 256, 512, 512)
    assert ENCODERS["resnet50"].out_channels == (64, 256, 512, 1024, 2048)
    assert ENCODERS["efficientnet-b0"].out_channels == (16, 24, 40, 112, 320)
    assert ENCODERS["small"].out_channels == (8, 16, 32, 64, 128)
    assert ENCODERS["small"].strides == (2, 4, 8, 16, 32)
    assert isinstance(ENCODERS["small"], EncoderEntry) and ENCODERS["small"].type is SmallEncoder
    assert "nope" not in ENCODERS and ENCODERS.get("nope") is None


def test_unknown_encoder_names_the_choices():
    with pytest.raises(ConfigError, match="unknown encoder 'vgg14'.*vgg13"):
        ENCODERS.build("vgg14")


@pytest.mark.parametrize("name", CPU_ENCODERS)
def test_features_match_declared_channels_and_strides(name):
    encoder = ENCODERS.build(name, in_channels=1).eval()
    with torch.no_grad():
        features = encoder(torch.rand(2, 1, 64, 64))
    channels = ENCODERS[name].out_channels
    strides = ENCODERS[name].strides
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 64 // s) for c, s in zip(channels, strides)]


def test_registry_entries_are_not_mutated_by_builds():
    before = ENCODERS["resnet18"].parameters
    ENCODERS.build("resnet18", in_channels=2)
    assert ENCODERS["resnet18"].parameters == before
    assert before["pretrained"] is True  # MONAI's registered default; build() always overrides it with False


def test_vgg13_is_the_torchvision_layout_on_one_channel():
    encoder = ENCODERS.build("vgg13")
    assert isinstance(encoder, VGGEncoder) and len(encoder.stages) == 5
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 10 and convs[0].in_channels == 1  # VGG-13: 10 conv layers (+3 dense, not used)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]


def test_no_pretrained_download():
    with pytest.raises(ValueError, match="local weights file"):
        VGGEncoder("vgg13", pretrained=True)
    with pytest.raises(ValueError, match="local weights file"):
        SmallEncoder("small", pretrained=True)


def test_local_weights_file_round_trip(tmp_path):
    source = ENCODERS.build("small")
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    loaded = ENCODERS.build("small", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": source.state_dict()}, wrapped)
    load_encoder_weights(ENCODERS.build("small"), wrapped)


def test_local_weights_file_with_wrong_keys_or_shapes(tmp_path):
    state = ENCODERS.build("small").state_dict()
    renamed = {f"backbone.{k}": v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    expected = r"renamed.pt do not fit encoder 'small': missing keys: stages\.0.*unexpected keys: backbone\."
    with pytest.raises(ModelError, match=expected):
        ENCODERS.build("small", weights=tmp_path / "renamed.pt")
    torch.save(ENCODERS.build("small", in_channels=3).state_dict(), tmp_path / "rgb.pt")
    expected = r"shape mismatch: stages\.0\.0\.conv_0\.conv\.weight \(8, 3, 3, 3\) in file, \(8, 1, 3, 3\)"
    with pytest.raises(ModelError, match=expected):
        ENCODERS.build("small", weights=tmp_path / "rgb.pt")
    with pytest.raises(ModelError, match="file not found"):
        ENCODERS.build("small", weights=tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read"):
        ENCODERS.build("small", weights=tmp_path / "junk.pt")

"""MultiTaskNet: every encoder x head, heads on demand, TorchScript export of the segmentation path."""

from __future__ import annotations

import pytest
import torch

from ctmtl.constants import SHORT_TASKS
from ctmtl.errors import ConfigError
from ctmtl.networks import ENCODERS, MultiTaskNet, SegmentationNet, TaskOutput, detection_targets

ENCODERS_ON_CPU = ["small", "vgg13", "resnet18", "resnet50", "efficientnet-b0"]
SMALL_DET = {"fpn_channels": 16}
SMALL_MASKRCNN = dict(
    fpn_channels=16, box_batch_size_per_image=32, rpn_pre_nms_top_n=(200, 200), rpn_post_nms_top_n=(100, 100)
)


def _net(encoder="small", det_head="retinanet", **kwargs):
    det_kwargs = SMALL_MASKRCNN if det_head == "maskrcnn" else SMALL_DET
    return MultiTaskNet(encoder, image_size=(64, 64), det_head=det_head, det_kwargs=det_kwargs, **kwargs)


def _check_outputs(out, batch_size, size=64, seg_channels=1, num_classes=3, maskrcnn=False, training=True):
    assert out["class"].shape == (batch_size, num_classes)
    assert out["seg"].shape == (batch_size, seg_channels, size, size)
    assert out["recon"].shape == (batch_size, 1, size, size)
    if training:
        assert isinstance(out["det"], dict) and all(v.ndim == 0 for v in out["det"].values())
    else:
        assert len(out["det"]) == batch_size
        assert all({"boxes", "labels", "scores"} <= set(d) for d in out["det"])
        assert all(("masks" in d) == maskrcnn for d in out["det"])


@pytest.mark.parametrize("det_head", ["retinanet", "maskrcnn"])
@pytest.mark.parametrize("encoder", ENCODERS_ON_CPU)
def test_every_encoder_with_every_head(encoder, det_head, batch):
    net = _net(encoder, det_head)
    image = batch["image"][:2]
    two = {**batch, "boxes": batch["boxes"][:2], "has": {k: v[:2] for k, v in batch["has"].items()}}
    targets = detection_targets(two, with_masks=True)
    out = net(image, targets=targets)
    assert list(out) == list(SHORT_TASKS)
    _check_outputs(out, 2, maskrcnn=det_head == "maskrcnn")
    total = sum(v.float().mean() for k, v in out.items() if k != "det") + sum(out["det"].values())
    total.backward()
    assert all(p.grad is not None for p in net.encoder.parameters())
    net.eval()
    with torch.no_grad():
        _check_outputs(net(image), 2, maskrcnn=det_head == "maskrcnn", training=False)


def test_multiclass_segmentation_and_other_sizes():
    net = MultiTaskNet(
        "small", num_classes=2, seg_channels=4, tasks=("class", "seg"), decoder_channels=(32, 16, 8, 8, 8)
    )
    out = net(torch.rand(3, 1, 32, 96))
    assert out["class"].shape == (3, 2) and out["seg"].shape == (3, 4, 32, 96)


def test_only_the_heads_asked_for_run(monkeypatch):
    net = _net()
    calls = []
    for task, head in net.heads.items():
        monkeypatch.setattr(head, "forward", lambda *a, _t=task, **k: calls.append(_t) or torch.zeros(1))
    out = net(torch.rand(2, 1, 64, 64), tasks=("seg", "class"))
    assert list(out) == ["seg", "class"] and calls == ["seg", "class"]
    assert list(net(torch.rand(2, 1, 64, 64), tasks="recon")) == ["recon"]


def test_heads_built_on_demand_and_clear_errors():
    net = MultiTaskNet("small", tasks=("seg", "recon"))
    assert set(net.heads) == {"seg", "recon"}
    with pytest.raises(ValueError, match=r"this network has heads \('seg', 'recon'\); asked for \('class',\)"):
        net(torch.rand(1, 1, 64, 64), tasks=("class",))
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.rand(1, 1, 64, 48))
    with pytest.raises(ValueError, match=r"image must be B x 1 x H x W"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="tasks must be a non-empty subset"):
        MultiTaskNet("small", tasks=("segmentation",))
    with pytest.raises(ConfigError, match="det_head must be one of"):
        MultiTaskNet("small", tasks=("det",), det_head=None)
    with pytest.raises(ConfigError, match=r"det_kwargs \{'box_loss': 'l2'\} for the retinanet head: box_loss must be"):
        MultiTaskNet("small", tasks=("det",), det_kwargs={"box_loss": "l2"})
    with pytest.raises(ConfigError, match=r"det_kwargs \{'atss_candidates': 0\} for the retinanet head: atss_candidates must be >= 1"):
        MultiTaskNet("small", tasks=("det",), det_kwargs={"atss_candidates": 0})
    with pytest.raises(ConfigError, match="det_kwargs .* unexpected keyword argument 'bogus'"):
        MultiTaskNet("small", tasks=("det",), det_kwargs={"bogus": 1})
    with pytest.raises(ConfigError, match="unknown encoder"):
        MultiTaskNet("resnet51")
    with pytest.raises(ValueError, match="needs targets"):
        _net()(torch.rand(1, 1, 64, 64))


def test_encoder_weights_file(tmp_path):
    source = MultiTaskNet("small", tasks=("class",))
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pt")
    net = MultiTaskNet("small", tasks=("seg",), encoder_weights=tmp_path / "encoder.pt")
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value)


@pytest.mark.parametrize("encoder", ["small", "vgg13", "efficientnet-b0"])
def test_segmentation_path_scripts_and_matches_eager(encoder, tmp_path):
    net = MultiTaskNet(encoder, tasks=("class", "seg", "recon")).eval()
    module = net.segmentation_module()
    assert isinstance(module, SegmentationNet)
    image = torch.rand(2, 1, 64, 64)
    scripted = torch.jit.script(module)
    scripted.save(str(tmp_path / "seg.ts"))
    loaded = torch.jit.load(str(tmp_path / "seg.ts"))
    with torch.no_grad():
        eager = net(image, tasks=("seg",))["seg"]
        torch.testing.assert_close(loaded(image), eager)
        torch.testing.assert_close(loaded(torch.rand(1, 1, 96, 128)).shape, torch.Size([1, 1, 96, 128]))


def test_segmentation_path_traces_for_monai_resnets(tmp_path):
    # MONAI's ResNet blocks keep a functools.partial, which torch.jit.script cannot compile: trace instead
    net = MultiTaskNet("resnet18", tasks=("seg",)).eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net.segmentation_module(), image)
        torch.testing.assert_close(traced(image), net(image)["seg"])


def test_task_output_wrapper():
    net = MultiTaskNet("small", tasks=("class", "seg", "recon")).eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        for task in ("class", "seg", "recon"):
            wrapper = TaskOutput(net, task)
            torch.testing.assert_close(wrapper(image), net(image)[task])
        traced = torch.jit.trace(TaskOutput(net, "class"), image)
        torch.testing.assert_close(traced(image), net(image)["class"])
        torch.testing.assert_close(net.dense_module("recon")(image), net(image)["recon"])
    with pytest.raises(ValueError, match="heads"):
        TaskOutput(net, "det")


def test_registry_is_the_source_of_encoder_channels():
    net = MultiTaskNet("vgg13", tasks=("class",))
    assert net.heads["class"].mlp.hidden_0[0].in_features == ENCODERS["vgg13"].out_channels[-1]

"""Test-time mirroring: answers mapped back onto the image, merged per head; no axes is one plain pass."""

from __future__ import annotations

import pytest
import torch

from ctmtl.engines.inferers import FlipInferer
from ctmtl.errors import ConfigError
from ctmtl.networks import MultiTaskNet

SIZE = 32


class BrightestSpot(torch.nn.Module):
    """A toy multi-task 'network': the class logits are the mean of the left and right image halves, the dense map is
    the image itself, and one detection, a 4 x 6 box with its top-left corner at the brightest pixel, scored by its
    value. Counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, image: torch.Tensor, tasks=("class", "seg", "det")) -> dict:
        self.calls += 1
        half = image.shape[-1] // 2
        out = {"class": torch.stack([image[..., :half].mean((1, 2, 3)), image[..., half:].mean((1, 2, 3))], 1),
               "seg": image.clone(), "det": []}
        for img in image[:, 0]:
            value, flat = img.flatten().max(0)
            y, x = divmod(int(flat), img.shape[-1])
            out["det"].append({"boxes": torch.tensor([[x, y, x + 4.0, y + 6.0]]), "scores": value[None],
                               "labels": torch.ones(1, dtype=torch.long)})
        return {t: out[t] for t in tasks}


def _image() -> torch.Tensor:
    image = torch.zeros(2, 1, SIZE, SIZE)
    image[0, 0, 5, 3] = 1.0  # brightest pixel of image 0: row 5, column 3
    image[1, 0, 20, 30] = 0.8
    image[:, :, :, :8] += 0.1  # the left quarter is brighter
    return image


def test_no_axes_is_one_plain_forward_pass():
    net, image = BrightestSpot(), _image()
    out = FlipInferer(spatial_axes=())(image, net)
    assert net.calls == 1
    assert torch.equal(out["seg"], image) and torch.equal(out["det"][0]["boxes"], torch.tensor([[3.0, 5.0, 7.0, 11.0]]))


def test_left_right_flip_maps_every_head_back_and_merges():
    net, image = BrightestSpot(), _image()
    out = FlipInferer(spatial_axes=(1,))(image, net)
    assert net.calls == 2
    # a map that follows the image exactly is unchanged by flip, answer, flip back, average
    assert torch.allclose(out["seg"], image)
    # the class logits (left half, right half) are averaged with those of the mirrored image: both halves' mean
    left, right = image[..., : SIZE // 2].mean((1, 2, 3)), image[..., SIZE // 2 :].mean((1, 2, 3))
    assert torch.allclose(out["class"], torch.stack([(left + right) / 2] * 2, 1))
    # in the mirrored image the brightest pixel of image 0 is at column 28; its box [28, 5, 32, 11] maps back to
    # [0, 5, 4, 11], which overlaps the plain view's [3, 5, 7, 11] by IoU 1/7 < 0.5: both are kept
    boxes = out["det"][0]["boxes"].tolist()
    assert sorted(boxes) == [[0.0, 5.0, 4.0, 11.0], [3.0, 5.0, 7.0, 11.0]]
    assert out["det"][0]["scores"].tolist() == [pytest.approx(1.1), pytest.approx(1.1)]


def test_up_down_flip_moves_y_and_nms_merges_the_same_box():
    net = BrightestSpot()
    image = torch.zeros(1, 1, SIZE, SIZE)
    image[0, 0, 13:19, 13:19] = torch.linspace(0.5, 1.0, 36).reshape(6, 6)  # brightest at row 18, column 18
    found = FlipInferer(spatial_axes=(0,), nms_thresh=0.3)(image, net)["det"][0]
    # mirrored up-down, the brightest pixel sits at row 13: box [18, 13, 22, 19] maps back to [18, 13, 22, 19]
    # (32 - 19 = 13); the plain view's box is [18, 18, 22, 24], IoU 1/11: kept apart
    assert sorted(found["boxes"].tolist()) == [[18.0, 13.0, 22.0, 19.0], [18.0, 18.0, 22.0, 24.0]]
    # at most detections_per_img, the highest-scored first
    capped = FlipInferer(spatial_axes=(1,), detections_per_img=1)(_image(), BrightestSpot())["det"][0]
    assert len(capped["boxes"]) == 1


def test_multitask_net_outputs_keep_their_form():
    torch.manual_seed(0)
    net = MultiTaskNet("small", tasks=("class", "seg", "recon", "det"), image_size=(64, 64), det_head="retinanet",
                       det_kwargs={"fpn_channels": 16, "levels": (1, 2, 3)}).eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain = net(image)
        out = FlipInferer(spatial_axes=(1,))(image, net)
        mirrored = net(torch.flip(image, dims=(-1,)))
    assert out["class"].shape == plain["class"].shape == (2, 3)
    assert torch.allclose(out["class"], (plain["class"] + mirrored["class"]) / 2, atol=1e-6)
    assert torch.allclose(out["seg"], (plain["seg"] + torch.flip(mirrored["seg"], dims=(-1,))) / 2, atol=1e-6)
    assert out["recon"].shape == (2, 1, 64, 64)
    assert len(out["det"]) == 2 and set(out["det"][0]) == {"boxes", "labels", "scores"}
    assert len(out["det"][0]["boxes"]) <= 100
    scores = out["det"][0]["scores"]
    assert torch.equal(scores, scores.sort(descending=True).values)


@pytest.mark.parametrize("axes", [(2,), (1, 1), (-1,)])
def test_bad_axes_are_a_config_error(axes):
    with pytest.raises(ConfigError, match="flip axes"):
        FlipInferer(spatial_axes=axes)

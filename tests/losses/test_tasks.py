"""Per-task losses: zero / positive where they should be, and samples without a label add nothing."""

from __future__ import annotations

import pytest
import torch

from ctmtl.errors import ConfigError
from ctmtl.losses import (
    SEG_LOSSES,
    ClassificationLoss,
    DetectionLoss,
    ReconstructionLoss,
    SegmentationLoss,
    labelled,
)


def perfect_seg_logits(mask, channels):
    if channels == 1:
        return torch.where(mask > 0, 30.0, -30.0).float()
    return 60.0 * torch.nn.functional.one_hot(mask[:, 0], channels).permute(0, 3, 1, 2).float() - 30.0


@pytest.mark.parametrize("name", sorted(SEG_LOSSES))
@pytest.mark.parametrize("channels", [1, 3])
def test_segmentation_losses_zero_when_perfect_positive_when_wrong(name, channels, make_batch):
    batch = make_batch()
    loss = SegmentationLoss(name, seg_channels=channels)
    perfect = perfect_seg_logits(batch["mask"], channels)
    assert loss(perfect, batch).item() == pytest.approx(0.0, abs=1e-3)
    assert loss(-perfect, batch).item() > 0.5  # inverted prediction
    assert loss(torch.zeros_like(perfect), batch).item() > 0.1


def test_segmentation_merges_lesion_labels_for_one_channel(make_batch):
    batch = make_batch()
    assert batch["mask"].max() == 2
    merged = torch.where(batch["mask"] > 0, 30.0, -30.0)
    assert SegmentationLoss("dice")(merged, batch).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("name", sorted(SEG_LOSSES))
def test_sample_without_mask_adds_no_loss_and_no_gradient(name, make_batch):
    batch = make_batch(has={"seg": [True, False, True, False]})
    loss = SegmentationLoss(name)
    logits = torch.randn(4, 1, 32, 32, requires_grad=True)
    value = loss(logits, batch)
    value.backward()
    assert logits.grad[[1, 3]].abs().sum() == 0 and logits.grad[[0, 2]].abs().sum() > 0
    # ... and equals the loss of the labelled samples alone, whatever the unlabelled ones predict
    sub = {**batch, "mask": batch["mask"][[0, 2]], "has": {"seg": torch.ones(2, dtype=torch.bool)}}
    sub_logits = logits.detach()[[0, 2]].requires_grad_()
    sub_value = loss(sub_logits, sub)
    sub_value.backward()
    torch.testing.assert_close(value, sub_value)
    torch.testing.assert_close(logits.grad[[0, 2]], sub_logits.grad)
    scrambled = logits.detach().clone()
    scrambled[[1, 3]] = torch.randn(2, 1, 32, 32) * 100
    torch.testing.assert_close(loss(scrambled, batch), value.detach())


@pytest.mark.parametrize(
    "loss, pred",
    [
        (ClassificationLoss(), lambda b: torch.randn(4, 3)),
        (ClassificationLoss(focal=True), lambda b: torch.randn(4, 3)),
        (SegmentationLoss(), lambda b: torch.randn(4, 1, 32, 32)),
        (ReconstructionLoss(), lambda b: torch.rand(4, 1, 32, 32)),
    ],
    ids=["ce", "focal", "gdice", "mse"],
)
def test_no_labelled_sample_gives_exactly_zero_with_a_graph(loss, pred, make_batch):
    batch = make_batch(has={loss.task: [False] * 4})
    output = pred(batch).requires_grad_()
    value = loss(output, batch)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert output.grad.abs().sum() == 0
    assert not loss.has_labels(batch)


@pytest.mark.parametrize("focal", [False, True])
def test_classification_loss(focal, make_batch):
    batch = make_batch(has={"class": [True, True, False, True]})
    loss = ClassificationLoss(focal=focal)
    perfect = 40.0 * torch.nn.functional.one_hot(batch["class"], 3).float() - 20.0
    assert loss(perfect, batch).item() == pytest.approx(0.0, abs=1e-6)
    wrong = -perfect
    assert loss(wrong, batch).item() > 1.0
    wrong_unlabelled = perfect.clone()
    wrong_unlabelled[2] = -perfect[2]  # only the unlabelled sample is wrong
    assert loss(wrong_unlabelled, batch).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(4, 3)
    expected = torch.log(torch.tensor(3.0)).item()
    if not focal:
        assert loss(uniform, batch).item() == pytest.approx(expected)


def test_reconstruction_loss_is_mse_over_labelled_samples(make_batch):
    batch = make_batch(has={"recon": [True, False, True, True]})
    loss = ReconstructionLoss()
    assert loss(batch["image"].clone(), batch).item() == 0.0
    shifted = batch["image"] + 0.5
    shifted[1] += 10  # unlabelled
    assert loss(shifted, batch).item() == pytest.approx(0.25)


def test_detection_loss_sums_the_heads_losses(make_batch):
    batch = make_batch()
    losses = {"classification": torch.tensor(0.5, requires_grad=True), "box_regression": torch.tensor(0.25)}
    assert DetectionLoss()(losses, batch).item() == pytest.approx(0.75)
    assert DetectionLoss({"box_regression": 2.0})(losses, batch).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="eval mode"):
        DetectionLoss()([{"boxes": torch.zeros(0, 4)}], batch)


def test_errors_name_the_problem(make_batch):
    with pytest.raises(ConfigError, match="unknown segmentation loss 'focal'; choose one of generalized_dice"):
        SegmentationLoss("focal")
    batch = make_batch()
    del batch["has"]["seg"]
    with pytest.raises(ValueError, match=r"batch\['has'\] has no entry for task 'seg'"):
        SegmentationLoss()(torch.zeros(4, 1, 32, 32), batch)
    with pytest.raises(ValueError, match="seg output has 3 channels, the loss was built for 1"):
        SegmentationLoss()(torch.zeros(4, 3, 32, 32), make_batch())
    assert labelled(make_batch(has={"det": [1, 0, 0, 1]}), "det").tolist() == [True, False, False, True]

"""MultiTaskLoss: weighted sum over the tasks present, per-task values, learned weights."""

from __future__ import annotations

import pytest
import torch

from ctmtl.losses import (
    ClassificationLoss,
    FixedWeighting,
    MultiTaskLoss,
    ReconstructionLoss,
    SegmentationLoss,
    UncertaintyWeighting,
)


def _outputs(n=4, size=32, det=True):
    out = {
        "class": torch.randn(n, 3, requires_grad=True),
        "seg": torch.randn(n, 1, size, size, requires_grad=True),
        "recon": torch.rand(n, 1, size, size, requires_grad=True),
    }
    if det:
        out["det"] = {"classification": torch.tensor(0.7, requires_grad=True), "box_regression": torch.tensor(0.2)}
    return out


def test_total_is_the_weighted_sum_of_the_task_losses(make_batch):
    batch = make_batch()
    out = _outputs()
    loss = MultiTaskLoss(weighting=FixedWeighting({"class": 0.0, "seg": 1.0, "recon": 2.0, "det": 1.0}))
    total, per_task = loss(out, batch)
    assert set(per_task) == {"class", "seg", "recon", "det"}
    assert per_task["det"].item() == pytest.approx(0.9)
    expected = per_task["seg"] + 2.0 * per_task["recon"] + per_task["det"]
    torch.testing.assert_close(total, expected)
    total.backward()
    assert out["class"].grad.abs().sum() == 0  # weight 0: the papers' switched-off task


def test_only_outputs_present_are_scored(make_batch):
    batch = make_batch()
    loss = MultiTaskLoss({"seg": SegmentationLoss("dice_ce"), "recon": ReconstructionLoss()})
    out = _outputs()
    total, per_task = loss({"seg": out["seg"], "class": out["class"]}, batch)
    assert list(per_task) == ["seg"]
    torch.testing.assert_close(total, per_task["seg"])
    with pytest.raises(ValueError, match="no output to score"):
        loss({"class": out["class"]}, batch)


def test_a_task_absent_from_the_batch_adds_zero_and_is_left_out_of_the_weighting(make_batch):
    batch = make_batch(has={"seg": [False] * 4})
    weighting = UncertaintyWeighting()
    loss = MultiTaskLoss({"seg": SegmentationLoss(), "class": ClassificationLoss()}, weighting)
    out = _outputs(det=False)
    total, per_task = loss(out, batch)
    assert per_task["seg"].item() == 0.0
    # 0.5 exp(-0) * L_class + 0.5 * 0, no term for seg
    torch.testing.assert_close(total, 0.5 * per_task["class"])
    total.backward()
    assert weighting.log_vars["seg"].grad is None and weighting.log_vars["class"].grad is not None


def test_nothing_labelled_gives_zero_total_with_a_graph(make_batch):
    batch = make_batch(has={"seg": [False] * 4, "class": [False] * 4})
    loss = MultiTaskLoss({"seg": SegmentationLoss(), "class": ClassificationLoss()}, "uncertainty")
    out = _outputs(det=False)
    total, _ = loss(out, batch)
    assert total.item() == 0.0
    total.backward()
    assert out["seg"].grad.abs().sum() == 0


def test_default_losses_and_weighting_by_name(make_batch):
    loss = MultiTaskLoss(weighting="uncertainty", tasks=("class", "seg", "recon", "det"))
    assert set(loss.task_losses) == {"class", "seg", "recon", "det"}
    assert isinstance(loss.weighting, UncertaintyWeighting)
    names = {n for n, _ in loss.named_parameters()}
    assert names == {f"weighting.log_vars.{t}" for t in ("class", "seg", "recon", "det")}
    total, _ = loss(_outputs(), make_batch())
    assert torch.isfinite(total)

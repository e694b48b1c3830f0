"""Task weighting strategies."""

from __future__ import annotations

import math

import pytest
import torch

from ctmtl.errors import ConfigError
from ctmtl.losses import WEIGHTINGS, FixedWeighting, UncertaintyWeighting, build_weighting


def test_fixed_weights_include_the_papers_zero_one():
    weighting = FixedWeighting({"class": 0, "seg": 1, "recon": 1})
    losses = {task: torch.tensor(1.0) for task in ("class", "seg", "recon", "det")}
    assert weighting(losses) == {"class": 0.0, "seg": 1.0, "recon": 1.0, "det": 1.0}
    assert FixedWeighting(default=0.0)({"det": torch.tensor(2.0)}) == {"det": 0.0}
    assert weighting.penalty(losses) == 0.0
    with pytest.raises(ConfigError, match="unknown tasks"):
        FixedWeighting({"segmentation": 1})


def test_uncertainty_weighting_is_kendalls_with_learnable_log_variances():
    weighting = UncertaintyWeighting(tasks=("class", "seg"), init=0.0)
    with torch.no_grad():
        weighting.log_vars["seg"].fill_(math.log(4.0))
    losses = {"class": torch.tensor(2.0), "seg": torch.tensor(8.0)}
    weights = weighting(losses)
    assert weights["class"].item() == pytest.approx(0.5) and weights["seg"].item() == pytest.approx(0.125)
    assert weighting.penalty(losses).item() == pytest.approx(0.5 * math.log(4.0))
    total = sum(weights[t] * losses[t] for t in losses) + weighting.penalty(losses)
    total.backward()
    # d/ds (0.5 exp(-s) L + 0.5 s) = 0.5 - 0.5 exp(-s) L
    assert weighting.log_vars["class"].grad.item() == pytest.approx(0.5 - 0.5 * 2.0)
    assert weighting.log_vars["seg"].grad.item() == pytest.approx(0.5 - 0.5 * 8.0 / 4.0)
    assert {name for name, _ in weighting.named_parameters()} == {"log_vars.class", "log_vars.seg"}
    with pytest.raises(ValueError, match="not 'det'"):
        weighting({"det": torch.tensor(1.0)})


def test_uncertainty_weighting_state_is_checkpointable(tmp_path):
    weighting = UncertaintyWeighting(init=0.3)
    with torch.no_grad():
        weighting.log_vars["det"].fill_(-1.5)
    torch.save(weighting.state_dict(), tmp_path / "w.pt")
    restored = UncertaintyWeighting()
    restored.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    assert {k: v.item() for k, v in restored.log_vars.items()} == pytest.approx(
        {"class": 0.3, "seg": 0.3, "recon": 0.3, "det": -1.5}
    )


def test_strategies_are_chosen_by_name():
    assert set(WEIGHTINGS) == {"fixed", "uncertainty"}
    assert isinstance(build_weighting("fixed", weights={"seg": 0}), FixedWeighting)
    assert isinstance(build_weighting("uncertainty", tasks=("seg",)), UncertaintyWeighting)
    with pytest.raises(ConfigError, match="unknown task weighting 'gradnorm'; choose one of fixed, uncertainty"):
        build_weighting("gradnorm")

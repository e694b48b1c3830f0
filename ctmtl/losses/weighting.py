"""Task weighting strategies: small named classes that return one weight per task (the engine owns backward()).

``MultiTaskLoss`` computes ``sum_t weights[t] * loss[t] + penalty`` over the tasks that have labels in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ctmtl.constants import SHORT_TASKS
from ctmtl.errors import ConfigError

__all__ = ["WEIGHTINGS", "FixedWeighting", "TaskWeighting", "UncertaintyWeighting", "build_weighting"]


class TaskWeighting(nn.Module):
    """Base class: ``forward(losses) -> {task: weight}`` for the tasks in ``losses``; ``penalty(losses)`` is added to
    the weighted sum (0 unless the strategy learns its weights)."""

    def forward(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor | float]:
        raise NotImplementedError

    def penalty(self, losses: Mapping[str, Tensor]) -> Tensor | float:
        return 0.0


class FixedWeighting(TaskWeighting):
    """Constant weights, e.g. the papers' {0, 1} per training stage.

    Args:
        weights: weight per short task name; tasks not listed get ``default``.
        default: weight of the tasks not in ``weights``.
    """

    def __init__(self, weights: Mapping[str, float] | None = None, default: float = 1.0) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(SHORT_TASKS))
        if unknown:
            raise ConfigError(f"FixedWeighting: unknown tasks {unknown}; tasks are {SHORT_TASKS}")
        self.weights = weights
        self.default = float(default)

    def forward(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor | float]:
        return {task: float(self.weights.get(task, self.default)) for task in losses}


class UncertaintyWeighting(TaskWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018), in LibMTL's form:
    ``total = sum_t 0.5 * exp(-s_t) * L_t + 0.5 * s_t`` with a learnable log-variance ``s_t`` per task.

    Written here: LibMTL, which has it, is not a dependency and drives ``backward()`` itself.
    The log-variances are ``nn.Parameter`` s (``log_vars.<task>``): add this module's parameters to the optimiser;
    they are saved in its ``state_dict``.

    Args:
        tasks: tasks that get a log-variance.
        init: initial log-variance (0 -> weight 0.5).
    """

    def __init__(self, tasks: Sequence[str] = SHORT_TASKS, init: float = 0.0) -> None:
        super().__init__()
        unknown = sorted(set(tasks) - set(SHORT_TASKS))
        if unknown:
            raise ConfigError(f"UncertaintyWeighting: unknown tasks {unknown}; tasks are {SHORT_TASKS}")
        self.log_vars = nn.ParameterDict({task: nn.Parameter(torch.tensor(float(init))) for task in tasks})

    def _log_var(self, task: str) -> Tensor:
        if task not in self.log_vars:
            raise ValueError(f"UncertaintyWeighting has log-variances for {list(self.log_vars)}, not {task!r}.")
        return self.log_vars[task]

    def forward(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor | float]:
        return {task: 0.5 * torch.exp(-self._log_var(task)) for task in losses}

    def penalty(self, losses: Mapping[str, Tensor]) -> Tensor | float:
        return 0.5 * sum(self._log_var(task) for task in losses) if losses else 0.0


#: weighting strategies by config name
WEIGHTINGS: dict[str, type[TaskWeighting]] = {"fixed": FixedWeighting, "uncertainty": UncertaintyWeighting}


def build_weighting(name: str, **kwargs: Any) -> TaskWeighting:
    """The strategy registered as ``name`` (``fixed``, ``uncertainty``), built with ``kwargs``."""
    if name not in WEIGHTINGS:
        raise ConfigError(f"unknown task weighting {name!r}; choose one of {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[name](**kwargs)

"""The multi-task loss: per-task losses with missing-label masks, combined by a weighting strategy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ctmtl.losses.tasks import TASK_LOSSES, TaskLoss
from ctmtl.losses.weighting import TaskWeighting, build_weighting

__all__ = ["MultiTaskLoss"]


class MultiTaskLoss(nn.Module):
    """``loss(out, batch) -> (total, per_task)``.

    Args:
        task_losses: short task name -> :class:`~ctmtl.losses.tasks.TaskLoss` (default: the default loss of every
            task, :data:`~ctmtl.losses.tasks.TASK_LOSSES`).
        weighting: a :class:`~ctmtl.losses.weighting.TaskWeighting` or its registered name (``fixed``,
            ``uncertainty``), built with ``weighting_kwargs``.

    ``out`` is the network's output dict; the tasks both in ``out`` and in ``task_losses`` are scored, others are
    ignored. ``per_task[t]`` is each task's loss (exactly 0 when no sample of the batch carries that label);
    ``total = sum_t w_t * per_task[t] + penalty`` over the tasks with labels in the batch, so that a task absent
    from the batch does not move learned weights. Move the module to the device and, for learned weightings,
    give its parameters to the optimiser; the caller runs ``total.backward()``.
    """

    def __init__(
        self,
        task_losses: Mapping[str, TaskLoss] | None = None,
        weighting: TaskWeighting | str = "fixed",
        **weighting_kwargs: Any,
    ) -> None:
        super().__init__()
        if task_losses is None:
            task_losses = {task: cls() for task, cls in TASK_LOSSES.items()}
        self.task_losses = nn.ModuleDict(dict(task_losses))
        self.weighting = build_weighting(weighting, **weighting_kwargs) if isinstance(weighting, str) else weighting

    def forward(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        per_task: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        for task, loss_fn in self.task_losses.items():
            if task not in out:
                continue
            per_task[task] = loss_fn(out[task], batch)
            if loss_fn.has_labels(batch):
                present[task] = per_task[task]
        if not per_task:
            raise ValueError(f"no output to score: outputs {sorted(out)}, losses for {sorted(self.task_losses)}.")
        if not present:  # exact zeros, keeping the graph
            return sum(per_task.values()), per_task
        weights = self.weighting(present)
        total = sum(weights[task] * loss for task, loss in present.items()) + self.weighting.penalty(present)
        return total, per_task

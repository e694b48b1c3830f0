"""Training plans: the stages of a run, as config values.

A plan is a list of :class:`Stage` s run one after another by one trainer
(:class:`ctmtl.engines.trainer.MultiTaskTrainer`). Each stage names the tasks it trains, its epochs, which
samples it draws (those that carry a label of one of its *primary* tasks: reconstruction rides along with any
image), and how it starts: from the previous stage's best weights (the weight transfer of
Hryniewska-Guzik et al. 2023) or fresh.

Named plans (:data:`PLANS`):

- ``staged``: ``cr`` (classification + reconstruction) -> ``sr`` (segmentation + reconstruction) ->
  ``dr`` (detection + reconstruction), each starting from the previous stage's best weights;
- ``joint``: every task at once on the merged data (Amyar et al. 2020);
- ``staged_joint``: ``staged``, then a ``joint`` stage of every head from the ``dr`` weights, so that one final model
  serves all heads (after ``dr`` alone the classification and segmentation heads sit on an encoder moved by
  detection);
- ``class``, ``seg``, ``recon``, ``det``: single-task baselines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ctmtl.constants import SHORT_TASKS
from ctmtl.errors import ConfigError

__all__ = ["Stage", "PLANS", "build_plan", "DEFAULT_KEY_METRICS"]

#: validation metric that picks each stage's best checkpoint, by the stage's first primary task
DEFAULT_KEY_METRICS: dict[str, str] = {
    "class": "class_accuracy",
    "seg": "seg_dice",
    "recon": "recon_psnr",
    "det": "det_ap50",
}

INITS = ("previous", "fresh")
#: ``key_metric`` value that averages the default key metrics of a stage's primary tasks (a joint stage)
MEAN_KEY = "mean"


@dataclass
class Stage:
    """One stage of a training plan.

    Args:
        name: unique name (``cr``, ``sr``, ``dr``, ``joint``, ...).
        tasks: short task names whose heads are trained and whose losses count.
        epochs: epochs of this stage (an early stop ends the stage, not the run).
        init: ``previous`` (load the previous stage's best weights; the first stage starts as built) or
            ``fresh`` (re-initialise every parameter before the stage).
        freeze_encoder: keep the shared encoder's weights fixed during the stage.
        key_metric: validation metric (``seg_dice``, ...) that picks the stage's best weights, or ``"mean"``; default
            the first primary task's (:data:`DEFAULT_KEY_METRICS`), ``"mean"`` for a stage of several scored tasks.
        loss_weights: fixed weight per task (the papers' w_i in {0, 1}); missing tasks weigh 1.
        lr: learning rate at the start of the stage (e.g. a lower one for a last stage that fine-tunes every head
            together); default the optimizer's own (the run's ``learning_rate``).
    """

    name: str
    tasks: tuple[str, ...]
    epochs: int
    init: str = "previous"
    freeze_encoder: bool = False
    key_metric: str | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    lr: float | None = None

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in SHORT_TASKS]
        if not self.tasks or unknown:
            raise ConfigError(f"stage {self.name!r}: tasks must be a non-empty subset of {SHORT_TASKS}, got {self.tasks}")
        if int(self.epochs) < 0:
            raise ConfigError(f"stage {self.name!r}: epochs must be >= 0, got {self.epochs}")
        self.epochs = int(self.epochs)
        if self.lr is not None:
            if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
                raise ConfigError(f"stage {self.name!r}: lr must be a positive number, got {self.lr!r}")
            self.lr = float(self.lr)
        if self.init not in INITS:
            raise ConfigError(f"stage {self.name!r}: init must be one of {INITS}, got {self.init!r}")
        if self.key_metric is None:
            scored = [t for t in self.primary_tasks if t != "recon"]
            self.key_metric = MEAN_KEY if len(scored) > 1 else DEFAULT_KEY_METRICS[self.primary_tasks[0]]

    def key_value(self, metrics: Mapping[str, Any]) -> float:
        """The stage's key metric in ``metrics``: one key, or with ``key_metric="mean"`` the mean of the default key
        metrics of its primary tasks (each in [0, 1]: accuracy, Dice, AP50); NaN when absent."""
        if self.key_metric != MEAN_KEY:
            return float(metrics.get(self.key_metric, float("nan")))
        values = [float(metrics.get(DEFAULT_KEY_METRICS[t], float("nan"))) for t in self.primary_tasks if t != "recon"]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    @property
    def primary_tasks(self) -> tuple[str, ...]:
        """Tasks whose labels select the stage's samples (reconstruction alone when it is the only task)."""
        return tuple(t for t in self.tasks if t != "recon") or self.tasks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: named plans: stage name -> tasks (epochs are set by :func:`build_plan`)
PLANS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "staged": (("cr", ("class", "recon")), ("sr", ("seg", "recon")), ("dr", ("det", "recon"))),
    "joint": (("joint", ("class", "seg", "recon", "det")),),
    "staged_joint": (("cr", ("class", "recon")), ("sr", ("seg", "recon")), ("dr", ("det", "recon")),
                     ("joint", ("class", "seg", "recon", "det"))),
    "class": (("class", ("class",)),),
    "seg": (("seg", ("seg",)),),
    "recon": (("recon", ("recon",)),),
    "det": (("det", ("det",)),),
}


def _stage_from_dict(spec: Any, index: int) -> Stage:
    """A :class:`Stage` from one entry of a plan list, with an error that names the entry."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"plan stage {index}: expected a dict with name, tasks and epochs, got {spec!r}")
    names = {f.name for f in fields(Stage)}
    required = {f.name for f in fields(Stage) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(spec))
    unknown = sorted(set(spec) - names)
    if missing or unknown:
        what = "; ".join(filter(None, [f"missing {missing}" if missing else "", f"unknown keys {unknown}" if unknown else ""]))
        raise ConfigError(f"plan stage {index} ({spec.get('name', '?')!r}): {what}; a stage has {sorted(names)}")
    return Stage(**dict(spec))


def build_plan(
    plan: str | Sequence[Mapping[str, Any] | Stage] = "staged",
    epochs: int | Sequence[int] | Mapping[str, int] = 1,
    tasks: Sequence[str] | None = None,
    **stage_kwargs: Any,
) -> list[Stage]:
    """The stages of a plan.

    Args:
        plan: a name of :data:`PLANS`, or a list of stage dicts (``{"name", "tasks", "epochs", ...}``).
        epochs: epochs of every stage of a named plan: one number, one per stage, or a dict stage -> epochs.
        tasks: keep only these tasks, e.g. the heads the network has; a stage left without any of its primary
            tasks is dropped.
        stage_kwargs: further :class:`Stage` fields for every stage of a named plan (``freeze_encoder``, ``init``).

    Raises:
        ConfigError: unknown plan name, duplicate stage names, epochs that do not match the stages.
    """
    if isinstance(plan, str):
        if plan not in PLANS:
            raise ConfigError(f"unknown training plan {plan!r}; named plans are {sorted(PLANS)}, or give a list of stages")
        names = [name for name, _ in PLANS[plan]]
        if isinstance(epochs, Mapping):
            extra = set(epochs) - set(names)
            if extra:
                raise ConfigError(f"epochs given for stages {sorted(extra)} that plan {plan!r} does not have ({names})")
            per_stage = [int(epochs.get(n, 1)) for n in names]
        elif isinstance(epochs, Sequence) and not isinstance(epochs, str):
            if len(epochs) != len(names):
                raise ConfigError(f"plan {plan!r} has {len(names)} stages {names}; got {len(epochs)} epoch values")
            per_stage = [int(e) for e in epochs]
        else:
            per_stage = [int(epochs)] * len(names)
        stages = [Stage(name, t, e, **stage_kwargs) for (name, t), e in zip(PLANS[plan], per_stage)]
    else:
        stages = [s if isinstance(s, Stage) else _stage_from_dict(s, k) for k, s in enumerate(plan)]
    if tasks is not None:
        keep = set(tasks)
        kept = []
        for s in stages:
            if not keep & set(s.primary_tasks):  # e.g. "dr" for a network without a detection head
                continue
            left = tuple(t for t in s.tasks if t in keep)
            key = s.key_metric if s.key_metric and s.key_metric.split("_")[0] in left else None
            kept.append(Stage(**{**s.to_dict(), "tasks": left, "key_metric": key}))
        stages = kept
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    if not stages:
        raise ConfigError("the training plan has no stage")
    return stages

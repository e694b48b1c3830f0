"""The multi-task trainer and evaluator: MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` with a multi-task
iteration, and a training plan of stages run by one Ignite engine.

- :class:`MultiTaskPrepareBatch` moves a collated batch (docs/architecture.md, "Batch") to the device and hands the
  network its tasks and, in training, the detection targets (``None`` for samples without detection labels).
- :class:`MultiTaskEvaluator` computes every metric of the active tasks (:mod:`ctmtl.engines.metrics`).
- :class:`MultiTaskTrainer` runs the stages of a plan (:mod:`ctmtl.engines.stages`) one after another in one
  Ignite run: at a stage's first epoch it switches the data (samples carrying the stage's labels), the tasks of the
  network, loss and metrics, optionally freezes the encoder, and loads the previous stage's best weights. It
  validates every ``val_interval`` epochs, keeps each stage's best weights by the stage's key metric, steps a
  ``ReduceLROnPlateau`` schedule, stops a stage early after ``patience`` validations without improvement (the run
  goes on with the next stage), and writes the per-epoch history as JSON and CSV.

Checkpoints: :func:`attach_checkpointing` saves everything needed to resume (network, optimizer, scheduler, loss
weighting, engine and plan state) every epoch; ``resume=True`` loads the last one. The engine owns ``backward()``,
the AMP gradient scaler (CUDA only) and the device.

Distributed (``torchrun``): the network may come wrapped in ``DistributedDataParallel``; weights are read from and
loaded into the wrapped module (files never carry a ``module.`` prefix), and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.utils.enums import CommonKeys as Keys
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, WeightedRandomSampler

from ctmtl.engines.metrics import IgniteMetricAdapter, MultiTaskMetrics
from ctmtl.engines.stages import Stage, build_plan
from ctmtl.errors import ConfigError
from ctmtl.networks.detection import detection_targets

__all__ = [
    "attach_checkpointing",
    "latest_checkpoint",
    "MultiTaskPrepareBatch",
    "MultiTaskEvaluator",
    "MultiTaskTrainer",
    "TaskLossFunction",
    "stage_loader",
    "to_device",
    "unwrap",
    "is_main_process",
]

logger = logging.getLogger(__name__)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the network itself otherwise)."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return network.module if isinstance(network, wrappers) else network


def is_main_process() -> bool:
    """True unless this is a process of rank > 0 in an initialised ``torch.distributed`` group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def to_device(batch: Any, device: torch.device | str | None, non_blocking: bool = False) -> Any:
    """A collated batch with every tensor on ``device`` (dicts and lists followed; other values kept)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking) if device is not None else batch
    if isinstance(batch, Mapping):
        return {k: (v if k == "meta" else to_device(v, device, non_blocking)) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device, non_blocking) for v in batch]
    return batch


class MultiTaskPrepareBatch(PrepareBatch):
    """``batch -> (image, batch, (), {"tasks": ..., "targets": ...})`` for MONAI's engines.

    The network is called as ``net(image, tasks=tasks, targets=targets)``; ``targets`` (detection, training
    only) comes from :func:`ctmtl.networks.detection.detection_targets`.

    Args:
        tasks: short task names the network computes.
        with_targets: pass detection targets (training).
        det_masks: detection targets carry instance masks (Mask R-CNN).
        channels_last: hand the image over in channels-last memory format (for a network converted to it).
    """

    def __init__(
        self, tasks: Sequence[str], with_targets: bool = True, det_masks: bool = False, channels_last: bool = False
    ) -> None:
        self.tasks = tuple(tasks)
        self.with_targets = with_targets
        self.det_masks = det_masks
        self.channels_last = channels_last

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        batch = to_device(batchdata, device, non_blocking)
        call: dict[str, Any] = {"tasks": self.tasks}
        if self.with_targets and "det" in self.tasks:
            call["targets"] = detection_targets(batch, with_masks=self.det_masks)
        image = batch["image"]
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, batch, (), call


class TaskLossFunction:
    """Adapter of :class:`ctmtl.losses.MultiTaskLoss` to MONAI's ``loss_function(pred, label) -> Tensor``.

    The per-task losses of the last call are kept in :attr:`last` (detached floats) for logging.
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        self.loss = loss
        self.last: dict[str, float] = {}

    def __call__(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        total, per_task = self.loss(pred, batch)
        self.last = {k: float(v.detach()) for k, v in per_task.items()}
        return total


def _sample_info(dataset: Dataset, index: int) -> Mapping[str, Any]:
    """``{"tasks": set of short tasks, "dataset": name}`` of one sample without loading it."""
    if isinstance(dataset, Subset):
        return _sample_info(dataset.dataset, dataset.indices[index])
    info = getattr(dataset, "sample_info", None)
    if info is None:
        raise ConfigError(f"{type(dataset).__name__} has no sample_info(index); the trainer needs it to pick stage samples")
    return info(index)


def stage_loader(
    dataset: Dataset,
    tasks: Sequence[str],
    batch_size: int,
    sampler: str = "proportional",
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    distributed: bool = False,
) -> DataLoader:
    """A data loader over the samples of ``dataset`` that carry a label of one of ``tasks``.

    Args:
        sampler: ``proportional`` (every sample equally likely: data sets weigh by their size) or ``balanced``
            (each data set equally likely per draw, with replacement; mixes small labelled sets into every epoch).
        distributed: shard the samples across processes (``DistributedSampler``; proportional only).

    Raises:
        ConfigError: no sample carries a label of ``tasks``.
    """
    from ctmtl.data.pipeline import multitask_collate

    wanted = set(tasks)
    indices = [i for i in range(len(dataset)) if wanted & set(_sample_info(dataset, i)["tasks"])]
    if not indices:
        raise ConfigError(f"no training sample carries a label for tasks {sorted(wanted)}: check the manifests' tasks")
    subset = Subset(dataset, indices)
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        chosen = DistributedSampler(subset, shuffle=shuffle)
    elif sampler == "balanced":
        names = [_sample_info(dataset, i)["dataset"] for i in indices]
        counts = {n: names.count(n) for n in set(names)}
        weights = torch.tensor([1.0 / counts[n] for n in names], dtype=torch.double)
        chosen = WeightedRandomSampler(weights, num_samples=len(indices), replacement=True, generator=generator)
    elif sampler == "proportional":
        chosen = RandomSampler(subset, generator=generator) if shuffle else None
    else:
        raise ConfigError(f"sampler must be 'proportional' or 'balanced', got {sampler!r}")
    return DataLoader(
        subset,
        batch_size=batch_size,
        sampler=chosen,
        num_workers=num_workers,
        collate_fn=collate_fn or multitask_collate,
        drop_last=False,
        persistent_workers=False,
    )


class MultiTaskEvaluator(SupervisedEvaluator):
    """Validation / test of a :class:`ctmtl.networks.MultiTaskNet` on the tasks given.

    Metrics land flat in ``state.metrics`` (``seg_dice``, ``class_accuracy``, ...; see
    :mod:`ctmtl.engines.metrics`). :meth:`set_tasks` switches the tasks between stages.

    Args:
        device: where the network runs.
        val_data_loader: batches of :func:`ctmtl.data.pipeline.multitask_collate`.
        network: the multi-task network.
        tasks: short task names to evaluate.
        metrics_kwargs: per task, keyword arguments of its accumulator (e.g. ``{"det": {"masks": True}}``).
        amp: autocast on CUDA.
        channels_last: run the network in channels-last memory format (:class:`MultiTaskTrainer`).
        val_handlers: further Ignite / MONAI handlers.
        distributed: each process evaluates its share of the batches and the metrics are computed from every
            process's outputs (:class:`ctmtl.engines.handlers.GatheredMetricAdapter`; deal the batches with
            :class:`ctmtl.engines.handlers.BatchShardSampler`), so every rank gets the single-process values.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: DataLoader,
        network: torch.nn.Module,
        tasks: Sequence[str],
        metrics_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        amp: bool = False,
        val_handlers: Sequence | None = None,
        distributed: bool = False,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        self.metrics_kwargs = {k: dict(v) for k, v in (metrics_kwargs or {}).items()}
        self._prepare = MultiTaskPrepareBatch(tasks, with_targets=False, channels_last=channels_last)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        adapter = IgniteMetricAdapter
        if distributed:
            from ctmtl.engines.handlers import GatheredMetricAdapter as adapter  # handlers imports this module
        self.metric = adapter(self._make_metrics(tasks), output_transform=lambda o: (o[Keys.PRED], o[Keys.LABEL]))
        device = torch.device(device)
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            prepare_batch=self._prepare,
            amp=amp and device.type == "cuda",
            decollate=False,
            **kwargs,
        )
        # attached here: MONAI's Workflow attaches additional metrics only beside a key metric, and the key
        # metric of a multi-task run changes with the stage (the trainer tracks it); the handlers come after,
        # so that their EPOCH_COMPLETED (StatsHandler, TensorBoard) sees this run's metrics
        self.metric.attach(self, "multitask")
        if val_handlers is not None:
            self._register_handlers(val_handlers)

    def _make_metrics(self, tasks: Sequence[str]) -> MultiTaskMetrics:
        from ctmtl.engines.metrics import TASK_METRICS

        return MultiTaskMetrics(tasks, {t: TASK_METRICS[t](**self.metrics_kwargs.get(t, {})) for t in tasks})

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._prepare.tasks

    def set_tasks(self, tasks: Sequence[str]) -> None:
        """Evaluate these tasks from the next run on."""
        self._prepare.tasks = tuple(tasks)
        self.metric.metrics = self._make_metrics(tasks)
        self.state.metrics = {}  # Ignite keeps the last run's values: a stage must not report another's metrics

    def scalar_metrics(self) -> dict[str, float]:
        """The scalar metrics of the last run (lists and counts left out)."""
        return {k: float(v) for k, v in self.state.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _PlanState:
    """The part of a :class:`MultiTaskTrainer` that a checkpoint must restore: stage epochs (shortened by early
    stops), the active stage, per-stage bests and bad-validation counters, and the history."""

    def __init__(self, trainer: MultiTaskTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        return {
            "epochs": [s.epochs for s in t.stages],
            "active": t.active_stage.name if t.active_stage else None,
            "stage_state": copy.deepcopy(t.stage_state),
            "history": copy.deepcopy(t.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        t = self.trainer
        if len(state["epochs"]) != len(t.stages):
            raise ConfigError(f"the checkpoint's plan has {len(state['epochs'])} stages, this run has {len(t.stages)}")
        for stage, epochs in zip(t.stages, state["epochs"]):
            stage.epochs = int(epochs)
        t.active_stage = next((s for s in t.stages if s.name == state["active"]), None)
        t._resumed = t.active_stage is not None
        t.stage_state = copy.deepcopy(dict(state["stage_state"]))
        t.history = list(state["history"])
        for name, st in t.stage_state.items():  # best weights of earlier stages, for the weight transfer
            path = t.out_dir / f"best_{name}.pt" if t.out_dir is not None else None
            if st.get("best_epoch") is not None and path is not None and path.is_file():
                t.best_weights[name] = torch.load(path, map_location="cpu", weights_only=True)


class MultiTaskTrainer(SupervisedTrainer):
    """Trains a :class:`ctmtl.networks.MultiTaskNet` through the stages of a plan.

    Args:
        device: device of the network and batches (``cuda`` enables AMP when ``amp`` is set).
        network: the multi-task network (built with every head any stage trains).
        optimizer: its optimiser (include the loss weighting's parameters when it learns them).
        loss_function: a :class:`ctmtl.losses.MultiTaskLoss`.
        train_dataset: slice dataset with ``sample_info(i)`` (see :class:`ctmtl.data.pipeline.SliceDataset`).
        stages: list of :class:`~ctmtl.engines.stages.Stage` or stage dicts, or a plan name of
            :data:`~ctmtl.engines.stages.PLANS` (then ``epochs`` sets each stage's epochs).
        epochs: epochs per stage for a named plan (a number, list or dict by stage).
        evaluator: a :class:`MultiTaskEvaluator` run every ``val_interval`` epochs and at each stage's end.
        batch_size, sampler, num_workers: the stage data loaders (:func:`stage_loader`).
        lr_scheduler: a ``ReduceLROnPlateau`` stepped on the stage's key metric (mode ``max``) after validation.
        patience: validations without improvement of the key metric that end a stage early (None: never).
        out_dir: where the best weights (``best_<stage>.pt``, ``model.pt``) go, and the history unless
            ``history_dir`` is given; None keeps them in memory only.
        history_dir: where the history (``metrics.json``, ``metrics.csv``) goes (default ``out_dir``).
        run_info: further top-level entries of ``metrics.json`` (e.g. the data trained on).
        max_epochs: stop the run after this many epochs (later stages shortened or left out); default: every
            epoch of the plan. More than the plan has is an error.
        det_masks: detection targets carry instance masks (Mask R-CNN).
        seed: seed of the samplers' generator.
        amp: mixed precision on CUDA (ignored on CPU).
        channels_last: run the network in channels-last memory format, on any device: with oneDNN on the CPU a
            training step of the demo network takes 0.76-0.89 times as long (``benchmarks/memory_format.py``),
            and CUDA convolutions use their NHWC kernels. The weights it saves are the same.
        distributed: shard batches across processes (``torchrun``); ``network`` may be wrapped in
            ``DistributedDataParallel`` (use ``find_unused_parameters=True``: a stage leaves other heads idle).
        train_handlers: further Ignite / MONAI handlers.
        ema_momentum: keep an exponential moving average of the weights (Ignite's ``EMAHandler``, updated after every
            iteration: ``ema = (1 - m) * ema + m * weights``) and validate, keep and hand on to the next stage the
            averaged weights instead of the last ones; each stage's average starts from the weights the stage
            starts with. None or 0: off. The average smooths the epoch-to-epoch swings of small validation sets, so
            the best epoch is less a lucky one.
    """

    def __init__(
        self,
        device: torch.device | str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: torch.nn.Module,
        train_dataset: Dataset,
        stages: str | Sequence[Stage | Mapping[str, Any]] = "staged",
        epochs: int | Sequence[int] | Mapping[str, int] = 1,
        evaluator: MultiTaskEvaluator | None = None,
        batch_size: int = 4,
        sampler: str = "proportional",
        num_workers: int = 0,
        lr_scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None,
        patience: int | None = None,
        val_interval: int = 1,
        out_dir: str | Path | None = None,
        history_dir: str | Path | None = None,
        run_info: Mapping[str, Any] | None = None,
        max_epochs: int | None = None,
        det_masks: bool = False,
        seed: int = 0,
        amp: bool = False,
        channels_last: bool = False,
        distributed: bool = False,
        train_handlers: Sequence | None = None,
        ema_momentum: float | None = None,
        **kwargs: Any,
    ) -> None:
        device = torch.device(device)
        if ema_momentum is not None and (
            isinstance(ema_momentum, bool) or not isinstance(ema_momentum, (int, float)) or not 0 <= ema_momentum < 1
        ):
            raise ConfigError(f"ema_momentum must be in [0, 1) (None or 0: no weight average), got {ema_momentum!r}")
        net_tasks = getattr(unwrap(network), "tasks", None)
        self.stages: list[Stage] = build_plan(stages, epochs=epochs, tasks=net_tasks)
        if max_epochs is not None:
            _cap_epochs(self.stages, int(max_epochs))
        self.train_dataset = train_dataset
        self.batch_size = int(batch_size)
        self.sampler_name = sampler
        self.num_workers = int(num_workers)
        self.distributed = distributed
        self.generator = torch.Generator().manual_seed(int(seed))
        self.evaluator = evaluator
        self.lr_scheduler = lr_scheduler
        self.patience = patience
        self.val_interval = max(1, int(val_interval))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history_dir = Path(history_dir) if history_dir is not None else self.out_dir
        self.run_info = dict(run_info or {})
        self.task_loss = TaskLossFunction(loss_function)
        self.multitask_loss = loss_function
        self.active_stage: Stage | None = None
        self.stage_state: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.best_weights: dict[str, dict[str, torch.Tensor]] = {}
        self.plan_state = _PlanState(self)
        self._resumed = False
        self._initial_weights = copy.deepcopy(unwrap(network).state_dict())
        self._base_lrs = [g["lr"] for g in optimizer.param_groups]
        self._loaders: dict[str, DataLoader] = {}
        self._prepare = MultiTaskPrepareBatch(self.stages[0].tasks, with_targets=True, det_masks=det_masks,
                                              channels_last=channels_last)
        use_cuda = device.type == "cuda"
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        first = self._loader(self.stages[0])
        super().__init__(
            device=device,
            max_epochs=sum(s.epochs for s in self.stages),
            train_data_loader=first,
            network=network,
            optimizer=optimizer,
            loss_function=self.task_loss,
            prepare_batch=self._prepare,
            amp=amp and use_cuda,
            train_handlers=train_handlers,
            decollate=False,
            **kwargs,
        )
        # before any other handler, so the data and tasks of the epoch are set first
        self.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._record_task_losses)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        self.ema: EMAHandler | None = None
        if ema_momentum:
            self.ema = EMAHandler(unwrap(network), momentum=float(ema_momentum))
            self.ema.attach(self, name="ema_momentum")

    # ----------------------------------------------------------------------------------------------- stages
    def stage_at(self, epoch: int) -> Stage:
        """The stage that trains epoch ``epoch`` (1-based)."""
        end = 0
        for stage in self.stages:
            end += stage.epochs
            if epoch <= end:
                return stage
        return self.stages[-1]

    def stage_bounds(self, stage: Stage) -> tuple[int, int]:
        """First and last epoch (1-based, inclusive) of a stage."""
        start = 1
        for s in self.stages:
            if s is stage:
                return start, start + s.epochs - 1
            start += s.epochs
        raise KeyError(stage.name)

    def _loader(self, stage: Stage) -> DataLoader:
        if stage.name not in self._loaders:
            self._loaders[stage.name] = stage_loader(
                self.train_dataset,
                stage.primary_tasks,
                self.batch_size,
                sampler=self.sampler_name,
                num_workers=self.num_workers,
                generator=self.generator,
                distributed=self.distributed,
            )
        return self._loaders[stage.name]

    def _epoch_started(self, engine: MultiTaskTrainer) -> None:
        if self._resumed:  # CheckpointLoader restores the constructed max_epochs; early stops shortened it
            engine.state.max_epochs = sum(s.epochs for s in self.stages)
        stage = self.stage_at(engine.state.epoch)
        if stage is not self.active_stage or self._resumed:
            self._enter_stage(stage, fresh_start=not (self._resumed and stage is self.active_stage))
            self._resumed = False
        loader = self._loaders[stage.name]
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(engine.state.epoch)

    def _enter_stage(self, stage: Stage, fresh_start: bool) -> None:
        previous = self.active_stage
        self.active_stage = stage
        network = unwrap(self.network)
        if fresh_start:
            if stage.init == "fresh":
                network.load_state_dict(self._initial_weights)
            elif previous is not None and previous.name in self.best_weights:
                network.load_state_dict(self.best_weights[previous.name])
            self.optimizer.state.clear()
            if self.ema is not None:
                self.ema.ema_model.load_state_dict(network.state_dict())
            scale = stage.lr / self._base_lrs[0] if stage.lr is not None else 1.0  # keeps the groups' ratios
            for group, lr in zip(self.optimizer.param_groups, self._base_lrs):
                group["lr"] = lr * scale
            if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "_reset"):
                self.lr_scheduler._reset()
            self.stage_state[stage.name] = {"best": None, "best_epoch": None, "bad": 0}
            logger.info("stage %s: tasks %s, %d epochs, init %s, lr %g", stage.name, stage.tasks, stage.epochs, stage.init,
                        self.optimizer.param_groups[0]["lr"])
        encoder = getattr(network, "encoder", None)
        for name, param in network.named_parameters():
            param.requires_grad_(not (stage.freeze_encoder and encoder is not None and name.startswith("encoder.")))
        weighting = getattr(self.multitask_loss, "weighting", None)
        if stage.loss_weights and hasattr(weighting, "weights"):
            weighting.weights = dict(stage.loss_weights)
        self._prepare.tasks = stage.tasks
        loader = self._loader(stage)
        self.set_data(loader)
        self.state.epoch_length = len(loader)
        if self.evaluator is not None:
            self.evaluator.set_tasks(stage.tasks)

    def _record_task_losses(self, engine: MultiTaskTrainer) -> None:
        engine.state.output["task_losses"] = dict(self.task_loss.last)
        sums = engine.state.__dict__.setdefault("epoch_task_losses", {})
        for k, v in self.task_loss.last.items():
            sums.setdefault(k, []).append(v)

    # ----------------------------------------------------------------------------------------------- epochs
    def _epoch_completed(self, engine: MultiTaskTrainer) -> None:
        epoch = engine.state.epoch
        stage = self.active_stage
        assert stage is not None
        first, last = self.stage_bounds(stage)
        sums = engine.state.__dict__.pop("epoch_task_losses", {})
        row: dict[str, Any] = {
            "epoch": epoch,
            "stage": stage.name,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": {k: sum(v) / len(v) for k, v in sums.items()},
            "val": {},
        }
        validate = self.evaluator is not None and ((epoch - first + 1) % self.val_interval == 0 or epoch == last)
        state = self.stage_state.setdefault(stage.name, {"best": None, "best_epoch": None, "bad": 0})
        if validate:
            with self._averaged_weights():
                self.evaluator.run(epoch)
                row["val"] = self.evaluator.scalar_metrics()
                value = stage.key_value(row["val"])
                improved = not math.isnan(value) and (state["best"] is None or value > state["best"])
                if improved:
                    state.update(best=value, best_epoch=epoch, bad=0)
                    self._keep_best(stage)
            if not improved:
                state["bad"] += 1
            if self.lr_scheduler is not None and not math.isnan(value):
                self.lr_scheduler.step(value)
            if self.patience is not None and state["bad"] >= self.patience and epoch < last:
                self._end_stage_early(stage, epoch)
        elif self.evaluator is None:
            with self._averaged_weights():
                self._keep_best(stage)  # no validation: the last (averaged) weights are the stage's result
        self.history.append(row)
        self._write_history()

    @contextlib.contextmanager
    def _averaged_weights(self) -> Iterator[None]:
        """With ``ema_momentum``: the network holds the averaged weights inside the block, its own ones after it
        (copied in place, so the optimizer's parameters stay the same tensors)."""
        if self.ema is None:
            yield
            return
        network = unwrap(self.network)
        own = {k: v.detach().clone() for k, v in network.state_dict().items()}
        network.load_state_dict(self.ema.ema_model.state_dict())
        try:
            yield
        finally:
            network.load_state_dict(own)

    def _keep_best(self, stage: Stage) -> None:
        weights = {k: v.detach().cpu().clone() for k, v in unwrap(self.network).state_dict().items()}
        self.best_weights[stage.name] = weights
        if self.out_dir is not None and is_main_process():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save(weights, self.out_dir / f"best_{stage.name}.pt")

    def _end_stage_early(self, stage: Stage, epoch: int) -> None:
        first, last = self.stage_bounds(stage)
        skipped = last - epoch
        logger.info("stage %s: no improvement of %s in %d validations, ending it at epoch %d", stage.name, stage.key_metric, self.patience, epoch)
        stage.epochs -= skipped
        self.state.max_epochs -= skipped
        self.stage_state[stage.name]["stopped_early_at"] = epoch

    def _write_history(self) -> None:
        if self.history_dir is None or not is_main_process():
            return
        self.history_dir.mkdir(parents=True, exist_ok=True)
        record = {**self.run_info, "stages": [s.to_dict() for s in self.stages], "epochs": self.history}
        (self.history_dir / "metrics.json").write_text(json.dumps(record, indent=1, default=str))
        keys: list[str] = []
        for row in self.history:
            for k in [*(f"loss_{t}" for t in row["loss"]), *(f"val_{m}" for m in row["val"])]:
                if k not in keys:
                    keys.append(k)
        with open(self.history_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "stage", "lr", *keys])
            for row in self.history:
                flat = {**{f"loss_{t}": v for t, v in row["loss"].items()}, **{f"val_{m}": v for m, v in row["val"].items()}}
                writer.writerow([row["epoch"], row["stage"], row["lr"], *(flat.get(k, "") for k in keys)])

    def final_weights(self) -> dict[str, torch.Tensor]:
        """The result of the run: the last stage's best weights (its last weights when it never validated)."""
        for stage in reversed(self.stages):
            if stage.name in self.best_weights:
                return self.best_weights[stage.name]
        return unwrap(self.network).state_dict()

    @staticmethod
    def _is_done(state: Any) -> bool:
        # Ignite also ends a run once iteration >= epoch_length * max_epochs, which holds only when every epoch has the
        # same length; here each stage has its own (its loader's), so a stage with fewer batches per epoch after one
        # with more would end the run early. Done is by epochs (or max_iters) alone.
        by_iters = state.max_iters is not None and state.iteration >= state.max_iters
        return by_iters or (state.max_epochs is not None and state.epoch >= state.max_epochs)

    def run(self) -> None:  # type: ignore[override]
        super().run()
        if self.state.epoch >= self.state.max_epochs:
            network = unwrap(self.network)
            network.load_state_dict(self.final_weights())
            if self.out_dir is not None and is_main_process():
                self.out_dir.mkdir(parents=True, exist_ok=True)
                _atomic_save(network.state_dict(), self.out_dir / "model.pt")


def _cap_epochs(stages: Sequence[Stage], max_epochs: int) -> None:
    """Shorten the plan to ``max_epochs`` epochs in all: the stages past the cap get 0 epochs."""
    total = sum(s.epochs for s in stages)
    if not 0 < max_epochs <= total:
        plan = ", ".join(f"{s.name}: {s.epochs}" for s in stages)
        raise ConfigError(f"max_epochs {max_epochs}: expected 1..{total}, the epochs of the plan ({plan}); set epochs per stage instead")
    left = max_epochs
    for stage in stages:
        stage.epochs = min(stage.epochs, left)
        left -= stage.epochs


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: an interrupted save never leaves a broken file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


CHECKPOINT_PREFIX = "last"


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest resumable checkpoint in ``ckpt_dir`` (None when there is none)."""
    found = sorted(Path(ckpt_dir).glob(f"{CHECKPOINT_PREFIX}_*epoch=*.pt"), key=_checkpoint_epoch)
    return found[-1] if found else None


def _checkpoint_epoch(path: Path) -> tuple[int, float]:
    """Sort key of a checkpoint file: its epoch (``..._epoch=12.pt``), then its time."""
    digits = path.stem.rpartition("=")[2]
    return (int(digits) if digits.isdigit() else -1, path.stat().st_mtime)


def attach_checkpointing(trainer: MultiTaskTrainer, ckpt_dir: str | Path, resume: bool = False) -> Path | None:
    """Save everything a resume needs after every epoch; with ``resume``, load the last such checkpoint first.

    Saved: network, optimizer, LR scheduler, loss (learned task weights), the weight average (``ema_momentum``), the
    engine (epoch, iteration) and the plan state (stage epochs, active stage, bests, history). The two newest
    checkpoints are kept: Ignite removes the oldest before it writes the next, so with one kept a run killed while
    saving would have nothing left to resume from.

    Returns:
        the checkpoint resumed from, or None.

    Raises:
        ConfigError: ``resume`` without a checkpoint in ``ckpt_dir``; or checkpoints exist there and ``resume`` is
            False (a new run never overwrites an earlier one).
    """
    from ignite.handlers import Checkpoint, DiskSaver
    from monai.handlers import CheckpointLoader

    ckpt_dir = Path(ckpt_dir)
    save_dict: dict[str, Any] = {
        "network": trainer.network,
        "optimizer": trainer.optimizer,
        "loss": trainer.multitask_loss,
        "trainer": trainer,
        "plan": trainer.plan_state,
    }
    if trainer.lr_scheduler is not None:
        save_dict["lr_scheduler"] = trainer.lr_scheduler
    if trainer.ema is not None:
        save_dict["ema"] = trainer.ema.ema_model
    last = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if resume and last is None:
        raise ConfigError(f"--resume: no checkpoint to resume from in {ckpt_dir}")
    if not resume and last is not None:
        raise ConfigError(f"{ckpt_dir} already holds checkpoints ({last.name}): resume with --resume, or train into another folder")
    if resume:
        CheckpointLoader(load_path=str(last), load_dict=save_dict, map_location=trainer.state.device).attach(trainer)
    # Ignite's Checkpoint with an atomic DiskSaver rather than MONAI's CheckpointSaver: MONAI's writes in place
    # (atomic=False), so a run killed while saving left a truncated newest checkpoint that --resume then failed to
    # read. Here the file is written to a temporary name and renamed, so a checkpoint file is always complete.
    checkpoint = Checkpoint(
        to_save=save_dict,
        save_handler=DiskSaver(str(ckpt_dir), atomic=True, create_dir=True, require_empty=False),
        filename_prefix=CHECKPOINT_PREFIX,
        score_function=lambda engine: engine.state.epoch,
        score_name="epoch",
        n_saved=2,
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)  # Ignite's DiskSaver writes on rank 0 only
    return last

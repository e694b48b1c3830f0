"""Ignite handlers of the bundle workflows, and the pieces of distributed evaluation.

- :class:`ReportWriter` (evaluation): ``test_metrics.json`` and ``report.md`` (:func:`ctmtl.engines.report.write_report`)
  from a :class:`~ctmtl.engines.trainer.MultiTaskEvaluator` run, the training history and a few example slices.
- :class:`PredictionWriter` (inference): lesion masks as NIfTI on each entry's original grid, class probabilities
  and boxes as JSON.
- :class:`BatchShardSampler` and :class:`GatheredMetricAdapter` (distributed evaluation): batch ``k`` of the
  sequential order goes to rank ``k % world_size``; at the end of the run every rank gathers every rank's outputs and
  replays them in the single-process order, so every rank computes exactly the metrics one process would (the
  pixel-ROC subsample of the segmentation metrics depends on the batch order, so the order is kept, not only the set).

Every file is written by rank 0 only.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys as Keys
from torch.utils.data import Sampler

from ctmtl.constants import CLASS_NAMES, SHORT_TASKS
from ctmtl.engines.metrics import IgniteMetricAdapter
from ctmtl.engines.trainer import is_main_process, to_device
from ctmtl.errors import ConfigError

__all__ = ["BatchShardSampler", "GatheredMetricAdapter", "ReportWriter", "PredictionWriter", "jsonable"]

logger = logging.getLogger(__name__)

CPU = torch.device("cpu")


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def jsonable(value: Any) -> Any:
    """``value`` with tensors and numpy values as Python numbers / lists, and NaN / inf as ``None`` (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------- distributed evaluation


class BatchShardSampler(Sampler[list[int]]):
    """Whole batches of the sequential order dealt round robin: batch ``k`` goes to rank ``k % num_replicas``.

    Use as a ``DataLoader`` ``batch_sampler`` (no ``batch_size`` / ``shuffle`` then). Nothing is padded or repeated,
    unlike ``DistributedSampler``; with :class:`GatheredMetricAdapter` the metrics equal the single-process ones.

    Args:
        dataset: the data set (or its length).
        batch_size: samples per batch, as a single process would batch them.
        num_replicas, rank: default from the initialised process group (1 and 0 without one).

    Raises:
        ConfigError: fewer batches than processes (a process would have nothing to evaluate).
    """

    def __init__(self, dataset: Any, batch_size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        own_rank, world = _world()
        self.size = dataset if isinstance(dataset, int) else len(dataset)
        self.batch_size = int(batch_size)
        self.num_replicas = int(num_replicas if num_replicas is not None else world)
        self.rank = int(rank if rank is not None else own_rank)
        num_batches = math.ceil(self.size / self.batch_size)
        if num_batches < self.num_replicas:
            raise ConfigError(
                f"evaluation data of {self.size} samples makes {num_batches} batches of {self.batch_size}, fewer than the "
                f"{self.num_replicas} processes; use a smaller batch_size or fewer processes"
            )
        self.num_batches = num_batches

    def __iter__(self):
        for k in range(self.rank, self.num_batches, self.num_replicas):
            start = k * self.batch_size
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.num_replicas))


class GatheredMetricAdapter(IgniteMetricAdapter):
    """:class:`~ctmtl.engines.metrics.IgniteMetricAdapter` for distributed evaluation.

    ``update`` keeps each batch's network output and batch on the CPU; ``compute`` gathers those of every process
    (``all_gather_object``) and feeds them to the accumulators in the single-process order, assuming the batches
    were dealt by :class:`BatchShardSampler`. Every rank then holds the same, complete accumulators (ROC curves
    included). Memory: the outputs of this rank's share of the split, until the end of the run.
    Without a process group it behaves like the plain adapter.
    """

    def reset(self) -> None:
        super().reset()
        self._held: list[tuple[Any, Any]] = []

    def update(self, output: Sequence[Any]) -> None:
        pred, batch = output
        self._held.append((to_device(pred, CPU), to_device(batch, CPU)))

    def compute(self) -> dict[str, Any]:
        _, world = _world()
        parts: list[Any] = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(parts, self._held)
        else:
            parts = [self._held]
        self._held = []
        self.metrics.reset()
        for i in range(max(len(p) for p in parts)):
            for part in parts:  # rank r's i-th batch is batch i * world + r of the sequential order
                if i < len(part):
                    self.metrics.update(*part[i])
        return self.metrics.compute()


# --------------------------------------------------------------------------------------------- evaluation


def _title(meta: Mapping[str, Any]) -> str:
    entry = str(meta.get("entry_id", "?"))
    entry = entry if len(entry) <= 30 else entry[:27] + "..."
    return f"{entry} #{meta.get('slice', 0)}"


def _seg_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``C x H x W`` logits -> ``H x W`` labels (sigmoid >= threshold for one channel, argmax otherwise)."""
    if logits.shape[0] == 1:
        return (torch.sigmoid(logits[0].float()) >= threshold).long()
    return logits.argmax(0)


class ReportWriter:
    """Writes the evaluation of a :class:`~ctmtl.engines.trainer.MultiTaskEvaluator` run when it completes.

    Files in ``output_dir``: ``test_metrics.json`` (every metric of :class:`~ctmtl.engines.metrics.MultiTaskMetrics`,
    flat as ``compute()`` returns them, NaN as ``null``; beside them ``split``, ``tasks``, ``notes`` (why a value is
    NaN) and the ``info`` entries, none of which starts with a task prefix) and ``report.md`` with its PNG plots
    (training history from ``history_file``, test metrics, ROC curves, example slices with the ground truth and the
    predicted masks and boxes).

    Args:
        output_dir: folder of the files.
        history_file: the training ``metrics.json`` (its ``epochs`` are the report's history); missing: no history.
        class_names: diagnosis classes in label order.
        split: name of the evaluated split, for the report.
        info: further entries of ``test_metrics.json`` (model file, manifests ...), also listed in the report.
        num_examples: example slices drawn per figure (masks and boxes).
        seg_threshold: lesion probability cut-off of the drawn masks (one-channel head).
        score_threshold: detection score cut-off of the drawn boxes.
        title: first heading of the report.
    """

    def __init__(
        self,
        output_dir: str | Path,
        history_file: str | Path | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        split: str = "test",
        info: Mapping[str, Any] | None = None,
        num_examples: int = 8,
        seg_threshold: float = 0.5,
        score_threshold: float = 0.5,
        title: str = "chest_ct_multitask evaluation",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.history_file = Path(history_file) if history_file is not None else None
        self.class_names = tuple(class_names)
        self.split = split
        self.info = dict(info or {})
        self.num_examples = int(num_examples)
        self.seg_threshold = float(seg_threshold)
        self.score_threshold = float(score_threshold)
        self.title = title
        self.examples: list[dict[str, Any]] = []
        self._counts: dict[Any, int] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        # COMPLETED, not EPOCH_COMPLETED: the metrics are in engine.state.metrics by then
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.examples = []
        self._counts = {}

    def _wants(self, task: str, source: str) -> bool:
        # half of a figure at most from one data set, so that a merged split shows more than its first source
        return (self._counts.get(task, 0) < self.num_examples
                and self._counts.get((task, source), 0) < max(1, self.num_examples // 2))

    def _collect(self, engine: Engine) -> None:
        """Keep up to ``num_examples`` slices labelled for segmentation and as many for detection."""
        if not is_main_process():
            return
        pred, batch = engine.state.output[Keys.PRED], engine.state.output[Keys.LABEL]
        for i, meta in enumerate(batch["meta"]):
            source = str(meta.get("source"))
            wanted = [t for t in ("seg", "det") if t in pred and bool(batch["has"][t][i]) and self._wants(t, source)]
            if not wanted:
                continue
            example: dict[str, Any] = {"image": batch["image"][i, 0].detach().cpu(), "title": _title(meta)}
            if "seg" in wanted:
                example["mask"] = batch["mask"][i, 0].detach().cpu()
                example["pred_mask"] = _seg_labels(pred["seg"][i].detach().cpu(), self.seg_threshold)
            if "det" in wanted:
                det = pred["det"][i]
                keep = det["scores"] >= self.score_threshold
                example["boxes"] = batch["boxes"][i].detach().cpu()
                example["pred_boxes"] = det["boxes"][keep].detach().cpu()
                example["pred_scores"] = det["scores"][keep].detach().cpu()
            for key in (*wanted, *((t, source) for t in wanted)):
                self._counts[key] = self._counts.get(key, 0) + 1
            self.examples.append(example)

    def _write(self, engine: Engine) -> None:
        if not is_main_process():
            return
        adapter = getattr(engine, "metric", None)
        accumulators = getattr(adapter, "metrics", None)
        metrics = accumulators.compute() if accumulators is not None else dict(engine.state.metrics)
        notes = list(getattr(accumulators, "notes", []))
        roc = accumulators.roc_curves() if accumulators is not None else {}
        tasks = list(getattr(engine, "tasks", [t for t in SHORT_TASKS if any(k.startswith(f"{t}_") for k in metrics)]))
        _write_json(self.output_dir / "test_metrics.json",
                    {**metrics, "split": self.split, "tasks": tasks, "notes": notes, **self.info})
        record: dict[str, Any] = {}
        if self.history_file is not None and self.history_file.is_file():
            record = json.loads(self.history_file.read_text())
        history = record.get("epochs", [])
        lines = [f"- split: {self.split}; tasks: {', '.join(tasks)}"]
        for key, value in jsonable(self.info).items():
            lines.append(f"- {key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
        trained_on = [m.get("name") or m.get("path") for m in record.get("data", {}).get("manifests", [])]
        if trained_on:
            lines.append(f"- trained on: {', '.join(map(str, trained_on))} ({self.history_file})")
        elif self.history_file is not None and not history:
            lines.append(f"- no training history at {self.history_file}")
        lines += [f"- note: {note}" for note in notes]
        path = self.output_dir / "report.md"
        from ctmtl.engines.report import write_report

        write_report(self.output_dir, history=history, test_metrics=metrics, roc_data=roc, examples=self.examples,
                     title=self.title, extra_lines=lines, class_names=self.class_names)
        logger.info("evaluation written to %s and %s", self.output_dir / "test_metrics.json", path)


# ---------------------------------------------------------------------------------------------- inference


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "entry"


class PredictionWriter:
    """Writes an inference run's predictions, entry by entry (batches in data set order, as ``SliceDataset`` lists
    each entry's slices together).

    In ``output_dir``:

    - ``<entry>_seg.nii.gz`` per entry with a segmentation output: the lesion labels (uint8; 0/1 for a one-channel
      head, argmax labels otherwise) on the file's own voxel grid and affine (:func:`ctmtl.data.pipeline.assemble_volume`;
      a 2D image gives ``H x W x 1``), after the ``inference_post`` chain (activation, threshold);
    - ``predictions.json``: per entry its file, mask file and, per slice, the class probabilities and the boxes
      with score >= ``score_threshold`` (``box``: xyxy pixels of the stored slice; ``box_grid``: on the network's
      input grid), with ``class_names`` and ``image_size``.

    Args:
        output_dir: folder of the files.
        class_names: diagnosis classes in label order.
        det_class_names: names of detection labels 1, 2, ...
        seg_threshold: lesion probability cut-off (one-channel head).
        score_threshold: boxes with a lower score are left out.
        image_size: the network's input size, recorded in ``predictions.json``.
        chain_dirs: folders searched first for the ``inference_post`` chain (a trained bundle's ``chains/``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str] = CLASS_NAMES,
        det_class_names: Sequence[str] = ("lesion",),
        seg_threshold: float = 0.5,
        score_threshold: float = 0.5,
        image_size: Sequence[int] | None = None,
        chain_dirs: Sequence[str | Path] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = tuple(class_names)
        self.det_class_names = tuple(det_class_names)
        self.seg_threshold = float(seg_threshold)
        self.score_threshold = float(score_threshold)
        self.image_size = list(image_size) if image_size is not None else None
        self.chain_dirs = [Path(d) for d in (chain_dirs or [])]
        self._post: dict[bool, Any] = {}
        self._reset(None)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _reset(self, engine: Engine | None) -> None:
        self.entries: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._key: tuple | None = None
        self._slices: list[tuple[torch.Tensor, Mapping]] = []

    def _post_chain(self, multiclass: bool):
        if multiclass not in self._post:
            from ctmtl.data.chains import load_chain

            overrides = {"multiclass_seg": multiclass, "seg_threshold": self.seg_threshold, "invert": False}
            self._post[multiclass] = load_chain("inference_post", overrides, search_dirs=self.chain_dirs)
        return self._post[multiclass]

    def _collect(self, engine: Engine) -> None:
        from ctmtl.inference.boxes import invert_boxes

        pred, batch = engine.state.output[Keys.PRED], engine.state.output[Keys.LABEL]
        for i, meta in enumerate(batch["meta"]):
            key = (meta.get("manifest"), meta.get("entry_id"))
            if key != self._key:
                self._flush()
                self._key = key
                files = meta.get("files") or [[None]]
                self.entries.append({"entry_id": meta.get("entry_id"), "manifest": meta.get("manifest"),
                                     "image": files[0][0], "split": meta.get("split"), "slices": []})
            sample: dict[str, Any] = {"meta": meta}
            for task in ("class", "seg"):
                if task in pred:
                    sample[task] = pred[task][i].detach().float().cpu()
            if "seg" in sample:
                sample = self._post_chain(sample["seg"].shape[0] > 1)(sample)
            elif "class" in sample:
                sample["class"] = torch.softmax(sample["class"], dim=0)
            record: dict[str, Any] = {"slice": int(meta.get("slice") or 0)}
            if "class" in sample:
                probs = [float(p) for p in sample["class"]]
                record["class_probabilities"] = dict(zip(self.class_names, probs))
                record["class"] = self.class_names[int(np.argmax(probs))]
            if "seg" in sample:
                self._slices.append((torch.as_tensor(sample["seg"]).to(torch.uint8), meta))
            if "det" in pred:
                det = pred["det"][i]
                keep = torch.nonzero(det["scores"] >= self.score_threshold).reshape(-1).cpu()
                grid = det["boxes"].detach().cpu()[keep]
                stored, kept = invert_boxes(grid, meta)
                scores, labels = det["scores"].detach().cpu()[keep][kept], det["labels"].detach().cpu()[keep][kept]
                record["boxes"] = [
                    {"box": [round(float(v), 2) for v in box], "box_grid": [round(float(v), 2) for v in grid[k]],
                     "score": float(score), "label": self._det_name(int(label))}
                    for box, k, score, label in zip(stored, kept.tolist(), scores, labels)
                ]
            self.entries[-1]["slices"].append(record)

    def _det_name(self, label: int) -> str:
        return self.det_class_names[label - 1] if 0 < label <= len(self.det_class_names) else str(label)

    def _flush(self) -> None:
        """Write the lesion mask of the entry whose slices were collected last."""
        if not self._slices or not is_main_process():
            self._slices = []
            return
        from ctmtl.data.pipeline import assemble_volume, save_volume

        name = _safe_name(str(self.entries[-1]["entry_id"]))
        unique, n = name, 2
        while unique in self._names:
            unique, n = f"{name}-{n}", n + 1
        self._names.add(unique)
        volume = assemble_volume(self._slices, mode="nearest")
        path = save_volume(volume, self.output_dir / f"{unique}_seg.nii.gz")
        self.entries[-1]["mask"] = path.name
        self._slices = []

    def _finish(self, engine: Engine) -> None:
        self._flush()
        if not is_main_process():
            return
        path = _write_json(self.output_dir / "predictions.json", {
            "format": "ctmtl-bundle-predictions/1",
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "seg_threshold": self.seg_threshold,
            "score_threshold": self.score_threshold,
            "entries": self.entries,
        })
        logger.info("predictions of %d entries written to %s", len(self.entries), path.parent)

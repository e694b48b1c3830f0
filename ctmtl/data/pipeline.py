"""The slice pipeline: manifests -> cached 2D multi-task samples -> batches, and predictions back to the files.

:class:`SliceDataset` turns the entries of one or more manifests into per-slice samples (the per-sample
dictionary of ``docs/architecture.md``). Each entry goes through *its own* preprocessing chain (entry
``transforms``, else the manifest header's, else its kind's default; see :mod:`ctmtl.data.chains`), which loads
the volume once, converts it and splits it into slices. That deterministic part runs once, when the dataset is
built, in the main process, and its output is cached (in memory with MONAI's ``CacheDataset``, or also on
disk with ``PersistentDataset``); the random part (the ``train_augment`` chain) runs on each access, after the
cache. So a bad file fails at construction with one error naming the manifest and the entry, never inside a
DataLoader worker, and epochs after the first never touch the disk.

:func:`multitask_collate` batches samples exactly per the batch contract (missing labels zero-filled, with
``has`` masks), :func:`slice_loader` wraps it in a MONAI ``DataLoader``, and :func:`invert_prediction` /
:func:`assemble_volume` put predictions back onto the original slice / volume geometry (shape and affine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, Transform

from ctmtl.constants import SHORT_TASKS, TASKS
from ctmtl.data.chains import Chain, load_chain, manifest_chains
from ctmtl.data.manifest import Manifest, entry_label, load_manifest
from ctmtl.errors import ChainError, CtmtlError, DataError
from ctmtl.transforms.geometry import invert_geometry

__all__ = [
    "CACHE_MODES",
    "entry_request",
    "EntryChains",
    "check_sample",
    "SliceDataset",
    "multitask_collate",
    "slice_loader",
    "invert_prediction",
    "assemble_volume",
    "save_volume",
    "torch_threads",
]

#: ``memory``: cache in RAM (built at construction); ``disk``: also persist to ``cache_dir`` (reused by later runs);
#: ``none``: re-run the chain for every access (reads the file once per slice; for comparison and huge data)
CACHE_MODES: tuple[str, ...] = ("memory", "disk", "none")


# ------------------------------------------------------------------------------------------- requests


def _stamp(path: Path) -> list:
    """Size and modification time of a file or folder: part of the disk-cache key, so an edited file is re-read."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def entry_request(manifest: Manifest, index: int, chain: str | Chain | None = None) -> dict:
    """The load request of one manifest entry: the input of its chain (``docs/architecture.md``, Chains).

    Paths are resolved against the manifest's folder. Labels are passed when the entry has them (the chain's
    ``RecordTasksd`` removes those of tasks the entry does not list); ``meta`` carries the entry's identity and
    what the sample's ``meta`` must report (``entry_id``, ``manifest``, ``source``, ``chain``, ``split``), plus
    ``kind``, ``patient``, ``tasks`` and the manifest's ``classes``.
    """
    entry = manifest.entries[index]
    name = chain.name if isinstance(chain, Chain) else (chain or manifest.chain_of(entry))
    image = manifest.resolve(entry["image"])
    request: dict[str, Any] = {"image": str(image)}
    stamps = [_stamp(image)]
    if "mask" in entry:
        mask = manifest.resolve(entry["mask"])
        request["mask"] = str(mask)
        stamps.append(_stamp(mask))
    if "class" in entry:
        request["class"] = entry["class"]
    if "boxes" in entry:
        request["boxes"] = [dict(b) for b in entry["boxes"]]
    if entry.get("slices") is not None and entry["kind"] != "slice":
        request["slices"] = list(entry["slices"])
    if "slice_uids" in entry:
        request["slice_uids"] = list(entry["slice_uids"])
    request["meta"] = {
        "entry_id": entry["id"],
        "entry_index": index,
        "manifest": str(manifest.path),
        "source": entry.get("dataset") or manifest.source,
        "chain": str(name),
        "split": entry["split"],
        "kind": entry["kind"],
        "patient": entry["patient"],
        "tasks": list(entry["tasks"]),
        "classes": manifest.classes,
        "files": stamps,
    }
    if isinstance(chain, Chain):
        request["meta"]["chain_digest"] = chain.digest
    return request


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (``None``: unchanged).

    Per-sample transforms of one 256 x 256 slice gain nothing from intra-op threads, and on a busy machine the
    threads' barriers cost up to 30x (MONAI ``RandAffined`` 3.5 ms with 1 thread, 100 ms with 2 on a loaded
    2-core CPU). DataLoader workers already run with 1 thread; this does the same for work done in the main
    process (``num_workers=0``, the cache build) and gives the training step its threads back afterwards.
    """
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _where(meta: Mapping) -> str:
    return f"manifest {meta.get('manifest')}, entry {meta.get('entry_index')} (id {meta.get('entry_id')!r}), chain {meta.get('chain')!r}"


def _root_cause(err: BaseException) -> BaseException:
    """The error under MONAI's ``RuntimeError("applying transform ...")`` wrappers: a ctmtl error if any, else
    the innermost one."""
    seen, current, innermost = set(), err, err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CtmtlError):
            return current
        innermost = current
        current = current.__cause__ or current.__context__
    return innermost


def _entry_error(meta: Mapping, err: BaseException) -> CtmtlError:
    cause = _root_cause(err)
    where = _where(meta)
    if isinstance(cause, CtmtlError):
        return type(cause)([f"{where}: {line}" for line in cause.problems])
    msg = " ".join(str(cause).split()) or type(cause).__name__
    return DataError(f"{where}: {type(cause).__name__}: {msg}")


def check_sample(sample: Any, where: str = "sample") -> None:
    """Check one chain output against the per-sample contract (``docs/architecture.md``).

    Raises:
        ChainError: one line naming ``where`` and the first key that is off (a chain that does not end in the
            contract: wrong shape, dtype, range, or missing ``tasks`` / ``meta``).
    """

    def fail(text: str) -> None:
        raise ChainError(f"{where}: chain output {text}")

    if not isinstance(sample, Mapping):
        fail(f"is a {type(sample).__name__}, expected a dict per slice")
    image = sample.get("image")
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 1 or image.dtype != torch.float32:
        desc = f"{getattr(image, 'dtype', type(image).__name__)} {tuple(getattr(image, 'shape', ()))}"
        fail(f"'image' is {desc}, expected float32 1 x H x W (does the chain slice and scale?)")
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -1e-6 and hi <= 1 + 1e-6):
        fail(f"'image' spans [{lo:.4g}, {hi:.4g}], expected [0, 1]")
    size = tuple(image.shape[-2:])
    if "mask" in sample:
        mask = sample["mask"]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.int64 or tuple(mask.shape) != (1, *size):
            fail(f"'mask' is {getattr(mask, 'dtype', '?')} {tuple(getattr(mask, 'shape', ()))}, expected int64 1 x {size[0]} x {size[1]}")
    if "class" in sample:
        cls = sample["class"]
        if not isinstance(cls, torch.Tensor) or cls.ndim != 0 or cls.dtype != torch.int64:
            fail(f"'class' is {cls!r}, expected an int64 scalar tensor (ClassToIndexd)")
    if "boxes" in sample:
        boxes, labels = sample["boxes"], sample.get("box_labels")
        if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.dtype != torch.float32:
            fail(f"'boxes' is {getattr(boxes, 'dtype', type(boxes).__name__)} {tuple(getattr(boxes, 'shape', ()))}, expected float32 N x 4 (BoxesToTensord)")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (boxes.shape[0],):
            fail(f"'box_labels' does not match 'boxes' (expected int64 of length {boxes.shape[0]})")
    if not isinstance(sample.get("tasks"), Mapping):
        fail("has no 'tasks' record (end the chain with RecordTasksd)")
    if not isinstance(sample.get("meta"), Mapping):
        fail("has no 'meta' dict")


class EntryChains(Transform):
    """Run each load request through the chain its ``meta["chain"]`` names; return the list of per-slice samples.

    Deterministic (a MONAI ``Transform``, not ``Randomizable``), so MONAI's cache datasets cache its output.
    Any failure becomes one :class:`~ctmtl.errors.CtmtlError` line naming the manifest, the entry and the chain;
    every output sample is checked against the contract (:func:`check_sample`).

    Args:
        chains: chain name -> :class:`~ctmtl.data.chains.Chain`; keyed by ``(manifest path, name)`` when the
            requests come from several manifests (the same name may resolve differently next to each).
    """

    def __init__(self, chains: Mapping[Any, Chain]) -> None:
        self.chains = dict(chains)

    def chain_for(self, meta: Mapping) -> Chain:
        key = (meta["manifest"], meta["chain"])
        return self.chains[key] if key in self.chains else self.chains[meta["chain"]]

    def __call__(self, request: Mapping) -> list[dict]:
        meta = request["meta"]
        chain = self.chain_for(meta)
        try:
            out = chain(dict(request, meta=dict(meta)))
        except Exception as err:  # noqa: BLE001 - every failure is reported against its entry
            raise _entry_error(meta, err) from None
        samples = out if isinstance(out, list) else [out]
        for sample in samples:
            check_sample(sample, _where(meta))
        return samples


def _fresh(sample: Mapping) -> dict:
    """A shallow copy of a cached sample with its own ``meta`` and ``tasks`` dicts (tensors are shared: MONAI's
    transforms return new tensors rather than writing into their inputs)."""
    out = dict(sample)
    out["meta"] = dict(sample["meta"])
    out["tasks"] = dict(sample["tasks"])
    return out


class SliceDataset(torch.utils.data.Dataset):
    """Per-slice multi-task samples from one or more manifests (each entry through its own chain), cached.

    Args:
        manifests: a manifest path or :class:`~ctmtl.data.manifest.Manifest`, or several (a merged data set).
        split: keep only the entries of this split (``train`` / ``val`` / ``test``); ``None``: all.
        overrides: chain parameter overrides for every chain (e.g. ``{"spatial_size": [128, 128]}``); parameters
            a chain does not declare are ignored.
        augment: random augmentation after the cache: a chain name or path (``"train_augment"``), a callable, or
            ``None`` (validation / test).
        cache: ``"memory"`` (default), ``"disk"`` (with ``cache_dir``; later runs start warm), or ``"none"``
            (the chain runs on every access; each entry is still run once at construction, to validate it and
            count its slices).
        cache_dir: folder of the disk cache.
        cache_workers: threads that build the cache (MONAI ``CacheDataset(num_workers=...)``).
        chain_dirs: extra folders searched for chain names.
        seed: random state of the augmentation chain (MONAI's ``DataLoader`` reseeds it per worker).
        progress: show MONAI's progress bar while caching.
        transform_threads: torch intra-op threads while this process runs transforms (building the cache,
            ``__getitem__``); ``1`` by default, as in DataLoader workers; ``None`` leaves the setting alone.

    Attributes:
        requests: the load request of every entry used.
        chains: ``(manifest path, chain name) -> Chain``.
        build_seconds: wall time of the construction (reading, preprocessing, caching).

    Raises:
        ManifestError: a manifest does not load.
        ChainError: a chain does not exist, does not parse, cannot be built, or its output breaks the contract;
            one line per problem naming the manifest and the chain.
        DataError: an entry cannot be read or processed (missing file, a volume without the slice axis, a NaN
            mask, an image of size 0...); one line naming the manifest, the entry and the chain.
    """

    def __init__(
        self,
        manifests: str | Path | Manifest | Sequence[str | Path | Manifest],
        split: str | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        augment: str | Path | Callable | None = None,
        cache: str = "memory",
        cache_dir: str | Path | None = None,
        cache_workers: int = 1,
        chain_dirs: Iterable[str | Path] | None = None,
        seed: int = 0,
        progress: bool = False,
        transform_threads: int | None = 1,
    ) -> None:
        start = time.perf_counter()
        self.transform_threads = transform_threads
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        if isinstance(manifests, (str, Path, Manifest)):
            manifests = [manifests]
        self.manifests = [m if isinstance(m, Manifest) else load_manifest(m) for m in manifests]
        self.split = split
        self.cache = cache
        chain_dirs = list(chain_dirs or [])

        self.chains: dict[tuple[str, str], Chain] = {}
        problems: list[str] = []
        for manifest in self.manifests:
            try:
                for name, chain in manifest_chains(manifest, overrides, chain_dirs).items():
                    self.chains[(str(manifest.path), name)] = chain
            except ChainError as err:
                problems += err.problems
        if problems:
            raise ChainError(problems)

        self.requests: list[dict] = []
        for manifest in self.manifests:
            for i, entry in enumerate(manifest.entries):
                if split is None or entry["split"] == split:
                    chain = self.chains[(str(manifest.path), manifest.chain_of(entry))]
                    self.requests.append(entry_request(manifest, i, chain))
        self.runner = EntryChains(self.chains)

        if augment is None or callable(augment):
            self.augment = augment
        else:
            self.augment = load_chain(augment, overrides, search_dirs=chain_dirs)
        if isinstance(self.augment, Compose):
            self.augment.set_random_state(seed=seed)

        # per slice: (request index, index into self._samples); with cache="none": (request index, slice index)
        self._index: list[tuple[int, int]] = []
        self._samples: list[dict] = []
        with torch_threads(transform_threads):
            if cache == "none":  # run each entry once to validate it and list its slices; keep nothing
                for r, request in enumerate(self.requests):
                    self._index += [(r, int(sample["meta"]["slice"])) for sample in self.runner(request)]
            else:
                for r, samples in enumerate(self._build(cache_dir, cache_workers, progress)):
                    for sample in samples:
                        self._index.append((r, len(self._samples)))
                        self._samples.append(sample)
        self.build_seconds = time.perf_counter() - start

    def _build(self, cache_dir: str | Path | None, workers: int, progress: bool) -> list[list[dict]]:
        """Run every entry's chain once, in this process (MONAI's cache datasets; threads), return the samples."""
        transform = Compose([self.runner])
        try:
            if self.cache == "disk":
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                # our own cache folder: trusted pickles (MetaTensors with their meta), hence weights_only=False
                ds = PersistentDataset(self.requests, transform, cache_dir=cache_dir, track_meta=True, weights_only=False)
                return [ds[i] for i in range(len(ds))]
            ds = CacheDataset(self.requests, transform, num_workers=workers, copy_cache=False, progress=progress)
            return [ds[i] for i in range(len(ds))]
        except CtmtlError:
            raise
        except Exception as err:  # noqa: BLE001 - MONAI wraps the entry's error; report that one
            cause = _root_cause(err)
            if isinstance(cause, CtmtlError):
                raise type(cause)(cause.problems) from None
            raise

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict:
        r, ref = self._index[index]
        if self.cache != "none" and self.augment is None:
            return _fresh(self._samples[ref])
        with torch_threads(self.transform_threads):
            if self.cache == "none":
                sample = self.runner(dict(self.requests[r], slice=ref))[0]
            else:
                sample = _fresh(self._samples[ref])
            if self.augment is not None:
                sample = self.augment(sample)
        return sample

    def sample_meta(self, index: int) -> dict:
        """The ``meta`` of slice ``index`` without building the sample."""
        r, ref = self._index[index]
        if self.cache == "none":
            return dict(self.requests[r]["meta"], slice=ref)
        return dict(self._samples[ref]["meta"])

    def sample_info(self, index: int) -> dict:
        """``{"tasks": set of short task names labelled in slice ``index``, "dataset": source}``, without building it.

        The trainer uses it to pick each stage's samples (:func:`ctmtl.engines.trainer.stage_loader`). Cached
        samples report their own ``tasks`` record; with ``cache="none"`` the entry's declared tasks stand in.
        """
        r, ref = self._index[index]
        if self.cache == "none":
            meta = self.requests[r]["meta"]
            tasks = {TASKS.get(t, t) for t in meta.get("tasks", ())}
        else:
            sample = self._samples[ref]
            meta = sample["meta"]
            tasks = {t for t, labelled in sample.get("tasks", {}).items() if labelled}
        return {"tasks": tasks, "dataset": meta.get("source", meta.get("manifest", ""))}

    def slices_per_entry(self) -> dict[str, int]:
        """``entry id -> number of slices`` (entries that yield no slice are absent)."""
        counts: dict[str, int] = {}
        for r, _ in self._index:
            key = self.requests[r]["meta"]["entry_id"]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def __repr__(self) -> str:
        names = sorted({name for _, name in self.chains})
        return f"SliceDataset({len(self)} slices from {len(self.requests)} entries, chains {names}, cache={self.cache!r})"


# ---------------------------------------------------------------------------------------------- batches


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)


def multitask_collate(samples: Sequence[Mapping]) -> dict[str, Any]:
    """Batch per-sample dicts exactly per the batch contract (``docs/architecture.md``).

    Returns:
        ``image`` float32 ``B x 1 x H x W``; ``mask`` int64 ``B x 1 x H x W`` (zeros where a sample has none);
        ``class`` int64 ``B`` (0 where none); ``boxes`` list of B float32 ``N_i x 4`` (``0 x 4`` where none);
        ``box_labels`` list of B int64 ``N_i``; ``has`` dict short task -> bool ``B`` (``recon`` all True);
        ``meta`` list of B dicts. Tensors are plain ``torch.Tensor`` (no MetaTensor batch metadata).

    Raises:
        DataError: samples of different image sizes (use one ``spatial_size``), naming two of them.
    """
    if not samples:
        raise ValueError("multitask_collate: empty batch")
    images = [_plain(s["image"]).float() for s in samples]
    size = tuple(images[0].shape)
    for s, img in zip(samples, images):
        if tuple(img.shape) != size:
            a, b = samples[0].get("meta", {}), s.get("meta", {})
            raise DataError(
                f"batch mixes image sizes {size} ({a.get('entry_id')!r} slice {a.get('slice')}) and {tuple(img.shape)} "
                f"({b.get('entry_id')!r} slice {b.get('slice')}); give every chain the same spatial_size"
            )
    masks, classes, boxes, labels = [], [], [], []
    has = {t: [] for t in SHORT_TASKS}
    for s in samples:
        tasks = s.get("tasks", {})
        masks.append(_plain(s["mask"]).long() if "mask" in s else torch.zeros(size, dtype=torch.int64))
        classes.append(int(s["class"]) if "class" in s else 0)
        if "boxes" in s:
            boxes.append(_plain(s["boxes"]).float().reshape(-1, 4))
            labels.append(_plain(s.get("box_labels", torch.ones(len(boxes[-1]), dtype=torch.int64))).long().reshape(-1))
        else:
            boxes.append(torch.zeros((0, 4), dtype=torch.float32))
            labels.append(torch.zeros((0,), dtype=torch.int64))
        for t in SHORT_TASKS:
            has[t].append(True if t == "recon" else bool(tasks.get(t, False)))
    return {
        "image": torch.stack(images),
        "mask": torch.stack(masks),
        "class": torch.tensor(classes, dtype=torch.int64),
        "boxes": boxes,
        "box_labels": labels,
        "has": {t: torch.tensor(v, dtype=torch.bool) for t, v in has.items()},
        "meta": [dict(s.get("meta", {})) for s in samples],
    }


def slice_loader(dataset: torch.utils.data.Dataset, batch_size: int = 8, shuffle: bool = False, num_workers: int = 0, **kwargs: Any):
    """A MONAI ``DataLoader`` with :func:`multitask_collate` (MONAI's loader reseeds random transforms per worker)."""
    from monai.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=multitask_collate, **kwargs)


# ---------------------------------------------------------------------------------------------- inverse


def invert_prediction(pred: Any, sample_meta: Mapping, mode: str = "nearest") -> MetaTensor:
    """Put a prediction on a sample's output grid back onto the slice as stored in its file.

    Args:
        pred: ``C x H x W`` (or ``H x W``) on the chain's output grid (e.g. ``1 x 256 x 256``).
        sample_meta: the sample's ``meta`` (``batch["meta"][i]``).
        mode: ``"nearest"`` for labels, ``"bilinear"`` for probabilities.

    Returns:
        MetaTensor ``C x H0 x W0`` on the file's own voxel axes (orientation, resize, pad/crop undone), with the
        4x4 affine of that slice in the file.
    """
    return invert_geometry(pred, sample_meta, mode=mode)


def assemble_volume(predictions: Iterable[tuple[Any, Mapping]], mode: str = "nearest", fill: float = 0) -> MetaTensor:
    """Assemble the per-slice predictions of one entry into a volume with the original shape and affine.

    Args:
        predictions: ``(pred, sample_meta)`` pairs of one entry, each ``pred`` ``C x H x W`` on the output grid.
        mode: interpolation of :func:`invert_prediction`.
        fill: value of the slices that have no prediction.

    Returns:
        MetaTensor ``C x H0 x W0 x D0`` (the file's voxel axes) with the file's affine.

    Raises:
        DataError: no predictions, or predictions of different entries.
    """
    predictions = list(predictions)
    if not predictions:
        raise DataError("assemble_volume: no predictions")
    first = predictions[0][1]
    volume = None
    for pred, meta in predictions:
        if (meta.get("manifest"), meta.get("entry_id")) != (first.get("manifest"), first.get("entry_id")):
            raise DataError(f"assemble_volume: predictions of entries {first.get('entry_id')!r} and {meta.get('entry_id')!r} mixed")
        inv = invert_prediction(pred, meta, mode).as_tensor()
        if volume is None:
            shape = list(meta["original_shape"])
            volume = torch.full((inv.shape[0], *shape[:2], shape[2] if len(shape) > 2 else 1), fill, dtype=inv.dtype)
        volume[..., int(meta.get("slice") or 0)] = inv
    affine = torch.as_tensor(np.asarray(first.get("affine", np.eye(4)), dtype=np.float64))
    return MetaTensor(volume, affine=affine, meta={"entry_id": first.get("entry_id")})


def save_volume(volume: MetaTensor, path: str | Path) -> Path:
    """Write an assembled ``1 x H x W x D`` volume as NIfTI with its affine (nibabel)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = volume.as_tensor().cpu().numpy() if isinstance(volume, MetaTensor) else np.asarray(volume)
    data = data[0] if data.ndim == 4 and data.shape[0] == 1 else data
    affine = volume.affine.detach().cpu().double().numpy() if isinstance(volume, MetaTensor) else np.eye(4)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path

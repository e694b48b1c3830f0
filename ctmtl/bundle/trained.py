"""A run's trained bundle: its configs (with the run's values), its weights, and the pieces that read them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ctmtl.errors import ConfigError, ModelError

__all__ = [
    "export_trained_bundle",
    "copy_chains",
    "load_weights",
    "SegmentationExport",
    "plan_stages",
    "plan_epochs",
    "add_log_file",
]

logger = logging.getLogger(__name__)

#: what a trained bundle root gets from the shipped bundle
BUNDLE_FILES: tuple[str, ...] = ("configs", "docs", "LICENSE")
#: the trained bundle's folder of preprocessing chains (its configs search it first: ``chain_dirs``)
CHAINS_DIR = "chains"


def _is_bundle_of(root: Path, source: Path) -> bool:
    """Whether ``root`` already holds a copy of the bundle at ``source`` (same metadata ``name``)."""
    try:
        theirs = json.loads((root / "configs" / "metadata.json").read_text()).get("name")
        ours = json.loads((source / "configs" / "metadata.json").read_text()).get("name")
    except (OSError, ValueError):
        return False
    return theirs is not None and theirs == ours


def export_trained_bundle(
    bundle_root: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    ckpt_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    source: str | Path | None = None,
    manifests: Iterable[str | Path] | str | Path | None = None,
) -> Path:
    """Make ``bundle_root`` a self-contained copy of the bundle for one run: ``configs/``, ``docs/`` and ``LICENSE``
    of ``source``, with each value of ``overrides`` written into every config file that defines that top-level key,
    and ``chains/``: every preprocessing chain the run can use (:func:`copy_chains`), which the configs search
    first (their ``chain_dirs``), so the run, and the bundle wherever it is used later, read these copies.

    Called by ``train.json`` before training, so that a run's folder is a trained bundle
    (``docs/architecture.md``, "Trained bundle") as soon as ``models/model.pt`` is written, and records the values
    the run used. Every rank checks the folder as it was, then rank 0 alone writes while the others wait (``torch.distributed``
    barriers before and after the writing).

    Args:
        bundle_root: the run's bundle folder (created).
        overrides: top-level config key -> value (JSON-serialisable), e.g. ``{"image_size": [128, 128]}``.
        resume: the run resumes an earlier one in ``bundle_root``: its weights and checkpoints may exist.
        ckpt_dir: folder of ``model.pt`` / ``best_<stage>.pt`` (default ``bundle_root/models``).
        checkpoint_dir: folder of the resumable checkpoints (checked when given).
        source: the bundle to copy (default the shipped one, :func:`ctmtl.bundle.bundle_path`); the chains of its
            own ``chains/`` (a trained bundle's) come before the installed ones. When it is ``bundle_root`` itself
            nothing is copied (training in place).
        manifests: the run's manifest files, whose chains named by path are copied into ``chains/`` too; default
            ``overrides["dataset_manifest"]`` (``train.json`` writes the resolved manifest paths there).

    Returns:
        ``bundle_root``.

    Raises:
        ConfigError: not resuming, and ``bundle_root`` already holds trained weights or checkpoints (never
            overwritten); a file to copy over exists in a folder that is not a copy of this bundle; a value that is
            not JSON-serialisable.
    """
    from ctmtl.bundle.paths import bundle_path
    from ctmtl.engines.trainer import is_main_process, latest_checkpoint

    root = Path(bundle_root).expanduser().resolve()
    source = Path(source).resolve() if source is not None else bundle_path()
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else root / "models"
    if not resume:
        found = [p for p in (ckpt / "model.pt", *sorted(ckpt.glob("best_*.pt"))) if p.is_file()]
        if checkpoint_dir is not None and Path(checkpoint_dir).is_dir():
            found += [p for p in [latest_checkpoint(checkpoint_dir)] if p is not None]
        if found:
            raise ConfigError(f"{found[0]}: exists; bundle_root {root} holds an earlier run (train into another "
                              "bundle_root, or continue it: ctmtl train|demo --resume, or --resume True with monai.bundle run)")
    if root == source:
        logger.info("training in the bundle folder %s itself: its configs are left as they are", root)
        return root
    targets = [root / name for name in BUNDLE_FILES]
    if any(t.exists() for t in targets) and not _is_bundle_of(root, source):
        clash = next(t for t in targets if t.exists())
        raise ConfigError(f"{clash}: exists, and {root} is not a copy of the bundle {source.name}; "
                          "give an empty folder or a run's bundle folder as bundle_root")
    values = dict(overrides or {})
    for key, value in values.items():
        try:
            json.dumps(value)
        except TypeError as err:
            raise ConfigError(f"trained bundle value {key!r}: not JSON-serialisable ({err})") from None
    if manifests is None:
        manifests = values.get("dataset_manifest")
    # every rank has checked the folder as it was before the run; only then may rank 0 write into it (else another
    # rank could read a half-copied configs/metadata.json and take the folder for a foreign one)
    _barrier()
    if is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        for name in BUNDLE_FILES:
            src = source / name
            if src.is_dir():
                shutil.copytree(src, root / name, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, root / name)
        for path in sorted((root / "configs").glob("*.json")):
            config = json.loads(path.read_text())
            changed = {k: v for k, v in values.items() if k in config and config[k] != v}
            if changed:
                config.update(changed)
                path.write_text(json.dumps(config, indent=2) + "\n")
        logger.info("bundle configs written to %s (%d values of this run)", root / "configs", len(values))
        copy_chains(root / CHAINS_DIR, _manifest_paths(manifests), search_dirs=[source / CHAINS_DIR])
    _barrier()  # the other ranks build their data sets from bundle_root/chains: wait until rank 0 has written it
    return root


def _barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _manifest_paths(manifests: Iterable[str | Path] | str | Path | None) -> list[Path]:
    """The manifest files among ``manifests`` (a path or a list; ids and other values are left out)."""
    if manifests is None:
        return []
    items = [manifests] if isinstance(manifests, (str, Path)) else list(manifests)
    return [Path(m) for m in items if isinstance(m, (str, Path)) and Path(m).is_file()]


def _path_chains(manifests: Sequence[Path]) -> list[Path]:
    """The files of the chains that the manifests' entries (or headers) name by path."""
    from ctmtl.data.chains import CHAIN_SUFFIXES, find_chain
    from ctmtl.data.manifest import load_manifest
    from ctmtl.errors import CtmtlError

    found: list[Path] = []
    for path in manifests:
        try:
            manifest = load_manifest(path)
            names = {manifest.chain_of(entry) for entry in manifest.entries}
        except (CtmtlError, KeyError, TypeError):
            continue  # the data set reports a bad manifest itself
        for name in sorted(names):
            if "/" in name or os.sep in name or name.endswith(CHAIN_SUFFIXES):
                try:
                    file = find_chain(name, base_dir=manifest.root)
                except CtmtlError:
                    continue  # likewise: the data set names the entry whose chain is missing
                if file not in found:
                    found.append(file)
    return found


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:8]


def copy_chains(
    dest: str | Path, manifests: Iterable[str | Path] = (), search_dirs: Iterable[str | Path] = ()
) -> dict[str, Path]:
    """Copy every chain a run can use into ``dest`` (a trained bundle's ``chains/``): each chain a bare name reaches
    (:func:`ctmtl.data.chains.available_chains`: ``search_dirs``, ``$CTMTL_CHAIN_PATH``, the shipped ones), and
    each chain the ``manifests`` name by path (under its file name, or ``<name>-<hash>`` where that name is
    another chain's).

    A chain is copied as it is, unless its ``_extends_`` would resolve to something else from ``dest`` (a base
    named by a relative path, or shadowed by another chain of that name): then its resolved configuration is
    written, as JSON. A file that ``dest`` already holds with other contents is kept, with a warning (a resumed
    run goes on with the chains it started with; a chain edited in a bundle stays edited): the configs search
    ``dest`` first, so the run uses it.

    Returns:
        chain file name -> the file it was copied from.
    """
    from ctmtl.data.chains import available_chains, chain_config
    from ctmtl.errors import ChainError

    dest = Path(dest)
    sources: dict[str, Path] = {path.name: path.resolve() for path in available_chains(list(search_dirs)).values()}
    taken = {Path(name).stem for name in sources}
    for path in _path_chains(list(manifests)):
        if path in sources.values():
            continue
        name = path.name
        if path.stem in taken:
            name = f"{path.stem}-{_digest(path.read_bytes())}{path.suffix}"
        taken.add(Path(name).stem)
        sources[name] = path
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".chains-", dir=dest.parent) as tmp:
        staged = Path(tmp)
        for name, src in sources.items():
            shutil.copy2(src, staged / name)
        flat: set[str] = set()
        for _ in range(len(sources)):  # flattening one chain can change what the chains extending it resolve to
            changed = False
            for name, src in sources.items():
                if name in flat:
                    continue
                try:
                    same = chain_config(staged / name)[0] == chain_config(src)[0]
                except ChainError:
                    same = False
                if not same:
                    try:
                        config = chain_config(src)[0]
                    except ChainError as err:
                        logger.warning("chain %s not copied into %s: %s", src, dest, err.problems[0])
                        (staged / name).unlink()
                        flat.add(name)
                        continue
                    target = staged / f"{Path(name).stem}.json"
                    (staged / name).unlink()
                    target.write_text(json.dumps(config, indent=2) + "\n")
                    flat.add(name)
                    changed = True
            if not changed:
                break
        dest.mkdir(exist_ok=True)
        kept: list[str] = []
        for file in sorted(staged.iterdir()):
            target = dest / file.name
            if target.is_file() and target.read_bytes() == file.read_bytes():
                continue
            if target.exists():
                kept.append(file.name)
                continue
            os.replace(file, target)  # atomic: a reader never sees half a chain
    if kept:
        logger.warning("%s: kept the bundle's own %s (other contents than the chain%s ctmtl finds now); the bundle "
                       "uses its own", dest, ", ".join(kept), "s" if len(kept) > 1 else "")
    logger.info("chains of the run in %s (%d)", dest, len(sources))
    return sources


def load_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a plain ``state_dict`` file (``models/model.pt``) into ``network`` strictly and return the network.

    Raises:
        ModelError: no such file, or weights that do not fit the network (one line, see
            :func:`ctmtl.inference.load_state_dict_strict`).
    """
    from ctmtl.inference import load_state_dict_strict

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no trained weights (has training finished? model.pt is written at its end)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_state_dict_strict(network, state, str(path))
    return network


class SegmentationExport(torch.nn.Module):
    """The segmentation path of a :class:`ctmtl.networks.MultiTaskNet` (encoder + ``seg`` head; image ``B1HW`` in
    [0, 1] -> lesion logits ``BCHW``) for ``python -m monai.bundle ckpt_export`` and ``verify_net_in_out``.

    It scripts as encoder + head only (:meth:`MultiTaskNet.segmentation_module`), but reads and loads the *whole*
    network's ``state_dict``, strictly, so ``models/model.pt`` loads into it as MONAI's export tools do it.
    """

    __jit_ignored_attributes__ = ["network"]

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        path = network.segmentation_module()
        self.encoder = path.encoder
        self.head = path.head
        self.__dict__["network"] = network  # not a submodule: the export holds the segmentation path only

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(image))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        from ctmtl.inference import load_state_dict_strict

        load_state_dict_strict(self.network, state_dict, "SegmentationExport")
        return torch.nn.modules.module._IncompatibleKeys([], [])


def plan_stages(
    plan: str | Sequence[Mapping[str, Any]],
    epochs: Any = 1,
    freeze_encoder: bool | Sequence[str] = False,
    tasks: Sequence[str] | None = None,
    stage_lr: Mapping[str, float] | None = None,
) -> list:
    """The stages of the bundle's ``plan`` value (:func:`ctmtl.engines.stages.build_plan`).

    Args:
        plan: a named plan (``staged``, ``joint``, ``class`` ...) or a list of stage dicts.
        epochs: epochs per stage of a named plan (number, list, or dict by stage name).
        freeze_encoder: keep the shared encoder fixed in every stage (True) or in the stages named (e.g.
            ``["sr", "dr"]``: train it on classification, then reuse it). A stage dict's own value wins.
        tasks: the heads the network has; stages without one of their primary tasks are left out.
        stage_lr: learning rate by stage name at the start of that stage (e.g. ``{"joint": 1e-4}``); the others
            start at the run's ``learning_rate``. A stage dict's own ``lr`` wins.

    Raises:
        ConfigError: a bad plan, or a stage named in ``freeze_encoder`` or ``stage_lr`` that the plan does not have.
    """
    from ctmtl.engines.stages import Stage, build_plan

    stages = build_plan(plan, epochs=epochs, tasks=tasks)
    all_names = {s.name for s in build_plan(plan, epochs=epochs)}  # before ``tasks`` drops any
    frozen = ({s.name for s in stages} if freeze_encoder else set()) if isinstance(freeze_encoder, bool) else set(freeze_encoder)
    stage_lr = dict(stage_lr or {})
    for key, named in (("freeze_encoder", frozen), ("stage_lr", set(stage_lr))):
        if named - all_names:
            raise ConfigError(f"{key} names stages {sorted(named - all_names)} that plan {plan!r} does not have ({sorted(all_names)})")
    # a stage dict's own value wins over the run-wide one
    own = {key: {d.get("name") for d in plan if isinstance(d, Mapping) and key in d} if not isinstance(plan, str) else set()
           for key in ("freeze_encoder", "lr")}
    out = []
    for s in stages:
        changes: dict[str, Any] = {}
        if s.name in frozen and s.name not in own["freeze_encoder"]:
            changes["freeze_encoder"] = True
        if s.name in stage_lr and s.name not in own["lr"]:
            changes["lr"] = stage_lr[s.name]
        out.append(Stage(**{**s.to_dict(), **changes}) if changes else s)
    return out


def plan_epochs(stages: Sequence[Any]) -> int:
    """Total epochs of a list of stages: the trainer's ``max_epochs``."""
    return sum(int(s.epochs) for s in stages)


def add_log_file(path: str | Path, level: int | str = logging.INFO) -> Path | None:
    """Also write the root logger to ``path`` (rank 0 only; once per file), with the console's format."""
    from ctmtl.engines.trainer import is_main_process

    if not is_main_process():
        return None
    path = Path(path).resolve()
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(level)
    console = next((h for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(console.formatter if console is not None else logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    root.addHandler(handler)
    return path

"""Where the bundle and its data are: the shipped bundle folder, the manifests a run reads, what it trained on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ctmtl
from ctmtl.constants import CLASS_NAMES, MANIFEST_FORMAT
from ctmtl.errors import ConfigError, ManifestError

__all__ = ["BUNDLE_NAME", "bundle_path", "config_file", "resolve_manifests", "prediction_manifests", "data_summary"]

BUNDLE_NAME = "chest_ct_multitask"


def bundle_path(name: str = BUNDLE_NAME) -> Path:
    """The shipped bundle folder: inside the installed package (``ctmtl/bundles/<name>``, wheel installs), else in the
    checkout (``<repo>/bundles/<name>``, source and editable installs).

    Raises:
        ConfigError: no such bundle in either place.
    """
    package = Path(ctmtl.__file__).resolve().parent
    candidates = [package / "bundles" / name, package.parent / "bundles" / name]
    for folder in candidates:
        if (folder / "configs").is_dir():
            return folder
    raise ConfigError(f"bundle {name!r} not found (looked in {candidates[0]} and {candidates[1]})")


def config_file(name: str, bundle: str | Path | None = None) -> Path:
    """``configs/<name>.json`` of ``bundle`` (default the shipped one), e.g. ``config_file("train")``."""
    path = Path(bundle) if bundle is not None else bundle_path()
    path = path / "configs" / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        raise ConfigError(f"{path}: no such bundle config")
    return path


def _is_id(value: str) -> bool:
    """A manifest id (``merged``, ``ucsd-ai4h``, ...), not a path: no folder part and no ``.json``."""
    return "/" not in value and "\\" not in value and not value.endswith(".json")


def _synthetic_or_empty(folder: Path) -> bool:
    return not folder.exists() or (folder / "synth.json").is_file() or (folder.is_dir() and not any(folder.iterdir()))


def resolve_manifests(value: str | Path | Sequence[str | Path], dataset_dir: str | Path | None = None) -> list[Path]:
    """The manifest files of a ``dataset_manifest`` value, checked to exist before any data is read.

    Args:
        value: a manifest path, a list of them, or ids resolved in ``dataset_dir/manifests/``: ``medseg``,
            ``ucsd-ai4h``, ``lung-pet-ct-dx``, ``merged`` (the synthetic set's files, see
            :data:`ctmtl.data.synthetic.MANIFEST_FILES`) or any ``<id>`` for ``<id>.json``.
        dataset_dir: folder of the data set the ids refer to. When one of the four synthetic ids is missing there
            and the folder is empty, missing or a synthetic data set, the synthetic data set is generated into it
            (:func:`ctmtl.data.synthetic.ensure_synthetic`).

    Returns:
        absolute manifest paths, in the order given.

    Raises:
        ManifestError: one line naming the first manifest that does not exist (or an empty value).
    """
    from ctmtl.data.synthetic import MANIFEST_FILES, ensure_synthetic

    values = [value] if isinstance(value, (str, Path)) else list(value or [])
    if not values:
        raise ManifestError("dataset_manifest: no manifest given (a path, a list of paths, or an id such as 'merged')")
    paths: list[Path] = []
    for item in values:
        text = str(item)
        if _is_id(text):
            if dataset_dir is None:
                raise ManifestError(f"dataset_manifest {text!r}: an id needs dataset_dir (or give the manifest's path)")
            folder = Path(dataset_dir).expanduser()
            path = folder / "manifests" / MANIFEST_FILES.get(text, f"{text}.json")
            if not path.is_file() and text in MANIFEST_FILES and _synthetic_or_empty(folder):
                ensure_synthetic(folder)
            where = f" (id {text!r} in dataset_dir {folder})"
        else:
            path, where = Path(text).expanduser(), ""
        if not path.is_file():
            raise ManifestError(f"dataset_manifest: manifest {path} not found{where}")
        paths.append(path.resolve())
    return paths


def prediction_manifests(
    input_paths: str | Path | Sequence[str | Path] | None,
    dataset_manifest: str | Path | Sequence[str | Path],
    dataset_dir: str | Path | None,
    output_dir: str | Path,
) -> list[Path]:
    """The manifests an inference run predicts on.

    Without ``input_paths``, those of ``dataset_manifest`` (:func:`resolve_manifests`). With them (NIfTI volumes,
    DICOM series folders, 2D images or folders of those; see :func:`ctmtl.inference.inputs.find_inputs`), a manifest
    listing each input once, in split ``test`` and without labels, written to ``output_dir/inputs_manifest.json``.

    Raises:
        ManifestError: a manifest of ``dataset_manifest`` does not exist.
        DataError: every input that cannot be read, one line each.
    """
    if not input_paths:
        return resolve_manifests(dataset_manifest, dataset_dir)
    from ctmtl.data.manifest import save_manifest
    from ctmtl.inference.inputs import find_inputs

    paths = [input_paths] if isinstance(input_paths, (str, Path)) else list(input_paths)
    entries = []
    for item in find_inputs(paths):
        entry = {"id": item.name, "kind": item.kind, "image": str(item.path), "patient": item.name, "split": "test",
                 "tasks": ["reconstruction"]}
        if item.chain:  # a chain path is relative to its manifest's folder; this manifest lives elsewhere
            path_like = "/" in item.chain or item.chain.endswith((".json", ".yaml", ".yml"))
            base = Path(item.chain_dir) if item.chain_dir is not None else Path.cwd()
            entry["transforms"] = str((base / item.chain).resolve()) if path_like else item.chain
        entries.append(entry)
    manifest = {"format": MANIFEST_FORMAT, "name": "inputs", "source": "folder", "classes": list(CLASS_NAMES),
                "created_by": f"ctmtl.bundle.prediction_manifests({[str(p) for p in paths]})", "entries": entries}
    out = Path(output_dir) / "inputs_manifest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_manifest(manifest, out, overwrite=True)
    return [out.resolve()]


def data_summary(manifests: Sequence[str | Path], **datasets: Any) -> dict[str, Any]:
    """What a run reads, for its ``metrics.json``: each manifest's path, name and source, and per split the slices
    per data set (the entries' ``dataset``, else the manifest's ``source``) and per task.

    Args:
        manifests: the manifest files.
        datasets: split name -> :class:`ctmtl.data.pipeline.SliceDataset` (``train=..., val=...``).
    """
    listed = []
    for path in manifests:
        data = json.loads(Path(path).read_text())
        listed.append({"path": str(Path(path).resolve()), "name": data.get("name"), "source": data.get("source")})
    splits: dict[str, Any] = {}
    for split, dataset in datasets.items():
        if dataset is None:
            continue
        by_source: dict[str, int] = {}
        by_task: dict[str, int] = {}
        for i in range(len(dataset)):
            info = dataset.sample_info(i)
            by_source[str(info["dataset"])] = by_source.get(str(info["dataset"]), 0) + 1
            for task in sorted(info["tasks"]):
                by_task[task] = by_task.get(task, 0) + 1
        splits[split] = {"slices": len(dataset), "datasets": by_source, "tasks": by_task}
    return {"manifests": listed, "splits": splits}


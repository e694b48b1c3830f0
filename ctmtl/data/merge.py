"""``ctmtl manifest merge``: several data sets' manifests into one multi-task training set.

Each entry of each input manifest is copied with:

* its paths rewritten relative to the merged file's folder;
* ``id`` and ``patient`` prefixed with the data set's name (``<name>/<id>``), so ids and patients of
  different data sets never collide, and ``dataset`` set to that name;
* an explicit ``transforms`` (its chain in its own manifest: entry, else header, else kind default), since
  the merged header has no single chain;
* ``tasks`` cut to those its labels support: classification needs a ``class`` among the merged classes,
  segmentation a ``mask``, detection ``boxes`` or a mask; reconstruction needs only the image. With
  ``tasks`` given, only those are kept.

Splits are kept. Classes: the inputs' classes, in :data:`ctmtl.constants.CLASS_NAMES` order first. Lesion
labels must agree where two inputs declare the same value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ctmtl.constants import CLASS_NAMES, MANIFEST_FORMAT, TASKS
from ctmtl.data.manifest import Manifest, load_manifest, save_manifest
from ctmtl.data.sources.common import ordered_tasks, relativize
from ctmtl.errors import ManifestError

__all__ = ["merge_manifests", "supported_tasks"]


def supported_tasks(entry: dict, classes: Iterable[str]) -> list[str]:
    """Tasks an entry's labels support (in canonical order)."""
    tasks = {"reconstruction"}
    if "class" in entry and entry["class"] in set(classes):
        tasks.add("classification")
    if "mask" in entry:
        tasks.add("segmentation")
    if entry.get("boxes") or "mask" in entry:
        tasks.add("detection")
    return ordered_tasks(tasks)


def merge_manifests(
    inputs: Sequence[str | Path | Manifest],
    out: str | Path,
    name: str = "merged",
    tasks: Iterable[str] | None = None,
    overwrite: bool = False,
    created_by: str = "",
) -> dict:
    """Merge manifests and write the result to ``out``.

    Args:
        inputs: manifest files (or loaded manifests); each is validated on load.
        out: the merged manifest file.
        name: the merged manifest's name.
        tasks: keep only these tasks (long names); ``None`` keeps every supported task.
        overwrite: replace an existing ``out``.

    Returns:
        the merged manifest (as written).

    Raises:
        ManifestError: fewer than one input, an input that does not load, two inputs with the same name,
            lesion labels that disagree, an unknown task, or ``out`` exists. With ``tasks`` given, entries left
            with none of them are dropped.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ManifestError(f"manifest {out}: exists (use --overwrite to replace it)")
    if not inputs:
        raise ManifestError("manifest merge: no input manifest")
    keep = None
    if tasks is not None:
        keep = set(tasks)
        unknown = sorted(keep - set(TASKS))
        if unknown:
            raise ManifestError(f"manifest merge: unknown tasks {unknown} (known: {', '.join(TASKS)})")
    manifests = [m if isinstance(m, Manifest) else load_manifest(m) for m in inputs]
    problems: list[str] = []
    names: dict[str, Path] = {}
    for m in manifests:
        if m.name in names:
            problems.append(f"manifest {m.path}: name {m.name!r} is also the name of {names[m.name]}; rename one (ids are prefixed with it)")
        names.setdefault(m.name, m.path)
    seen = {c for m in manifests for c in m.classes}
    classes = [c for c in CLASS_NAMES if c in seen] + sorted(seen - set(CLASS_NAMES))
    labels: dict[str, str] = {}
    label_from: dict[str, Path] = {}
    for m in manifests:
        for value, label in m.data.get("lesion_labels", {}).items():
            if value in labels and labels[value] != label:
                problems.append(f"manifest {m.path}: lesion label {value} is {label!r}, but {labels[value]!r} in {label_from[value]}")
            labels.setdefault(value, label)
            label_from.setdefault(value, m.path)
    if problems:
        raise ManifestError(problems)

    merged: dict = {"format": MANIFEST_FORMAT, "name": name, "source": "merged", "classes": classes}
    if labels:
        merged["lesion_labels"] = dict(sorted(labels.items(), key=lambda kv: int(kv[0])))
    if created_by:
        merged["created_by"] = created_by
    merged["description"] = "Merged from " + ", ".join(f"{m.name} ({m.source})" for m in manifests)
    merged["entries"] = []
    out_dir = out.resolve().parent
    for m in manifests:
        part = relativize({"entries": m.entries}, out_dir, base_dir=m.root)
        for i, (original, entry) in enumerate(zip(m.entries, part["entries"])):
            entry = dict(entry)
            entry["id"] = f"{m.name}/{original['id']}"
            entry["patient"] = f"{m.name}/{original['patient']}"
            entry["dataset"] = m.name
            entry["transforms"] = m.chain_of(original)
            entry_tasks = set(supported_tasks(entry, classes)) & set(original["tasks"])
            if keep is not None:
                entry_tasks &= keep
            if not entry_tasks and keep is not None:
                continue  # none of the kept tasks: the entry is left out
            if not entry_tasks:
                problems.append(f"manifest {m.path}, entry {i} (id {original['id']!r}): no task left after merging (tasks {original['tasks']})")
                continue
            entry["tasks"] = ordered_tasks(entry_tasks)
            merged["entries"].append(entry)
    if problems:
        raise ManifestError(problems)
    save_manifest(merged, out, overwrite=overwrite)
    return merged

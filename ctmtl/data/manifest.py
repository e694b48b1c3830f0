"""The ctmtl dataset manifest (``"format": "ctmtl-manifest/1"``): read, validate, write.

A manifest is a JSON file listing the entries of one data set (or of several, merged). Every path in it is
relative to the manifest file's folder, so a data set and its manifest move together. The format is
documented in ``docs/architecture.md`` and in ``ctmtl/schemas/manifest.schema.json``.

This module checks what can be checked without opening the images: the JSON schema, unique entry ids,
declared classes and tasks, boxes that are not degenerate, and that no patient is in two splits. Opening
every file (shape, geometry, label values) is :func:`ctmtl.data.check.check_manifest`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ctmtl.constants import MANIFEST_FORMAT, SPLITS, TASKS
from ctmtl.errors import ManifestError

__all__ = ["Manifest", "load_manifest", "save_manifest", "validate_manifest_dict", "manifest_schema", "entry_label"]


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    """The JSON schema of the manifest format, as shipped in the package."""
    text = resources.files("ctmtl.schemas").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


def entry_label(index: int, entry: dict) -> str:
    """How an entry is named in messages: ``entry 12 (id 'tr_im')``."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"entry {index} (id {ident!r})" if ident is not None else f"entry {index}"


def _schema_problems(data: Any, where: str) -> list[str]:
    import jsonschema  # monai[jsonschema]

    if isinstance(data, dict) and "format" in data and data["format"] != MANIFEST_FORMAT:
        return [f"{where}: unknown manifest format {data['format']!r} (this ctmtl reads {MANIFEST_FORMAT!r})"]
    validator = jsonschema.Draft202012Validator(manifest_schema())
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        path = list(err.absolute_path)
        if len(path) >= 2 and path[0] == "entries" and isinstance(path[1], int):
            entry = data["entries"][path[1]]
            field_path = ".".join(str(p) for p in path[2:]) or "entry"
            problems.append(f"{where}, {entry_label(path[1], entry)}: {field_path}: {err.message}")
        else:
            field_path = ".".join(str(p) for p in path) or "top level"
            problems.append(f"{where}: {field_path}: {err.message}")
    return problems


def validate_manifest_dict(data: Any, where: str = "manifest") -> list[str]:
    """Every problem of a manifest that shows without opening its files, one line each (empty: sound).

    Args:
        data: the parsed JSON.
        where: how the manifest is named in messages (its path).
    """
    problems = _schema_problems(data, where)
    if problems:
        return problems
    classes = set(data["classes"])
    seen_ids: dict[str, int] = {}
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for i, entry in enumerate(data["entries"]):
        name = f"{where}, {entry_label(i, entry)}"
        if entry["id"] in seen_ids:
            problems.append(f"{name}: duplicate id (also entry {seen_ids[entry['id']]})")
        seen_ids.setdefault(entry["id"], i)
        patient_splits[entry["patient"]].add(entry["split"])
        tasks = set(entry["tasks"])
        if "class" in entry and entry["class"] not in classes:
            problems.append(f"{name}: class {entry['class']!r} is not one of the declared classes {sorted(classes)}")
        if "classification" in tasks and "class" not in entry:
            problems.append(f"{name}: task classification needs a 'class'")
        if "segmentation" in tasks and "mask" not in entry:
            problems.append(f"{name}: task segmentation needs a 'mask'")
        if "detection" in tasks and "boxes" not in entry and "mask" not in entry:
            problems.append(f"{name}: task detection needs 'boxes' (or a mask to derive them from)")
        slices = entry.get("slices")
        if entry["kind"] == "slice" and slices not in (None, [0]):
            problems.append(f"{name}: a 2D entry (kind 'slice') has no slice list, got {slices}")
        for j, box in enumerate(entry.get("boxes", [])):
            x1, y1, x2, y2 = box["box"]
            if not (x2 > x1 and y2 > y1):
                problems.append(f"{name}: box {j} {box['box']} is degenerate (needs x2 > x1 and y2 > y1)")
            if min(x1, y1) < 0:
                problems.append(f"{name}: box {j} {box['box']} has a negative coordinate")
            if slices is not None and entry["kind"] != "slice" and box.get("slice") not in slices:
                problems.append(f"{name}: box {j} is on slice {box.get('slice')}, which is not in the entry's slices")
        if "slice_uids" in entry and slices is not None and slices and max(slices) >= len(entry["slice_uids"]):
            problems.append(f"{name}: slice {max(slices)} is beyond the {len(entry['slice_uids'])} slices of the series")
    for patient, splits in sorted(patient_splits.items()):
        if len(splits) > 1:
            order = [s for s in SPLITS if s in splits]
            problems.append(f"{where}: patient {patient!r} is in {len(splits)} splits ({', '.join(order)})")
    return problems


@dataclass
class Manifest:
    """A loaded, structurally valid manifest.

    Attributes:
        path: the manifest file.
        data: the parsed JSON (header and ``entries``).
    """

    path: Path
    data: dict = field(repr=False)

    @property
    def root(self) -> Path:
        """Folder that the entries' paths are relative to."""
        return self.path.parent

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def source(self) -> str:
        return self.data["source"]

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def entries(self) -> list[dict]:
        return self.data["entries"]

    def resolve(self, rel: str) -> Path:
        """Absolute path of a path written in the manifest."""
        return (self.root / rel).resolve()

    def chain_of(self, entry: dict) -> str:
        """Name (or path) of the preprocessing chain of an entry: its own, the header's, or the kind default."""
        from ctmtl.constants import DEFAULT_CHAINS

        return entry.get("transforms") or self.data.get("transforms") or DEFAULT_CHAINS[entry["kind"]]

    def split(self, split: str) -> list[dict]:
        """Entries of one split (``train``, ``val`` or ``test``)."""
        return [e for e in self.entries if e["split"] == split]

    def counts(self) -> dict[str, Any]:
        """Counts per split, class and task (entries, slices, lesion slices, boxes)."""
        out: dict[str, Any] = {"entries": len(self.entries), "splits": {}, "classes": {}, "tasks": {}}
        for split in SPLITS:
            entries = self.split(split)
            out["splits"][split] = {
                "entries": len(entries),
                "slices": sum(len(e.get("slices") or [0]) for e in entries),
                "lesion_slices": sum(len(e.get("lesion_slices", [])) for e in entries),
                "boxes": sum(len(e.get("boxes", [])) for e in entries),
                "patients": len({e["patient"] for e in entries}),
            }
        out["classes"] = dict(Counter(e["class"] for e in self.entries if "class" in e))
        out["tasks"] = {t: sum(t in e["tasks"] for e in self.entries) for t in TASKS}
        return out


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file.

    Raises:
        ManifestError: the file is missing, not JSON, or not a sound manifest; one line per problem,
            each naming the manifest and the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest {path}: not valid JSON ({err})") from None
    problems = validate_manifest_dict(data, where=f"manifest {path}")
    if problems:
        raise ManifestError(problems)
    return Manifest(path=path.resolve(), data=data)


def save_manifest(data: dict, path: str | Path, overwrite: bool = True) -> Path:
    """Validate and write a manifest (JSON, indented, keys in the documented order).

    Raises:
        ManifestError: the manifest is not sound (nothing is written), or ``path`` exists and
            ``overwrite`` is False.
    """
    path = Path(path)
    problems = validate_manifest_dict(data, where=f"manifest {path}")
    if problems:
        raise ManifestError(problems)
    if path.exists() and not overwrite:
        raise ManifestError(f"manifest {path}: exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path

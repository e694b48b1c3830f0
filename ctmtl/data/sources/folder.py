"""A generic folder of 2D slices with optional masks, the way MedSeg-derived slice exports are shared.

Layout::

    ROOT/Imgs/<n>.<ext>      images (any format PIL decodes; decoded by content)
    ROOT/GT/<n>.png          label masks (palette indices or grey values; 0 background, 1 ground-glass,
                             2 consolidation, 3 pleural effusion), optional per image

(``images/`` and ``masks/`` are accepted as folder names too.) One entry per image (``kind: slice``): tasks
segmentation, detection (boxes derived from the mask by the chain) and reconstruction when the mask exists,
reconstruction only otherwise; classification too when ``--class`` names the class of every image.
``lesion_slices`` is ``[0]`` when the mask holds a lesion. The builder reads every mask, so a mask whose size
differs from its image, or with a value outside the lesion labels, fails here.

No patient ids: each image is its own patient (``<stem>``), split with ``split_patients`` (seeded). Slices
of one patient may then fall in different splits; give such data official splits by other means.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ctmtl.constants import LESION_LABELS
from ctmtl.data.io import IMAGE_SUFFIXES, image_shape, read_mask_2d
from ctmtl.data.sources.common import BuildOptions, BuildResult, label_problems, manifest_header, ordered_tasks, split_patients
from ctmtl.errors import CtmtlError, DataError

__all__ = ["build_folder", "IMAGE_DIRS", "MASK_DIRS"]

IMAGE_DIRS: tuple[str, ...] = ("Imgs", "images", "imgs", "Images")
MASK_DIRS: tuple[str, ...] = ("GT", "masks", "gt", "Masks")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def build_folder(root: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build a manifest of a 2D slice folder (see the module docstring).

    Raises:
        DataError: no ``Imgs/`` folder or no image in it; an image or mask that does not read; a mask whose
            shape differs from its image or with values outside labels 0-3 (one line per problem).
    """
    options = options or BuildOptions()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    image_dir = _first_dir(root, IMAGE_DIRS)
    if image_dir is None:
        raise DataError(f"{root}: no Imgs/ folder (expected Imgs/<n>.<ext> and GT/<n>.png)")
    mask_dir = _first_dir(root, MASK_DIRS)
    images = sorted((p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    manifest = manifest_header(
        options.name or root.name,
        "folder",
        transforms="slice_8bit",
        created_by=options.created_by,
        description=f"2D slices from {root.name}/{image_dir.name} with masks from {mask_dir.name if mask_dir else 'nowhere'}/.",
        lesion_labels=True,
    )
    result = BuildResult(manifest)
    problems: list[str] = []
    masks = {}
    if mask_dir is not None:
        for p in mask_dir.iterdir():
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                masks.setdefault(p.stem, p)
    split_of = split_patients([p.stem for p in images], options.split_seed, options.val_fraction, options.test_fraction)
    declared = list(LESION_LABELS)
    without_mask = 0
    for path in images:
        mask_path = masks.get(path.stem)
        try:
            shape = image_shape(path, "slice")
            lesion = None
            if mask_path is not None:
                mask = read_mask_2d(mask_path)
                if mask.shape != shape:
                    raise DataError(f"{mask_path}: mask shape {mask.shape} does not match image {path.name} {shape}")
                bad = label_problems(np.unique(mask), declared)
                if bad:
                    raise DataError(f"{mask_path}: mask values {bad} are not lesion labels {declared}")
                lesion = bool(np.any(mask))
        except CtmtlError as err:
            problems.extend(err.problems)
            continue
        entry: dict = {"id": path.stem, "kind": "slice", "image": str(path.resolve())}
        tasks = {"reconstruction"}
        if mask_path is not None:
            entry["mask"] = str(mask_path.resolve())
            tasks |= {"segmentation", "detection"}
        else:
            without_mask += 1
        if options.class_name:
            entry["class"] = options.class_name
            tasks.add("classification")
        entry.update(patient=path.stem, split=split_of[path.stem])
        if lesion is not None:
            entry["lesion_slices"] = [0] if lesion else []
        entry["tasks"] = ordered_tasks(tasks)
        manifest["entries"].append(entry)
    if problems:
        raise DataError(problems)
    if without_mask:
        result.warnings.append(f"{image_dir}: {without_mask} images have no mask in {mask_dir or root / 'GT'}; they serve reconstruction only")
    ids = [e["id"] for e in manifest["entries"]]
    if len(set(ids)) != len(ids):
        raise DataError(f"{image_dir}: two images share a name stem (e.g. {next(i for i in ids if ids.count(i) > 1)!r}); rename one")
    return result

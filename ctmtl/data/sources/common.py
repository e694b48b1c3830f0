"""What every manifest builder shares: options, result, patient-level splits, the manifest header, paths."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmtl.constants import CLASS_NAMES, LESION_LABELS, MANIFEST_FORMAT, SPLITS, TASKS
from ctmtl.errors import DataError

__all__ = [
    "BuildOptions",
    "BuildResult",
    "split_patients",
    "block_splits",
    "manifest_header",
    "relativize",
    "lesion_slice_indices",
    "label_problems",
    "ordered_tasks",
    "PATH_KEYS",
    "DEFAULT_VAL_FRACTION",
    "DEFAULT_TEST_FRACTION",
]

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.2

#: entry fields that hold a path (relative to the manifest file); boxes may hold one in ``annotation``
PATH_KEYS: tuple[str, ...] = ("image", "mask", "lung_mask")


@dataclass
class BuildOptions:
    """Options of ``ctmtl manifest build``; each builder uses the ones that apply to its data set.

    Attributes:
        name: manifest name (default: the source name).
        split_seed: seed of the patient-level split where the data set has no official one.
        val_fraction, test_fraction: fractions of patients in val and test (same condition).
        class_name: class given to every entry (MedSeg, folder), which adds the classification task.
        skip_unmatched: Lung-PET-CT-Dx: warn about (instead of failing on) annotations whose
            SOPInstanceUID is in no series.
        created_by: command line recorded in the manifest.
    """

    name: str | None = None
    split_seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    class_name: str | None = None
    skip_unmatched: bool = False
    created_by: str = ""

    def __post_init__(self):
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise DataError(f"--{key.replace('_', '-')} is {value}, expected a fraction in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise DataError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} leave no training data (sum must be < 1)"
            )
        if self.class_name is not None and self.class_name not in CLASS_NAMES:
            raise DataError(f"--class {self.class_name!r} is not one of {list(CLASS_NAMES)}")


@dataclass
class BuildResult:
    """A built manifest (paths absolute until :func:`relativize`) and the warnings met on the way."""

    manifest: dict
    warnings: list[str] = field(default_factory=list)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """``(n_val, n_test)`` for ``n`` items: rounded fractions, at least one each when the fraction is > 0
    and ``n`` allows a train item as well."""
    n_val, n_test = _round_half_up(n * val_fraction), _round_half_up(n * test_fraction)
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_val + n_test >= n and (n_val or n_test):  # keep one for training
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_patients(
    patients: Iterable[str], seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = DEFAULT_TEST_FRACTION
) -> dict[str, str]:
    """Assign each patient to ``train``, ``val`` or ``test``, deterministically.

    The unique patient ids are sorted, permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to val (at least one each
    when the fraction is > 0 and there are >= 3 patients), the rest to train. Call it once per class to
    stratify.

    Returns:
        ``patient -> split``.
    """
    unique = sorted(set(patients))
    n = len(unique)
    n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[unique[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def block_splits(n: int, val_fraction: float, test_fraction: float) -> dict[str, range]:
    """Contiguous blocks of ``n`` stacked slices: train first, then val, then test (sizes as
    :func:`split_patients`). Used where slices of unknown patients are stacked in one volume (MedSeg
    ``tr_im``): neighbouring slices often come from one patient, so blocks leak less than a shuffle."""
    n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    n_train = n - n_val - n_test
    return {
        "train": range(0, n_train),
        "val": range(n_train, n_train + n_val),
        "test": range(n_train + n_val, n),
    }


def manifest_header(name: str, source: str, *, transforms: str | None, created_by: str, description: str = "",
                    lesion_labels: bool = False) -> dict:
    """The top of a manifest; ``entries`` is empty."""
    header: dict = {"format": MANIFEST_FORMAT, "name": name, "source": source, "classes": list(CLASS_NAMES)}
    if lesion_labels:
        header["lesion_labels"] = {str(k): v for k, v in LESION_LABELS.items()}
    if transforms:
        header["transforms"] = transforms
    if created_by:
        header["created_by"] = created_by
    if description:
        header["description"] = description
    header["entries"] = []
    return header


def _rewrite_paths(entry: dict, fn) -> dict:
    entry = dict(entry)
    for key in PATH_KEYS:
        if key in entry:
            entry[key] = fn(entry[key])
    if "boxes" in entry:
        entry["boxes"] = [dict(b, annotation=fn(b["annotation"])) if "annotation" in b else b for b in entry["boxes"]]
    return entry


def relativize(manifest: dict, out_dir: str | Path, base_dir: str | Path | None = None) -> dict:
    """Copy of ``manifest`` whose paths are relative to ``out_dir`` (POSIX separators).

    Args:
        manifest: paths absolute, or relative to ``base_dir``.
        out_dir: the folder of the manifest file that will hold the result.
        base_dir: folder the current relative paths are relative to (``None``: they are absolute).
    """
    out_dir = Path(out_dir).resolve()

    def fn(p: str) -> str:
        path = Path(p) if base_dir is None else Path(base_dir) / p
        return Path(os.path.relpath(Path(os.path.abspath(path)), out_dir)).as_posix()

    out = dict(manifest)
    out["entries"] = [_rewrite_paths(e, fn) for e in manifest["entries"]]
    return out


def lesion_slice_indices(mask: np.ndarray, slices: Sequence[int] | None = None) -> list[int]:
    """Indices ``k`` (within ``slices``, default all) where ``mask[..., k]`` has a non-zero value.

    Args:
        mask: integer ``(H, W, D)``.
    """
    nonzero = np.flatnonzero(np.any(mask.reshape(-1, mask.shape[-1]) != 0, axis=0))
    keep = set(range(mask.shape[-1]) if slices is None else slices)
    return [int(k) for k in nonzero if k in keep]


def label_problems(values: Iterable[int], declared: Iterable[int | str]) -> list[int]:
    """Mask values that are not declared lesion labels (sorted)."""
    allowed = {int(v) for v in declared}
    return sorted(int(v) for v in set(int(x) for x in values) - allowed)


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    """Task names in the canonical order of :data:`ctmtl.constants.TASKS`."""
    tasks = set(tasks)
    return [t for t in TASKS if t in tasks]


def splits_in_order(splits: Iterable[str]) -> list[str]:
    splits = set(splits)
    return [s for s in SPLITS if s in splits]

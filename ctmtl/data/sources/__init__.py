"""Manifest builders, one per data set layout, registered by name.

``BUILDERS[name](root, options) -> BuildResult`` with absolute paths; :func:`build_manifest` makes the paths
relative to the output file and writes it. ``ctmtl manifest build <name> ROOT -o FILE`` calls it.

=================  =========================================================  ==========================
name               layout                                                     default chain
=================  =========================================================  ==========================
``medseg``         ``tr_im/tr_mask/val_im.nii.gz``, ``rp_im|rp_msk/<N>.nii.gz``  ``medseg_volume``
``ucsd-ai4h``      ``Images-processed/CT_{COVID,NonCOVID}``, ``Data-split``     ``slice_8bit``
``lung-pet-ct-dx`` NBIA ``manifest-*/...`` or ``Lung_Dx-<ID>/<study>/<series>``,  ``dicom_series``
                   ``Annotation/<ID>/<SOPInstanceUID>.xml``
``folder``         ``Imgs/<n>.<ext>`` + ``GT/<n>.png``                            ``slice_8bit``
=================  =========================================================  ==========================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ctmtl.data.manifest import save_manifest
from ctmtl.data.sources.common import (
    BuildOptions,
    BuildResult,
    block_splits,
    relativize,
    split_patients,
)
from ctmtl.data.sources.folder import build_folder
from ctmtl.data.sources.lung_dx import build_lung_dx
from ctmtl.data.sources.medseg import build_medseg
from ctmtl.data.sources.ucsd import build_ucsd
from ctmtl.errors import ManifestError

__all__ = [
    "BUILDERS",
    "register_builder",
    "build_manifest",
    "BuildOptions",
    "BuildResult",
    "split_patients",
    "block_splits",
    "relativize",
    "build_medseg",
    "build_ucsd",
    "build_lung_dx",
    "build_folder",
]

Builder = Callable[[Path, BuildOptions], BuildResult]

#: builder of each data set layout, by ``ctmtl manifest build`` name
BUILDERS: dict[str, Builder] = {
    "medseg": build_medseg,
    "ucsd-ai4h": build_ucsd,
    "lung-pet-ct-dx": build_lung_dx,
    "folder": build_folder,
}


def register_builder(name: str, builder: Builder) -> Builder:
    """Add a builder for a new layout (``builder(root, options) -> BuildResult`` with absolute paths)."""
    BUILDERS[name] = builder
    return builder


def build_manifest(
    source: str, root: str | Path, out: str | Path, options: BuildOptions | None = None, overwrite: bool = False
) -> BuildResult:
    """Build the manifest of the data set at ``root`` and write it to ``out`` (paths relative to its folder).

    Raises:
        ManifestError: unknown source, or ``out`` exists and ``overwrite`` is False (checked before any work).
        DataError: what the builder finds wrong with the data (one line per problem).
    """
    if source not in BUILDERS:
        raise ManifestError(f"unknown data set layout {source!r} (known: {', '.join(sorted(BUILDERS))})")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ManifestError(f"manifest {out}: exists (use --overwrite to replace it)")
    result = BUILDERS[source](Path(root), options or BuildOptions())
    result.manifest = relativize(result.manifest, out.parent)
    save_manifest(result.manifest, out, overwrite=overwrite)
    return result

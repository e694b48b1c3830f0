"""Names shared by every part of ctmtl (see docs/architecture.md).

Import these; never retype the strings.
"""

from __future__ import annotations

MANIFEST_FORMAT = "ctmtl-manifest/1"

#: Diagnosis classes of the 3-class task, in label order.
CLASS_NAMES: tuple[str, ...] = ("covid-19", "non-covid", "cancer")

#: Lesion labels of the segmentation masks (MedSeg convention).
LESION_LABELS: dict[int, str] = {0: "background", 1: "ground-glass", 2: "consolidation", 3: "pleural-effusion"}

#: Manifest task names (long) -> tensor / output / loss keys (short).
TASKS: dict[str, str] = {
    "classification": "class",
    "segmentation": "seg",
    "reconstruction": "recon",
    "detection": "det",
}
SHORT_TASKS: tuple[str, ...] = tuple(TASKS.values())
LONG_TASKS: dict[str, str] = {v: k for k, v in TASKS.items()}

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Entry kinds of a manifest.
ENTRY_KINDS: tuple[str, ...] = ("volume", "dicom_series", "slice")

#: Data sources a manifest can be built from.
SOURCES: tuple[str, ...] = ("medseg", "ucsd-ai4h", "lung-pet-ct-dx", "folder", "synthetic", "merged")

#: Default chain per entry kind (top-level transforms/<name>.json).
DEFAULT_CHAINS: dict[str, str] = {"volume": "ct_volume_hu", "dicom_series": "dicom_series", "slice": "slice_8bit"}

#: Lung-PET-CT-Dx histology letters; all of them are "cancer" in the 3-class task.
LUNG_DX_SUBTYPES: dict[str, str] = {
    "A": "adenocarcinoma",
    "B": "small-cell carcinoma",
    "E": "large-cell carcinoma",
    "G": "squamous-cell carcinoma",
}

#: presets of the synthetic data set (:meth:`ctmtl.data.synthetic.SynthConfig.preset`; ``--scale`` of ``ctmtl synth`` and
#: ``ctmtl demo``)
SCALES: tuple[str, ...] = ("small", "medium", "large")

"""ctmtl's dictionary transforms (array / dictionary pairs where MONAI has none).

The preprocessing chains in the top-level ``transforms/`` folder (shipped as ``ctmtl.chains``) name these
classes as ``ctmtl.transforms.<Name>``, next to MONAI's own. See ``docs/transforms.md``.

* :mod:`.io`: ``LoadCTVolumed``, ``LoadDicomSeriesd``, ``LoadImage2Dd`` (files -> ``1 x H x W x D`` MetaTensors).
* :mod:`.orientation`: ``OrientAxiald`` (MedSeg's stored rotation).
* :mod:`.intensity`: ``HUWindowd``, ``CTIntensityd`` (HU window or 8-bit scale -> [0, 1]).
* :mod:`.slicing`: ``SelectSlicesd`` (3D -> list of 2D samples: all / lesion / annotated / balanced).
* :mod:`.labels`: ``MergeLesionLabelsd``, ``BoxesFromMaskd``, ``BoxesToTensord``, ``ClassToIndexd``, ``RecordTasksd``.
* :mod:`.geometry`: ``ResizeWithBoxesd``, ``PadCropWithBoxesd``, ``SwapBoxAxesd``, ``BoxesToBoxMaskd`` / ``BoxMaskToBoxesd``
  (boxes through any MONAI spatial augmentation), ``InvertGeometryd`` and
  :func:`invert_geometry` (prediction -> original slice geometry).
"""

from ctmtl.transforms.geometry import (
    BoxesToBoxMaskD,
    BoxesToBoxMaskd,
    BoxesToBoxMaskDict,
    BoxMaskToBoxesD,
    BoxMaskToBoxesd,
    BoxMaskToBoxesDict,
    InvertGeometryD,
    InvertGeometryd,
    InvertGeometryDict,
    PadCropWithBoxesD,
    PadCropWithBoxesd,
    PadCropWithBoxesDict,
    ResizeWithBoxesD,
    ResizeWithBoxesd,
    ResizeWithBoxesDict,
    ScaleBoxes,
    SwapBoxAxes,
    SwapBoxAxesD,
    SwapBoxAxesd,
    SwapBoxAxesDict,
    invert_geometry,
    record_geometry,
    slice_affine,
)
from ctmtl.transforms.intensity import (
    LUNG_WINDOW,
    CTIntensity,
    CTIntensityD,
    CTIntensityd,
    CTIntensityDict,
    HUWindow,
    HUWindowD,
    HUWindowd,
    HUWindowDict,
)
from ctmtl.transforms.io import (
    LoadCTVolume,
    LoadCTVolumeD,
    LoadCTVolumed,
    LoadCTVolumeDict,
    LoadDicomSeries,
    LoadDicomSeriesD,
    LoadDicomSeriesd,
    LoadDicomSeriesDict,
    LoadImage2D,
    LoadImage2DD,
    LoadImage2Dd,
    LoadImage2DDict,
)
from ctmtl.transforms.labels import (
    BoxesFromMask,
    BoxesFromMaskD,
    BoxesFromMaskd,
    BoxesFromMaskDict,
    BoxesToTensor,
    BoxesToTensorD,
    BoxesToTensord,
    BoxesToTensorDict,
    ClassToIndex,
    ClassToIndexD,
    ClassToIndexd,
    ClassToIndexDict,
    MergeLesionLabels,
    MergeLesionLabelsD,
    MergeLesionLabelsd,
    MergeLesionLabelsDict,
    RecordTasksD,
    RecordTasksd,
    RecordTasksDict,
)
from ctmtl.transforms.orientation import MEDSEG_ORIENTATION, OrientAxial, OrientAxialD, OrientAxiald, OrientAxialDict
from ctmtl.transforms.slicing import SLICE_MODES, ExtractSlice, SelectSlicesD, SelectSlicesd, SelectSlicesDict

__all__ = [
    # io
    "LoadCTVolume", "LoadCTVolumed", "LoadCTVolumeD", "LoadCTVolumeDict",
    "LoadDicomSeries", "LoadDicomSeriesd", "LoadDicomSeriesD", "LoadDicomSeriesDict",
    "LoadImage2D", "LoadImage2Dd", "LoadImage2DD", "LoadImage2DDict",
    # orientation
    "MEDSEG_ORIENTATION", "OrientAxial", "OrientAxiald", "OrientAxialD", "OrientAxialDict",
    # intensity
    "LUNG_WINDOW", "HUWindow", "HUWindowd", "HUWindowD", "HUWindowDict",
    "CTIntensity", "CTIntensityd", "CTIntensityD", "CTIntensityDict",
    # slicing
    "SLICE_MODES", "ExtractSlice", "SelectSlicesd", "SelectSlicesD", "SelectSlicesDict",
    # labels
    "MergeLesionLabels", "MergeLesionLabelsd", "MergeLesionLabelsD", "MergeLesionLabelsDict",
    "BoxesFromMask", "BoxesFromMaskd", "BoxesFromMaskD", "BoxesFromMaskDict",
    "BoxesToTensor", "BoxesToTensord", "BoxesToTensorD", "BoxesToTensorDict",
    "ClassToIndex", "ClassToIndexd", "ClassToIndexD", "ClassToIndexDict",
    "RecordTasksd", "RecordTasksD", "RecordTasksDict",
    # geometry
    "record_geometry", "slice_affine", "invert_geometry", "ScaleBoxes",
    "ResizeWithBoxesd", "ResizeWithBoxesD", "ResizeWithBoxesDict",
    "PadCropWithBoxesd", "PadCropWithBoxesD", "PadCropWithBoxesDict",
    "SwapBoxAxes", "SwapBoxAxesd", "SwapBoxAxesD", "SwapBoxAxesDict",
    "InvertGeometryd", "InvertGeometryD", "InvertGeometryDict",
    "BoxesToBoxMaskd", "BoxesToBoxMaskD", "BoxesToBoxMaskDict",
    "BoxMaskToBoxesd", "BoxMaskToBoxesD", "BoxMaskToBoxesDict",
]  # fmt: skip

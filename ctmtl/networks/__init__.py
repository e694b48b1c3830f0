"""Networks: encoder registry, dense and classification heads, detection heads, the multi-task network."""

from ctmtl.networks.detection import (
    DETECTION_HEADS,
    DetectionHead,
    MaskRCNNHead,
    RetinaNetHead,
    StageFPN,
    box_masks,
    detection_targets,
)
from ctmtl.networks.encoders import (
    ENCODERS,
    EfficientNetFeatures,
    EncoderEntry,
    EncoderRegistry,
    SmallEncoder,
    VGGEncoder,
    load_encoder_weights,
)
from ctmtl.networks.heads import ClassificationHead, UNetHead, default_decoder_channels
from ctmtl.networks.multitask import MultiTaskNet, SegmentationNet, TaskOutput

__all__ = [
    "DETECTION_HEADS",
    "ENCODERS",
    "ClassificationHead",
    "DetectionHead",
    "EfficientNetFeatures",
    "EncoderEntry",
    "EncoderRegistry",
    "MaskRCNNHead",
    "MultiTaskNet",
    "RetinaNetHead",
    "SegmentationNet",
    "SmallEncoder",
    "StageFPN",
    "TaskOutput",
    "UNetHead",
    "VGGEncoder",
    "box_masks",
    "default_decoder_channels",
    "detection_targets",
    "load_encoder_weights",
]

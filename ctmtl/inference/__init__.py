"""Using a trained model: loading a trained bundle (:mod:`ctmtl.inference.model`) and predicting on files
(:mod:`ctmtl.inference.predict`, the ``ctmtl predict`` command)."""

from ctmtl.inference.boxes import boxes_to_world, invert_boxes
from ctmtl.inference.inputs import PredictInput, find_inputs
from ctmtl.inference.model import LoadedModel, find_bundle_root, load_model, load_state_dict_strict
from ctmtl.inference.predict import Detection, Prediction, Predictor, check_outputs, predict_files

__all__ = [
    "Detection",
    "LoadedModel",
    "Prediction",
    "PredictInput",
    "Predictor",
    "boxes_to_world",
    "check_outputs",
    "find_bundle_root",
    "find_inputs",
    "invert_boxes",
    "load_model",
    "load_state_dict_strict",
    "predict_files",
]

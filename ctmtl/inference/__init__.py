"""Using a trained model: loading a trained bundle (:mod:`ctmtl.inference.model`) and predicting on files."""

from ctmtl.inference.model import LoadedModel, find_bundle_root, load_model, load_state_dict_strict

__all__ = ["LoadedModel", "find_bundle_root", "load_model", "load_state_dict_strict"]

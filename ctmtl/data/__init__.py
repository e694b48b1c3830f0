"""Data sets: the manifest format, builders for each source, synthetic chest CT, the slice pipeline."""

from ctmtl.data.manifest import Manifest, load_manifest, save_manifest, validate_manifest_dict

__all__ = ["Manifest", "load_manifest", "save_manifest", "validate_manifest_dict"]

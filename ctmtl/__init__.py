"""ctmtl: multi-task chest CT on MONAI."""
__version__ = "0.1.0"

"""Preprocessing chains: MONAI config files, one per chain. Installed as the data package ``ctmtl.chains``."""

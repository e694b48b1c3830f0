"""Package layout only (metadata lives in pyproject.toml).

Two top-level folders ship inside the package, so the same files serve a checkout, an editable and a wheel install:
``transforms/`` (the preprocessing chains) as the data-only package ``ctmtl.chains``, and ``bundles/`` (the MONAI
bundles: configs, docs, LICENSE) as the data-only package ``ctmtl.bundles``, found by ``ctmtl.bundle.bundle_path``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ctmtl", "ctmtl.*"]) + ["ctmtl.chains", "ctmtl.bundles"],
    package_dir={"ctmtl.chains": "transforms", "ctmtl.bundles": "bundles"},
)

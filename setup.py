"""Package layout only (metadata lives in pyproject.toml).

The top-level ``transforms/`` folder holds the preprocessing chains; it is installed as the data-only
package ``ctmtl.chains`` so the same files serve a checkout, an editable and a wheel install.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ctmtl", "ctmtl.*"]) + ["ctmtl.chains"],
    package_dir={"ctmtl.chains": "transforms"},
)

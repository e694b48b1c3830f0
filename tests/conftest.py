"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: reference files beside the checkout (tests that read them skip when it is absent)
SHARED = Path(os.environ.get("CTMTL_SHARED", REPO.parent / "shared"))
REAL_SAMPLES = SHARED / "real_samples"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same random state; torch uses the 2 CI cores."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def real_sample(name: str) -> Path:
    """Path of a real-data excerpt under ../shared/real_samples, or skip the test."""
    path = REAL_SAMPLES / name
    if not path.exists():
        pytest.skip(f"real sample {path} not available")
    return path

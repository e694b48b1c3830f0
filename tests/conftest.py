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


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo what a bundle run's ``logging.conf`` (``logging.config.fileConfig``) does to the process: root handlers
    bound to this test's captured stderr (closed afterwards) and disabled loggers would break later tests."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.disabled = False


def real_sample(name: str) -> Path:
    """Path of a real-data excerpt under ../shared/real_samples, or skip the test."""
    path = REAL_SAMPLES / name
    if not path.exists():
        pytest.skip(f"real sample {path} not available")
    return path


def _tiny_data_module():
    """``tests/transforms/tiny_data.py`` loaded once (the test folders are not packages)."""
    import importlib.util
    import sys

    name = "ctmtl_tiny_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "transforms" / "tiny_data.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny():
    """The ``tiny_data`` helper module (tiny NIfTI / DICOM / PNG sources for transform and pipeline tests)."""
    return _tiny_data_module()


@pytest.fixture(scope="session")
def sources(tmp_path_factory, tiny):
    """name -> manifest path of the three tiny sources (``volume``, ``dicom``, ``slice``) and ``merged``."""
    return tiny.make_sources(tmp_path_factory.mktemp("sources"))


_tiny_data_module()  # test modules import it as ``ctmtl_tiny_data``


def make_trained_bundle(root: Path, size: int = 32, tasks=("class", "seg", "recon", "det"), det_head: str | None = "retinanet",
                        seed: int = 0) -> Path:
    """A minimal *trained bundle* (docs/architecture.md, "Trained bundle") with random weights, for tests of
    loading, predicting and exporting: ``configs/inference.json`` defining ``network_def``, ``image_size`` and
    ``chain_overrides``, and ``models/model.pt`` (its ``state_dict``)."""
    import json

    from ctmtl.networks import MultiTaskNet

    root = Path(root)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    net_args = {"encoder": "small", "tasks": list(tasks), "det_head": det_head if "det" in tasks else None}
    config = {
        "imports": ["$import ctmtl"],
        "bundle_root": ".",
        "image_size": [size, size],
        "chain_overrides": {"spatial_size": "@image_size"},
        "class_names": ["covid-19", "non-covid", "cancer"],
        "network_def": {"_target_": "ctmtl.networks.MultiTaskNet", "image_size": "@image_size", **net_args},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    net = MultiTaskNet(image_size=(size, size), **net_args)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory) -> Path:
    """A tiny trained bundle (32 px, every head, RetinaNet, random weights); see :func:`make_trained_bundle`."""
    return make_trained_bundle(tmp_path_factory.mktemp("bundle"))

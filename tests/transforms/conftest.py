"""Fixtures of the transform tests: tiny files written once per session (see ``tiny_data.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if "ctmtl_tiny_data" not in sys.modules:  # one module for both test folders (no tests/__init__.py)
    _spec = importlib.util.spec_from_file_location("ctmtl_tiny_data", Path(__file__).with_name("tiny_data.py"))
    sys.modules["ctmtl_tiny_data"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["ctmtl_tiny_data"])
tiny_data = sys.modules["ctmtl_tiny_data"]


@pytest.fixture(scope="session")
def tiny():
    """The ``tiny_data`` helper module."""
    return tiny_data


@pytest.fixture(scope="session")
def sources(tmp_path_factory):
    """name -> manifest path of the three tiny sources (``volume``, ``dicom``, ``slice``) and ``merged``."""
    return tiny_data.make_sources(tmp_path_factory.mktemp("sources"))

"""Fixtures of the bundle tests: the synthetic data set (made once), a trained bundle, a random-weights bundle, and a
runner for ``python -m monai.bundle`` (and ``torchrun``) in a subprocess.

Every run is tiny: 32 px slices, the ``small`` encoder, one epoch per stage. Subprocesses run with one torch
thread: on a shared 2-core machine, intra-op threads of small tensors cost more than they give.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "chest_ct_multitask"
CONFIGS = BUNDLE / "configs"
SHARED = Path(os.environ.get("CTMTL_SHARED", REPO.parent / "shared"))
SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"

#: the values every test run overrides (besides bundle_root and dataset_dir)
TINY: dict[str, Any] = {"image_size": [32, 32], "encoder": "small", "epochs": 1, "batch_size": 16}


def cli_args(**values: Any) -> list[str]:
    """``--key value`` pairs as ``python -m monai.bundle`` (Python Fire) reads them back."""
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def run_bundle(*args: str, cwd: Path, torchrun: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` (under ``torchrun --standalone --nproc_per_node=2`` when asked)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


@pytest.fixture(scope="session")
def cli() -> SimpleNamespace:
    """What the tests need to run the bundle: ``run`` (:func:`run_bundle`), ``args`` (:func:`cli_args`), ``ok``
    (:func:`assert_ok`), the paths ``bundle``, ``configs``, ``schema`` and the ``tiny`` overrides."""
    return SimpleNamespace(run=run_bundle, args=cli_args, ok=assert_ok, bundle=BUNDLE, configs=CONFIGS, schema=SCHEMA,
                           tiny=dict(TINY))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """The synthetic data set's manifests (``medseg``, ``ucsd-ai4h``, ``lung-pet-ct-dx``, ``merged``) and its
    folder (``dir``)."""
    from ctmtl.data.synthetic import ensure_synthetic

    folder = tmp_path_factory.mktemp("data") / "synthetic"
    return {**ensure_synthetic(folder), "dir": folder}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synthetic) -> Path:
    """A bundle root trained by ``python -m monai.bundle run --config_file train.json`` (staged plan, 3 epochs)."""
    root = tmp_path_factory.mktemp("trained") / "run"
    result = run_bundle("run", "--config_file", str(CONFIGS / "train.json"),
                        *cli_args(bundle_root=str(root), dataset_dir=str(synthetic["dir"]), **TINY), cwd=root.parent)
    assert_ok(result)
    return root


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory, synthetic) -> Path:
    """A trained bundle with random weights: the shipped configs with the tiny values, and ``models/model.pt``."""
    from ctmtl.bundle import export_trained_bundle
    from ctmtl.networks import MultiTaskNet

    root = tmp_path_factory.mktemp("random") / "bundle"
    values = {"encoder": "small", "image_size": [32, 32], "chain_overrides": {"spatial_size": [32, 32]},
              "dataset_dir": str(synthetic["dir"]), "dataset_manifest": [str(synthetic["merged"])]}
    export_trained_bundle(root, values)
    torch.manual_seed(0)
    net = MultiTaskNet("small", image_size=(32, 32))
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root

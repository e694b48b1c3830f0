"""Fixtures of the predict tests: tiny inputs of every kind, a stub network with known outputs, a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import ctmtl_tiny_data as tiny_data  # loaded by tests/conftest.py
from ctmtl.cli import main
from ctmtl.data.pipeline import torch_threads
from ctmtl.inference import LoadedModel, Predictor

SIZE = 32  # the trained_bundle fixture's slice size


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test here runs torch with one intra-op thread (on the shared 2-core CI machine contended threads make
    the tiny network 100x slower); ``ctmtl predict`` gets ``--threads 1`` for the same reason."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One input of each kind: ``volume`` (NIfTI 48 x 40 x 6, anisotropic affine), ``dicom`` (series 40 x 48 x 5),
    ``png`` (RGB 40 x 56, not square), ``png32`` (grey, the model's 32 x 32). Read-only."""
    root = tmp_path_factory.mktemp("inputs")
    im, _, _, _ = tiny_data.write_volume_pair(root, "vol", shape=(48, 40, 6), seed=0)
    tiny_data.write_dicom_series(root / "series1", shape=(40, 48, 5), seed=3)
    return {
        "volume": im,
        "dicom": root / "series1",
        "png": tiny_data.write_png(root / "scan.png", (40, 56), "RGB", seed=4),
        "png32": tiny_data.write_png(root / "small.png", (SIZE, SIZE), "L", seed=5),
    }


@pytest.fixture(scope="session")
def predictor(trained_bundle) -> Predictor:
    """A predictor on the tiny trained bundle (CPU, no progress bar)."""
    return Predictor(trained_bundle, device="cpu", progress=False, threads=1)


def run_predict(capsys, *args) -> tuple[int, str, str]:
    """``ctmtl predict ARGS --threads 1`` in-process: ``(exit code, stdout, stderr)``. One thread: on the shared
    2-core CI machine contended intra-op threads make the tiny network 100x slower."""
    capsys.readouterr()
    rc = main(["predict", *[str(a) for a in args], "--threads", "1"])
    out = capsys.readouterr()
    return rc, out.out, out.err


class StubNet(nn.Module):
    """A stand-in for :class:`ctmtl.networks.MultiTaskNet` with known outputs on a ``SIZE x SIZE`` input.

    ``class``: logits ``[2, 0, -1]``; ``seg``: +5 inside the rows/columns ``seg_box`` (``y1, y2, x1, x2``), -5 elsewhere;
    ``det``: one box ``det_box`` (xyxy) with score 0.9 per image.
    """

    def __init__(self, tasks=("class", "seg", "det"), seg_box=(8, 20, 4, 12), det_box=(4.0, 8.0, 12.0, 20.0)) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.seg_box = seg_box
        self.det_box = det_box
        self.weight = nn.Parameter(torch.zeros(1))  # something to move between devices

    def forward(self, image, tasks=None):
        b = image.shape[0]
        out = {}
        if "class" in tasks:
            out["class"] = torch.tensor([[2.0, 0.0, -1.0]]).repeat(b, 1)
        if "seg" in tasks:
            seg = torch.full((b, 1, *image.shape[-2:]), -5.0)
            y1, y2, x1, x2 = self.seg_box
            seg[:, :, y1:y2, x1:x2] = 5.0
            out["seg"] = seg
        if "det" in tasks:
            out["det"] = [{"boxes": torch.tensor([self.det_box]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
                          for _ in range(b)]
        return out


def stub_model(**kwargs) -> LoadedModel:
    """A :class:`LoadedModel` around a :class:`StubNet` (no bundle on disk)."""
    net = StubNet(**kwargs)
    return LoadedModel(net, Path("stub"), None, (SIZE, SIZE), {"spatial_size": [SIZE, SIZE]})

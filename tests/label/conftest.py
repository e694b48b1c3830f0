"""Fixtures of the MONAI Label export tests: a synthetic PNG study and a trained bundle whose heads give
non-trivial answers on it.

The bundle is :func:`tests.conftest.make_trained_bundle` (random weights), calibrated on the study instead of
trained: the ``seg`` head's last bias is shifted so that about half of the study's pixels are lesion, and the
``det`` head's classification bias so that about 1% of its anchors score above 0.5 (``ctmtl predict``'s box
threshold). That leaves masks with fine structure and a few dozen boxes, which is what the comparisons need,
in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_trained_bundle

#: the study: rows x columns, non-square (a transposed mask would not fit) and not the network's size
STUDY_SHAPE = (48, 72)
SIZE = 32


def make_study(path: Path, shape=STUDY_SHAPE, seed: int = 0) -> Path:
    """An 8-bit grey PNG: a gradient, an elliptic bright 'lesion' and noise."""
    from PIL import Image

    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    lesion = ((yy - 0.4 * h) / (0.2 * h)) ** 2 + ((xx - 0.6 * w) / (0.2 * w)) ** 2 < 1
    noise = np.random.RandomState(seed).normal(0, 10, (h, w))
    image = np.clip(50 + 100 * xx / w + 90 * lesion + noise, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


def _last_conv(module: torch.nn.Module) -> torch.nn.Conv2d:
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
    return convs[-1]


def make_label_model(root: Path, study: Path, size: int = SIZE) -> Path:
    """A trained bundle (every head, RetinaNet) calibrated on ``study`` (see the module docstring)."""
    from ctmtl.data.chains import load_chain
    from ctmtl.inference import load_model

    root = make_trained_bundle(root, size=size)
    model = load_model(root, device="cpu")
    net = model.network
    sample = load_chain("slice_8bit", model.chain_overrides)({"image": str(study), "meta": {}})[0]
    image = sample["image"].as_tensor()[None]
    with torch.no_grad():
        seg_bias = _last_conv(net.heads["seg"]).bias
        seg_bias -= net(image, tasks=("seg",))["seg"].median()
        det = net.heads["det"]
        cls_bias = det.detector.network.classification_head.cls_logits.bias
        head_outputs, _ = det._head_outputs(image, net.encoder(image))
        cls_bias -= torch.quantile(head_outputs[det.detector.cls_key].flatten(), 0.99)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """The synthetic PNG study (48 x 72)."""
    return make_study(tmp_path_factory.mktemp("study") / "study.png")


@pytest.fixture(scope="session")
def label_model(tmp_path_factory, study) -> Path:
    """A trained bundle calibrated on :func:`study`."""
    return make_label_model(tmp_path_factory.mktemp("label_model") / "bundle", study)


@pytest.fixture(scope="session")
def reference(label_model, study):
    """ctmtl's own prediction on the study (:class:`ctmtl.inference.Predictor`, as ``ctmtl predict``)."""
    from ctmtl.inference import Predictor

    return Predictor(label_model, device="cpu", overlays=0, progress=False).predict(study)

"""The exported bundles served by a real MONAI Label 0.8.5 server (marker ``label``; ``make test-label``).

Runs in ``.venv-label`` (MONAI Label and its pins; ctmtl installed editable). Elsewhere MONAI Label is not
importable and the module is skipped, so the main ``make test`` reports it as skipped instead of failing.

The flow is the one ``docs/monailabel.md`` gives users: ``ctmtl export-label``, ``monailabel apps --download
--name monaibundle``, copy the bundles into ``<app>/model/``, ``monailabel start_server ... --conf models ...``,
upload a PNG study to the datastore, ask for inference. The server's answers must equal ctmtl's own prediction
(:class:`ctmtl.inference.Predictor`) on the same file.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed here; run `make test-label` (uses .venv-label)")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.label

NAME = "ctmtl"
MODELS = [f"{NAME}_segmentation", f"{NAME}_detection", f"{NAME}_classification"]
#: the start_server flags that serve local bundle folders offline (see docs/monailabel.md)
CONF = ["--conf", "models", ",".join(MODELS), "--conf", "zoo_source", "local", "--conf", "sam2", "false",
        "--conf", "skip_trainers", "true"]
STARTUP_TIMEOUT = 240  # seconds; two shared cores, torch + MONAI imports


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _monailabel(*args: str) -> list[str]:
    """``monailabel ARGS`` with this interpreter (the launcher script runs whatever python is first on PATH)."""
    return [sys.executable, "-m", "monailabel.main", *args]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MONAI_LABEL_SESSION_PATH"] = str(tmp / "sessions")  # not ~/.cache
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def server(label_model, tmp_path_factory):
    """A MONAI Label server with the exported bundles; yields its base URL. Stopped (process group) at the end."""
    from ctmtl.cli import main

    tmp = tmp_path_factory.mktemp("monailabel")
    env = _env(tmp)
    export = tmp / "export"
    assert main(["export-label", "--model", str(label_model), "--out", str(export), "--name", NAME]) == 0
    subprocess.run(_monailabel("apps", "--download", "--name", "monaibundle", "--output", str(tmp / "apps")),
                   check=True, env=env, capture_output=True, timeout=300)
    app = tmp / "apps" / "monaibundle"
    for name in MODELS:
        shutil.copytree(export / name, app / "model" / name)
    studies = tmp / "studies"
    studies.mkdir()

    port = _free_port()
    log = tmp / "server.log"
    command = _monailabel("start_server", "--app", str(app), "--studies", str(studies),
                          "--host", "127.0.0.1", "--port", str(port), *CONF)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label server exited with {proc.returncode} while starting; log tail:\n{_tail(log)}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server not ready after {STARTUP_TIMEOUT} s; log tail:\n{_tail(log)}")
            time.sleep(1)
        yield {"url": url, "log": log}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def image_id(server, study):
    """The study uploaded to the server's datastore."""
    with open(study, "rb") as f:
        r = requests.put(f"{server['url']}/datastore/image", params={"image": "study"},
                         files={"file": ("study.png", f, "image/png")}, timeout=60)
    assert r.status_code == 200, f"upload failed ({r.status_code}): {r.text}\n{_tail(server['log'])}"
    return r.json()["image"]


def _infer(server, model: str, image: str, output: str) -> requests.Response:
    r = requests.post(f"{server['url']}/infer/{model}", params={"image": image, "output": output}, timeout=300)
    assert r.status_code == 200, f"/infer/{model} failed ({r.status_code}): {r.text[:500]}\nserver log tail:\n{_tail(server['log'])}"
    return r


def test_server_lists_the_exported_models(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    models = info["models"]
    for name in MODELS:
        assert name in models, f"{name} not served: {sorted(models)}\n{_tail(server['log'])}"
        assert models[name]["dimension"] == 2
    assert models[f"{NAME}_segmentation"]["type"] == "segmentation"
    assert models[f"{NAME}_segmentation"]["labels"] == {"lesion": 1}
    assert models[f"{NAME}_detection"]["type"] == "detection"
    assert models[f"{NAME}_classification"]["type"] == "classification"
    assert models[f"{NAME}_classification"]["labels"] == {"covid-19": 0, "non-covid": 1, "cancer": 2}


def test_segmentation_equals_ctmtl_prediction(server, image_id, reference):
    from PIL import Image

    r = _infer(server, f"{NAME}_segmentation", image_id, "image")
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    expected = reference.mask
    assert mask.dtype == np.uint8 and mask.shape == expected.shape  # rows x columns of the study, as PIL reads it
    assert 0 < expected.mean() < 1, "the reference mask is empty or full: the comparison would prove nothing"
    assert 0 < mask.mean() < 1
    dice = 2 * np.logical_and(mask > 0, expected > 0).sum() / ((mask > 0).sum() + (expected > 0).sum())
    assert dice >= 0.99, f"Dice {dice:.4f} between MONAI Label's mask and ctmtl's"


def test_detection_equals_ctmtl_prediction(server, image_id, reference):
    result = _infer(server, f"{NAME}_detection", image_id, "json").json()
    expected = [[(x1 + x2) / 2, (y1 + y2) / 2, 0.0, x2 - x1, y2 - y1, 1.0] for x1, y1, x2, y2 in (d.box for d in reference.detections)]
    assert len(expected) > 0
    assert len(result["box"]) == len(expected)
    np.testing.assert_allclose(sorted(result["box"]), sorted(expected), atol=1e-3)
    assert result["label"] == [1] * len(expected)


def test_classification_equals_ctmtl_prediction(server, image_id, reference):
    result = _infer(server, f"{NAME}_classification", image_id, "json").json()
    got = {p["label"]: p["score"] for p in result["prediction"]}
    assert list(got) == list(reference.probabilities)
    np.testing.assert_allclose(list(got.values()), list(reference.probabilities.values()), rtol=1e-4, atol=1e-6)

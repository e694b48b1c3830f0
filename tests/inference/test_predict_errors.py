"""Bad inputs, outputs and models: one line per problem, exit code 2, before any prediction is written."""

from __future__ import annotations

import shutil

import pytest
import torch

import ctmtl_tiny_data as tiny_data  # loaded by tests/conftest.py
from ctmtl.errors import DataError, ModelError
from ctmtl.inference import Predictor, find_inputs
from tests.conftest import make_trained_bundle
from tests.inference.conftest import run_predict


def _mixed_series(root):
    """Two DICOM series in one folder."""
    tiny_data.write_dicom_series(root / "one", shape=(40, 48, 3), seed=3)
    tiny_data.write_dicom_series(root / "two", shape=(40, 48, 3), seed=4)
    for f in (root / "two").iterdir():
        shutil.copy(f, root / "one" / f"b{f.name}")
    return root / "one"


def _bad_input(kind, root):
    if kind == "text-as-png":
        path = root / "notes.png"
        path.write_text("not an image")
        return path, "not an image"
    if kind == "text":
        path = root / "notes.txt"
        path.write_text("not an image")
        return path, "not an image"
    if kind == "empty-folder":
        (root / "empty").mkdir()
        (root / "empty" / "readme.csv").write_text("a,b\n")
        return root / "empty", "no inputs in the folder"
    if kind == "mixed-series":
        return _mixed_series(root), "mixed series: 2 SeriesInstanceUIDs"
    if kind == "missing":
        return root / "nowhere.nii.gz", "no such file or folder"
    if kind == "dicom-file":
        tiny_data.write_dicom_series(root / "s", shape=(40, 48, 2), seed=5)
        return next((root / "s").iterdir()), "give the folder of its series"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["text-as-png", "text", "empty-folder", "mixed-series", "missing", "dicom-file"])
def test_bad_input_is_one_line_and_nothing_is_written(kind, trained_bundle, inputs, tmp_path, capsys):
    bad, message = _bad_input(kind, tmp_path)
    out = tmp_path / "out"
    # a good input first: it must not be predicted either (every input is checked before the first prediction)
    rc, stdout, err = run_predict(capsys, "--model", trained_bundle, inputs["png32"], bad, "--out", out)
    assert rc == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ctmtl predict: error: ") and message in lines[0] and bad.name in lines[0]
    assert not out.exists()


def test_every_bad_input_is_listed(tmp_path):
    (tmp_path / "a.png").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        find_inputs([tmp_path / "a.png", tmp_path / "empty", tmp_path / "missing.png"])
    assert len(err.value.problems) == 3


def test_checkpoint_of_another_head_layout(tmp_path, trained_bundle, inputs, capsys):
    other = make_trained_bundle(tmp_path / "other", tasks=("class", "seg", "recon"), det_head=None)
    shutil.copy(trained_bundle / "models" / "model.pt", other / "models" / "model.pt")  # weights with a det head
    rc, _, err = run_predict(capsys, "--model", other, inputs["png32"], "--out", tmp_path / "out")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "weights do not fit" in lines[0] and "unexpected" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError):
        Predictor(other)


def test_missing_model_and_bad_options(tmp_path, inputs, capsys):
    rc, _, err = run_predict(capsys, "--model", tmp_path / "nothing", inputs["png32"], "--out", tmp_path / "out")
    assert rc == 2 and "no such model" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_predict(capsys, "--model", tmp_path, inputs["png32"], "--out", tmp_path / "o", "--threshold", "2")
    assert rc == 2 and "--threshold" in err


def test_a_model_without_predicting_heads(tmp_path):
    bundle = make_trained_bundle(tmp_path / "recon", tasks=("recon",))
    with pytest.raises(ModelError, match="none of"):
        Predictor(bundle, device=torch.device("cpu"))


def test_out_is_a_file(tmp_path, trained_bundle, inputs, capsys):
    (tmp_path / "out").write_text("")
    rc, _, err = run_predict(capsys, "--model", trained_bundle, inputs["png32"], "--out", tmp_path / "out")
    assert rc == 2 and "is a file" in err

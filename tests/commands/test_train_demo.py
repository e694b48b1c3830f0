"""``ctmtl train`` and ``ctmtl demo``: the CLI over the bundle's workflows, on the synthetic data at 32 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctmtl.cli import main
from ctmtl.commands.train import config_files, parse_overrides
from ctmtl.errors import ConfigError

TINY = ["-o", "image_size=[32,32]", "-o", "encoder=small", "-o", "batch_size=8", "-o", "num_workers=0"]


def test_overrides_parse_as_yaml():
    assert parse_overrides(["image_size=[64, 64]", "plan=joint", "learning_rate=1e-3", "amp=false", "x="]) == {
        "image_size": [64, 64], "plan": "joint", "learning_rate": 1e-3, "amp": False, "x": ""}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["encoder"])


def test_config_layering(tmp_path):
    from ctmtl.bundle import config_file

    shipped = config_file("train.json")
    assert config_files(None) == [shipped]
    small = tmp_path / "mine.yaml"
    small.write_text("encoder: resnet18\nplan: joint\n")
    assert config_files(small) == [shipped, small]  # an override file is layered on the shipped train.json
    assert config_files(shipped) == [shipped]  # a full train config stands alone
    with pytest.raises(ConfigError, match="no such config file"):
        config_files(tmp_path / "missing.json")


def test_train_missing_manifest_fails_at_once(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "-o", f"dataset_manifest={tmp_path / 'nope.json'}", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "models" / "model.pt").exists()


def test_demo_scale_never_mixes_with_data_of_another_preset(tmp_path, capsys):
    """``--scale`` reaches the data step: a demo folder holding another preset's synthetic set is an error at once."""
    data = tmp_path / "demo" / "data" / "synthetic"
    data.mkdir(parents=True)
    record = {"format": "other", "seed": 0, "config": {}}
    (data / "synth.json").write_text(json.dumps(record))
    code = main(["demo", "--out", str(tmp_path / "demo"), "--scale", "medium", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "another seed or scale" in err and "--scale medium" in err
    assert json.loads((data / "synth.json").read_text()) == record  # left as it was
    assert not (tmp_path / "demo" / "models").exists()


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, capsys):
    """The demo's wiring end to end (tiny values): data, staged training, test evaluation, report."""
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), *TINY, "-o", "epochs={cr: 1, sr: 1, dr: 1, joint: 1}", "-o", "val_interval=1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "demo_summary.json").read_text())
    test = summary["test"]
    for key in ("class_accuracy", "seg_dice", "det_ap50", "recon_psnr"):
        assert key in test, key
    assert 0.0 <= test["class_accuracy"] <= 1.0 and 0.0 <= test["seg_dice"] <= 1.0
    report = Path(summary["report"])
    text = report.read_text()
    assert "Demo targets" in text and "segmentation Dice" in text
    # each stage's best weights scored on its own tasks (the papers' per-stage protocol)
    assert list(summary["stages"]) == ["cr", "sr", "dr", "joint"]
    assert summary["stages"]["cr"]["tasks"] == ["class", "recon"] and "class_accuracy" in summary["stages"]["cr"]
    assert "seg_dice" not in summary["stages"]["cr"] and "det_ap50" in summary["stages"]["dr"]
    assert (out / "stages" / "sr" / "report.md").is_file() and "[report](stages/sr/report.md)" in text
    assert list(report.parent.glob("*.png")), "the report has no plots"
    # the run folder is a trained bundle with the values it was trained with
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert inference["image_size"] == [32, 32] and inference["encoder"] == "small"
    from ctmtl.inference import load_model

    model = load_model(out, device="cpu")
    assert model.image_size == (32, 32) and set(model.tasks) == {"class", "seg", "recon", "det"}
    history = json.loads((out / "runs" / "metrics.json").read_text())
    assert [r["stage"] for r in history["epochs"]] == ["cr", "sr", "dr", "joint"]
    assert "demo finished" in printed


@pytest.mark.slow
def test_killed_run_resumes_to_the_planned_epochs(tmp_path):
    """Kill a training process after its first checkpoint (mid-way through the next epoch); ``--resume`` finishes
    the plan with the same epochs, continuing the run's own configs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "-o", "plan=joint", "-o", "epochs=4", "-o", "tasks=[class,seg,recon]",
            "-o", "patience=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ctmtl.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = out / "runs" / "checkpoints"
    deadline = time.time() + 300
    try:
        while not list(checkpoints.glob("last_*epoch=*.pt")):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    history = json.loads((out / "runs" / "metrics.json").read_text())["epochs"]
    assert 1 <= len(history) < 4
    assert not (out / "models" / "model.pt").exists()

    assert main(["train", "--out", str(out), "--resume"]) == 0
    history = json.loads((out / "runs" / "metrics.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert (out / "models" / "model.pt").is_file()
    # a finished run is not trained again by accident
    assert main(["train", "--out", str(out), *TINY]) == 2

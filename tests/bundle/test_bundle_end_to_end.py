"""End to end with ``python -m monai.bundle run``: train on the synthetic default, then evaluate and predict with the
trained bundle's own configs; the same with two ``torchrun`` processes (gloo on CPU)."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

#: metrics that must be numbers in [0, 1] after any training, however short
UNIT_METRICS = ("class_accuracy", "class_f1_macro", "seg_dice", "seg_iou", "seg_specificity", "recon_ssim", "det_map",
                "det_ap50", "det_recall")


@pytest.fixture(scope="module")
def evaluated(cli, trained):
    """``test_metrics.json`` of ``evaluate.json`` run in the trained bundle."""
    configs = trained / "configs"
    cli.ok(cli.run("run", "--config_file", str(configs / "evaluate.json"), "--bundle_root", str(trained), cwd=trained))
    return json.loads((trained / "runs" / "test_metrics.json").read_text())


def test_training_leaves_a_trained_bundle(trained):
    from ctmtl.inference import load_model

    for name in ("model.pt", "best_cr.pt", "best_sr.pt", "best_dr.pt"):
        assert (trained / "models" / name).is_file(), name
    runs = trained / "runs"
    assert len(list((runs / "checkpoints").glob("last_checkpoint_epoch=3.pt"))) == 1
    assert list((runs / "tensorboard").glob("events.out.tfevents.*")) and (runs / "train.log").is_file()
    record = json.loads((runs / "metrics.json").read_text())
    assert [row["stage"] for row in record["epochs"]] == ["cr", "sr", "dr"]
    assert {m["source"] for m in record["data"]["manifests"]} == {"merged"}
    assert set(record["data"]["splits"]["train"]["datasets"]) == {"synthetic-medseg", "synthetic-ucsd-ai4h", "synthetic-lung-pet-ct-dx"}
    assert (runs / "metrics.csv").read_text().startswith("epoch,stage,lr,")
    loaded = load_model(trained, device="cpu")  # the trained-bundle contract: its own configs build the network
    assert loaded.tasks == ("class", "seg", "recon", "det") and loaded.image_size == (32, 32)
    assert loaded.chain_overrides == {"spatial_size": [32, 32]}


def test_evaluation_writes_metrics_and_report(trained, evaluated):
    assert evaluated["split"] == "test" and evaluated["tasks"] == ["class", "seg", "recon", "det"]
    assert evaluated["model"] == str(trained / "models" / "model.pt")
    metrics = evaluated
    for key in UNIT_METRICS:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["class_n"] > 0 and metrics["seg_n"] > 0 and metrics["det_n"] > 0
    assert math.isfinite(metrics["recon_psnr"])
    report = (trained / "runs" / "report.md").read_text()
    assert "## Test metrics" in report and "## Training" in report and "## Test examples" in report
    for png in ("roc_class.png", "confusion_matrix.png", "loss_curves.png", "overlay_masks.png", "overlay_boxes.png"):
        assert (trained / "runs" / png).is_file(), png


def test_inference_writes_masks_on_the_original_grid_and_json(cli, trained):
    out = trained / "runs" / "predictions"
    cli.ok(cli.run("run", "--config_file", str(trained / "configs" / "inference.json"), "--bundle_root", str(trained),
                   cwd=trained))
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions["image_size"] == [32, 32] and predictions["class_names"] == ["covid-19", "non-covid", "cancer"]
    entries = predictions["entries"]
    assert entries and all(e["split"] == "test" for e in entries)
    for entry in entries:
        mask = nib.load(out / entry["mask"])
        if entry["image"].endswith(".nii.gz"):
            image = nib.load(entry["image"])
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        for row in entry["slices"]:
            assert abs(sum(row["class_probabilities"].values()) - 1) < 1e-4
            assert all(b["score"] >= 0.5 and len(b["box"]) == 4 for b in row["boxes"])


def test_torchrun_trains_with_ddp_and_saves_plain_weights(cli, synthetic, tmp_path):
    from ctmtl.bundle import load_weights
    from ctmtl.networks import MultiTaskNet

    root = tmp_path / "run"
    configs = f"['{cli.configs / 'train.json'}','{cli.configs / 'multi_gpu_train.json'}']"
    result = cli.run("run", "--config_file", configs,
                     *cli.args(bundle_root=str(root), dataset_dir=str(synthetic["dir"]), tasks=["class", "seg", "recon"],
                               **{**cli.tiny, "batch_size": 8}),
                     cwd=tmp_path, torchrun=True)
    cli.ok(result)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    load_weights(MultiTaskNet("small", tasks=("class", "seg", "recon"), image_size=(32, 32)), root / "models" / "model.pt")
    record = json.loads((root / "runs" / "metrics.json").read_text())
    assert [row["stage"] for row in record["epochs"]] == ["cr", "sr"]
    assert record["epochs"][1]["val"]["seg_n"] == record["data"]["splits"]["val"]["tasks"]["seg"]  # gathered, not a shard


def test_multi_gpu_evaluation_gives_the_single_process_metrics(cli, trained, evaluated, tmp_path):
    configs = trained / "configs"
    files = f"['{configs / 'evaluate.json'}','{configs / 'multi_gpu_evaluate.json'}']"
    out = tmp_path / "eval"
    cli.ok(cli.run("run", "--config_file", files, "--bundle_root", str(trained), "--output_dir", str(out), cwd=tmp_path,
                   torchrun=True))
    single, multi = evaluated, json.loads((out / "test_metrics.json").read_text())
    assert multi.keys() == single.keys()
    for key, value in single.items():
        if not key.startswith(("class_", "seg_", "recon_", "det_")):
            continue
        np.testing.assert_allclose(np.asarray(multi[key], dtype=float), np.asarray(value, dtype=float), rtol=1e-5,
                                   atol=1e-6, err_msg=key)

"""The bundle's configs under MONAI's own tools: metadata schema, workflow properties, network in/out, TorchScript
export; and the data a run reads: a swapped data set is recorded, a missing manifest stops it at once."""

from __future__ import annotations

import json

import pytest
import torch

from ctmtl.bundle import bundle_path, config_file, run_workflow
from ctmtl.data.pipeline import torch_threads
from ctmtl.errors import ConfigError, ManifestError


def test_metadata_verifies_against_the_schema_offline(cli, tmp_path):
    if not cli.schema.is_file():
        pytest.skip(f"schema {cli.schema} not available")
    result = cli.run("verify_metadata", "--meta_file", str(cli.configs / "metadata.json"), "--filepath", str(cli.schema),
                     cwd=tmp_path)
    cli.ok(result)
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_train_workflow_has_every_required_property(cli, synthetic, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(cli.configs / "train.json"), workflow_type="train", logging_file=False,
                              bundle_root=str(tmp_path / "run"), dataset_dir=str(synthetic["dir"]), **cli.tiny)
    with torch_threads(1):
        workflow.initialize()
        assert workflow.check_properties() == []
        assert workflow.max_epochs == 3  # the staged plan, one epoch per stage
        assert workflow.train_dataset.split == "train" and workflow.evaluator.tasks == ("class", "seg", "recon", "det")
        workflow.max_epochs = 2  # MONAI's property caps the plan: the last stage is left out
        workflow.initialize()
        assert [s.epochs for s in workflow.trainer.stages] == [1, 1, 0] and workflow.trainer.state.max_epochs == 2


@pytest.mark.parametrize("name, kind", [("inference", "inference"), ("evaluate", "eval")])
def test_inference_and_evaluate_workflows_have_every_required_property(random_bundle, name, kind):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(random_bundle / "configs" / f"{name}.json"), workflow_type=kind,
                              logging_file=False, bundle_root=str(random_bundle))
    with torch_threads(1):
        workflow.initialize()
        assert workflow.check_properties() == []


def test_verify_net_in_out_on_the_segmentation_path(random_bundle):
    from monai.bundle import verify_net_in_out

    configs = random_bundle / "configs"
    verify_net_in_out(net_id="network_seg", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu", bundle_root=str(random_bundle))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_ckpt_export_scripts_the_segmentation_path(cli, random_bundle):
    from ctmtl.inference import load_model

    configs, exported = random_bundle / "configs", random_bundle / "models" / "model_seg.ts"
    result = cli.run("ckpt_export", "network_seg", "--filepath", str(exported),
                     "--ckpt_file", str(random_bundle / "models" / "model.pt"), "--meta_file", str(configs / "metadata.json"),
                     "--config_file", str(configs / "inference.json"), "--bundle_root", str(random_bundle), cwd=random_bundle)
    cli.ok(result)
    scripted = torch.jit.load(str(exported), map_location="cpu").eval()
    eager = load_model(random_bundle, device="cpu").network.segmentation_module().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)


def test_a_missing_manifest_stops_the_run_before_any_work(cli, synthetic, tmp_path):
    root, missing = tmp_path / "run", tmp_path / "data" / "ucsd.json"
    with pytest.raises(ManifestError) as err:
        run_workflow(config_file("train"), "train", logging_file=False, bundle_root=str(root),
                     dataset_dir=str(synthetic["dir"]), dataset_manifest=str(missing), **cli.tiny)
    assert err.value.problems == [f"dataset_manifest: manifest {missing} not found"]
    assert not root.exists()  # nothing copied, trained or logged

    result = cli.run("run", "--config_file", str(cli.configs / "train.json"),
                     *cli.args(bundle_root=str(root), dataset_manifest=str(missing), **cli.tiny), cwd=tmp_path)
    assert result.returncode != 0
    assert f"ManifestError: dataset_manifest: manifest {missing} not found" in result.stderr
    assert not root.exists()


def test_training_on_another_data_set_records_it(cli, synthetic, tmp_path):
    root, ucsd = tmp_path / "run", synthetic["ucsd-ai4h"]
    with torch_threads(1):
        run_workflow(config_file("train"), "train", logging_file=False, bundle_root=str(root),
                     dataset_dir=str(synthetic["dir"]), dataset_manifest=str(ucsd), tasks=["class", "recon"], **cli.tiny)
    record = json.loads((root / "runs" / "metrics.json").read_text())
    assert record["data"]["manifests"] == [{"path": str(ucsd.resolve()), "name": "synthetic-ucsd-ai4h", "source": "ucsd-ai4h"}]
    for split in ("train", "val"):
        counts = record["data"]["splits"][split]
        assert set(counts["datasets"]) == {"ucsd-ai4h"} and counts["slices"] == counts["datasets"]["ucsd-ai4h"] > 0
    assert [row["stage"] for row in record["epochs"]] == ["cr"]
    inference = json.loads((root / "configs" / "inference.json").read_text())
    assert inference["dataset_manifest"] == [str(ucsd.resolve())] and inference["tasks"] == ["class", "recon"]
    assert (root / "models" / "model.pt").is_file()
    with pytest.raises(ConfigError, match=r"model.pt: exists; bundle_root .* holds an earlier run"):
        run_workflow(root / "configs" / "train.json", "train", logging_file=False, bundle_root=str(root))


@pytest.mark.parametrize("name", ["train", "evaluate", "inference"])
def test_encoder_and_detection_kwargs_reach_the_network(name):
    """``det_kwargs`` / ``encoder_kwargs`` / ``class_dropout`` / ``class_pool`` / ``class_levels`` and the test-time
    flips are config values of every workflow, so a trained bundle rebuilds the network it trained and calls it as it
    was validated (here: the pyramid one level finer, strides 4/8/16, instance norm in the encoder, no dropout in the
    classification MLP, global max pooling of the three deepest maps before it, left-right mirroring)."""
    from monai.bundle import ConfigParser
    from torch import nn

    parser = ConfigParser()
    parser.read_config(str(bundle_path() / "configs" / f"{name}.json"))
    parser.update({"encoder": "small", "image_size": [64, 64], "det_kwargs": {"levels": [1, 2, 3], "nms_thresh": 0.4},
                   "encoder_kwargs": {"norm": "instance"}, "class_dropout": 0.0, "class_pool": "max",
                   "class_levels": [2, 3, 4], "tta_flip_axes": [1]})
    net = parser.get_parsed_content("network_def", instantiate=True)
    dropouts = lambda model: [m.p for m in model.heads["class"].modules() if isinstance(m, nn.Dropout)]  # noqa: E731
    assert net.heads["det"].detector.network.feature_extractor.strides == [4, 8, 16]
    norms = {type(m) for m in net.encoder.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))}
    assert norms == {nn.InstanceNorm2d}
    assert set(dropouts(net)) <= {0.0}
    assert isinstance(net.heads["class"].pool, nn.AdaptiveMaxPool2d)
    assert net.heads["class"].levels == (2, 3, 4) and net.heads["class"].mlp.hidden_0[0].in_features == 32 + 64 + 128
    inferer = "validate#inferer" if name == "train" else "inferer"
    mirroring = parser.get_parsed_content(inferer, instantiate=True)
    assert mirroring.spatial_axes == (1,) and mirroring.nms_thresh == 0.4  # the views merge as the head selects boxes
    parser.update({"det_kwargs": {}, "encoder_kwargs": {}, "class_dropout": 0.5, "class_pool": "avg",
                   "class_levels": [-1], "tta_flip_axes": []})
    default = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    assert default.heads["det"].detector.network.feature_extractor.strides == [8, 16, 32]
    assert dropouts(default) and set(dropouts(default)) == {0.5}  # the paper's MLP dropout by default
    assert isinstance(default.heads["class"].pool, nn.AdaptiveAvgPool2d)
    assert default.heads["class"].levels == (-1,) and default.heads["class"].mlp.hidden_0[0].in_features == 128
    assert parser.get_parsed_content(inferer, instantiate=True, lazy=False).spatial_axes == ()  # one plain pass

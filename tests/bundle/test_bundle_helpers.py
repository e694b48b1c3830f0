"""ctmtl.bundle helpers and the distributed-evaluation pieces of ctmtl.engines.handlers, without running a workflow."""

from __future__ import annotations

import json

import pytest
import torch

from ctmtl.bundle import (
    SegmentationExport,
    bundle_path,
    config_file,
    export_trained_bundle,
    load_weights,
    plan_epochs,
    plan_stages,
    resolve_manifests,
)
from ctmtl.engines.handlers import BatchShardSampler, GatheredMetricAdapter, jsonable
from ctmtl.engines.metrics import MultiTaskMetrics
from ctmtl.errors import ConfigError, ManifestError, ModelError
from ctmtl.networks import MultiTaskNet


def test_bundle_path_finds_the_shipped_bundle(cli):
    assert bundle_path() == cli.bundle
    assert config_file("train") == cli.configs / "train.json"
    with pytest.raises(ConfigError, match="no-such-bundle"):
        bundle_path("no-such-bundle")


def test_resolve_manifests_takes_paths_lists_and_ids(synthetic, tmp_path):
    data = synthetic["dir"]
    assert resolve_manifests("merged", data) == [synthetic["merged"].resolve()]
    assert resolve_manifests(["ucsd-ai4h", str(synthetic["medseg"])], data) == [
        synthetic["ucsd-ai4h"].resolve(), synthetic["medseg"].resolve()]
    missing = tmp_path / "nope" / "manifest.json"
    with pytest.raises(ManifestError) as err:
        resolve_manifests([str(synthetic["medseg"]), str(missing)], data)
    assert err.value.problems == [f"dataset_manifest: manifest {missing} not found"]
    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)  # a real data set without a merged manifest: never overwritten
    with pytest.raises(ManifestError, match=r"manifests/merged.json not found \(id 'merged'"):
        resolve_manifests("merged", real)
    with pytest.raises(ManifestError, match="no manifest given"):
        resolve_manifests([], data)


def test_export_trained_bundle_writes_values_and_never_overwrites(cli, tmp_path):
    root = tmp_path / "run"
    export_trained_bundle(root, {"image_size": [64, 64], "encoder": "small", "plan": "joint"})
    for name in ("train", "evaluate", "inference"):
        config = json.loads((root / "configs" / f"{name}.json").read_text())
        assert config["image_size"] == [64, 64] and config["encoder"] == "small"
        assert ("plan" in config) == (name == "train")  # a key is written only where the config defines it
    assert (root / "LICENSE").is_file() and (root / "docs" / "README.md").is_file()
    assert json.loads((cli.configs / "train.json").read_text())["image_size"] == [256, 256]

    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"weights")
    with pytest.raises(ConfigError, match=r"model.pt: exists; bundle_root .* holds an earlier run"):
        export_trained_bundle(root, {"image_size": [32, 32]})
    export_trained_bundle(root, {"image_size": [32, 32]}, resume=True)
    assert json.loads((root / "configs" / "inference.json").read_text())["image_size"] == [32, 32]

    foreign = tmp_path / "project"
    (foreign / "docs").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is not a copy of the bundle"):
        export_trained_bundle(foreign, {})
    with pytest.raises(ConfigError, match="'loss': not JSON-serialisable"):
        export_trained_bundle(tmp_path / "other", {"loss": torch.nn.L1Loss()})


def test_plan_stages_freezes_named_stages_and_counts_epochs():
    stages = plan_stages("staged", {"cr": 2, "sr": 3, "dr": 4}, ["sr", "dr"], tasks=["class", "seg", "recon"])
    assert [(s.name, s.epochs, s.freeze_encoder) for s in stages] == [("cr", 2, False), ("sr", 3, True)]
    assert plan_epochs(stages) == 5
    assert all(s.freeze_encoder for s in plan_stages("joint", 1, True))
    with pytest.raises(ConfigError, match=r"freeze_encoder names stages \['xx'\]"):
        plan_stages("staged", 1, ["xx"])


def test_plan_stages_sets_the_learning_rate_of_named_stages():
    stages = plan_stages("staged_joint", 1, stage_lr={"joint": 1e-4})
    assert [(s.name, s.lr) for s in stages] == [("cr", None), ("sr", None), ("dr", None), ("joint", 1e-4)]
    own = [{"name": "a", "tasks": ["seg"], "epochs": 1, "lr": 0.01}, {"name": "b", "tasks": ["class"], "epochs": 1}]
    assert [s.lr for s in plan_stages(own, stage_lr={"a": 1e-5, "b": 1e-5})] == [0.01, 1e-5]  # the stage's own wins
    with pytest.raises(ConfigError, match=r"stage_lr names stages \['jont'\]"):
        plan_stages("staged_joint", 1, stage_lr={"jont": 1e-4})


def test_load_weights_is_strict(tmp_path):
    net = MultiTaskNet("small", tasks=("class", "seg"), image_size=(32, 32), det_head=None)
    with pytest.raises(ModelError, match="no trained weights"):
        load_weights(net, tmp_path / "model.pt")
    other = MultiTaskNet("small", tasks=("seg",), image_size=(32, 32), det_head=None)
    torch.save(other.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelError, match="missing"):
        load_weights(net, tmp_path / "model.pt")


def test_segmentation_export_loads_the_whole_network_strictly():
    source = MultiTaskNet("small", image_size=(32, 32))
    target = SegmentationExport(MultiTaskNet("small", image_size=(32, 32)))
    target.load_state_dict(source.state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.eval().segmentation_module()(x))
    with pytest.raises(ModelError, match="unexpected"):
        SegmentationExport(MultiTaskNet("small", tasks=("seg",), det_head=None)).load_state_dict(source.state_dict())


def test_batch_shard_sampler_deals_whole_batches_round_robin():
    shards = [list(BatchShardSampler(10, 3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert shards == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]
    assert [len(BatchShardSampler(10, 3, num_replicas=2, rank=r)) for r in (0, 1)] == [2, 2]
    with pytest.raises(ConfigError, match="2 batches of 3, fewer than the 3 processes"):
        BatchShardSampler(6, 3, num_replicas=3, rank=0)


def test_gathered_metric_adapter_equals_the_plain_one_in_one_process():
    torch.manual_seed(0)
    batches = []
    for _ in range(3):
        batch = {"class": torch.randint(0, 3, (4,)), "has": {"class": torch.ones(4, dtype=torch.bool)}}
        batches.append(({"class": torch.randn(4, 3)}, batch))
    plain, gathered = MultiTaskMetrics(("class",)), GatheredMetricAdapter(MultiTaskMetrics(("class",)))
    for pred, batch in batches:
        plain.update(pred, batch)
        gathered.update((pred, batch))
    assert jsonable(gathered.compute()) == jsonable(plain.compute())


def test_jsonable_writes_strict_json():
    value = {"a": float("nan"), "b": torch.tensor([1.5, float("inf")]), "c": (1, 2)}
    assert json.loads(json.dumps(jsonable(value), allow_nan=False)) == {"a": None, "b": [1.5, None], "c": [1, 2]}

"""Chain files: each parses with MONAI's ConfigParser and turns a sample of its source kind into the per-sample
contract; parameters can be overridden; a new chain is one file named in a manifest; bad chains fail with one
line naming the manifest and the chain."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

import ctmtl_tiny_data as tiny_data  # loaded by conftest.py
from ctmtl.data.chains import Chain, available_chains, chain_config, check_manifest_chains, find_chain, load_chain, manifest_chains
from ctmtl.data.manifest import load_manifest
from ctmtl.data.pipeline import SliceDataset, check_sample, entry_request
from ctmtl.errors import ChainError
from ctmtl.transforms import BoxesFromMask

SHIPPED = ("ct_volume_hu", "medseg_volume", "dicom_series", "slice_8bit", "train_augment", "inference_post")
SOURCE_CHAINS = {"volume": "ct_volume_hu", "dicom": "dicom_series", "slice": "slice_8bit"}


def test_shipped_chains_are_package_data():
    files = {p.name for p in resources.files("ctmtl.chains").iterdir()}
    assert {f"{name}.json" for name in SHIPPED} <= files
    assert set(SHIPPED) <= set(available_chains())


@pytest.mark.parametrize("name", SHIPPED)
def test_each_chain_file_parses_with_config_parser(name):
    path = find_chain(name)
    config, _ = chain_config(name)  # _extends_ resolved
    parser = ConfigParser(config)
    steps = parser.get_parsed_content("transforms")
    assert steps and all(callable(s) for s in steps)
    raw = ConfigParser.load_config_file(path)
    assert "transforms" in raw or "_extends_" in raw
    chain = load_chain(name)
    assert isinstance(chain, Chain) and isinstance(chain, Compose) and chain.path == path
    assert chain.is_random == (name == "train_augment")


def _run(chain_name, manifest_path, index=0, overrides=None):
    manifest = load_manifest(manifest_path)
    chain = load_chain(chain_name, overrides)
    return manifest, chain(entry_request(manifest, index, chain))


def test_ct_volume_chain_gives_the_contract_with_mask_and_boxes(sources):
    manifest, out = _run("ct_volume_hu", sources["volume"], overrides={"spatial_size": [64, 64]})
    assert [s["meta"]["slice"] for s in out] == [1, 2, 3, 4]
    for s in out:
        check_sample(s)
        assert s["image"].shape == (1, 64, 64) and s["mask"].shape == (1, 64, 64)
        assert s["meta"]["chain"] == "ct_volume_hu" and s["meta"]["intensity"] == "hu"
        # boxes (derived from the native mask, then scaled) sit on the resized mask's lesions
        ref, _ = BoxesFromMask()(s["mask"])
        assert len(ref) == len(s["boxes"])
        if len(ref):
            from monai.data.box_utils import box_iou

            assert float(box_iou(s["boxes"], ref).max(1).values.min()) > 0.7
    assert out[0]["tasks"] == {"class": False, "seg": True, "recon": True, "det": True}
    assert out[0]["mask"].sum() == 0 and out[1]["mask"].sum() > 0  # slice 1 is lesion-free


def test_dicom_chain_boxes_follow_the_resize(sources):
    _, out = _run("dicom_series", sources["dicom"], overrides={"spatial_size": [80, 96]})  # series is 40 x 48: x2
    by_slice = {s["meta"]["slice"]: s for s in out}
    assert set(by_slice) == {1, 2, 3}
    for s in out:
        check_sample(s)
        assert "mask" not in s and s["class"].item() == 2 and s["tasks"]["det"]
    torch.testing.assert_close(by_slice[1]["boxes"], torch.tensor([[20.0, 24.0, 44.0, 40.0]]))
    assert by_slice[2]["boxes"].shape == (0, 4) and len(by_slice[3]["boxes"]) == 2


def test_slice_chain_8bit_with_mask(sources):
    _, out = _run("slice_8bit", sources["slice"], overrides={"spatial_size": [80, 112], "merge_labels": False})  # 40 x 56: x2
    (s,) = out
    check_sample(s)
    assert set(s["mask"].unique().tolist()) == {0, 1, 2} and "boxes" not in s  # detection not listed
    assert s["class"].item() == 0 and s["meta"]["slice"] == 0


def test_medseg_chain_undoes_the_stored_rotation(tmp_path):
    tiny_data.write_volume_pair(tmp_path, "up", shape=(48, 40, 4), seed=5)
    tiny_data.write_volume_pair(tmp_path, "stored", shape=(48, 40, 4), seed=5, transpose=True)
    entries = [
        {"id": n, "kind": "volume", "image": f"{n}_im.nii.gz", "mask": f"{n}_mask.nii.gz", "patient": n, "split": "train",
         "tasks": ["segmentation"], "transforms": chain}
        for n, chain in (("up", "ct_volume_hu"), ("stored", "medseg_volume"))
    ]
    ds = SliceDataset(tiny_data.write_manifest(tmp_path / "m.json", entries), overrides={"spatial_size": [48, 40]})
    up = [ds[i] for i in range(len(ds)) if ds[i]["meta"]["entry_id"] == "up"]
    stored = [ds[i] for i in range(len(ds)) if ds[i]["meta"]["entry_id"] == "stored"]
    assert stored[0]["meta"]["geometry"][0]["op"] == "orient"
    for a, b in zip(up, stored):
        torch.testing.assert_close(a["mask"].as_tensor(), b["mask"].as_tensor())
        torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())


def test_parameters_are_overridable(sources):
    _, out = _run("ct_volume_hu", sources["volume"], overrides={"spatial_size": [32, 48], "equalise": False, "window": [-1000, 0]})
    s = out[1]
    assert s["image"].shape == (1, 32, 48)
    # without equalisation, lung (~ -850 HU) sits near 0.15 in the [-1000, 0] window
    assert float(s["image"].min()) < 0.05 and float(np.median(s["image"].numpy())) < 0.5
    chain = load_chain("ct_volume_hu", {"not_a_parameter": 1})  # ignored: one override dict serves every chain
    assert "not_a_parameter" not in chain.params
    with pytest.raises(ChainError, match="no parameter 'not_a_parameter'"):
        load_chain("ct_volume_hu", {"not_a_parameter": 1}, strict=True)


def test_extends_and_its_loop(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"_extends_": "b", "x": 1}))
    (tmp_path / "b.json").write_text(json.dumps({"_extends_": "a.json", "transforms": [{"_target_": "Identityd", "keys": "image"}]}))
    with pytest.raises(ChainError, match="_extends_ loop"):
        chain_config(tmp_path / "a.json")
    chain = load_chain("medseg_volume")
    assert chain.params["rotate_medseg"] is True and chain.params["spatial_size"] == [256, 256]


def test_a_new_chain_is_one_file_named_in_a_manifest(tmp_path, sources):
    """No Python change: write a chain file beside the data, name it in the manifest, and the pipeline uses it."""
    src = Path(sources["slice"]).parent
    chain = {
        "_desc_": "8-bit slices at 32 x 32, no equalisation",
        "size": [32, 32],
        "transforms": [
            {"_target_": "ctmtl.transforms.LoadImage2Dd", "keys": ["image", "mask"], "allow_missing_keys": True},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "ctmtl.transforms.SelectSlicesd", "keys": ["image", "mask"], "allow_missing_keys": True},
            {"_target_": "ctmtl.transforms.ResizeWithBoxesd", "keys": ["image", "mask"], "spatial_size": "@size", "allow_missing_keys": True},
            {"_target_": "ctmtl.transforms.ClassToIndexd", "keys": "class", "allow_missing_keys": True},
            {"_target_": "ctmtl.transforms.RecordTasksd"},
        ],
    }
    (tmp_path / "my_chain.json").write_text(json.dumps(chain))
    data = json.loads(Path(sources["slice"]).read_text())
    data["transforms"] = "my_chain.json"  # relative to the manifest
    for e in data["entries"]:
        e["image"] = str(src / e["image"])
        if "mask" in e:
            e["mask"] = str(src / e["mask"])
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(data))
    ds = SliceDataset(manifest)
    assert len(ds) == 4
    for i in range(len(ds)):
        s = ds[i]
        assert s["meta"]["chain"] == "my_chain.json" and s["image"].shape == (1, 32, 32)
    # the same file found by name through CTMTL_CHAIN_PATH
    data["transforms"] = "my_chain"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ChainError, match="'my_chain': not found"):
        SliceDataset(manifest)


def test_chain_path_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "extra_chain.yaml").write_text("transforms:\n  - _target_: Identityd\n    keys: image\n")
    monkeypatch.setenv("CTMTL_CHAIN_PATH", str(tmp_path))
    assert "extra_chain" in available_chains()
    assert load_chain("extra_chain").path == tmp_path / "extra_chain.yaml"


def _bad_manifest(tmp_path, sources, chain_value):
    data = json.loads(Path(sources["slice"]).read_text())
    data["transforms"] = chain_value
    src = Path(sources["slice"]).parent
    for e in data["entries"]:
        e["image"] = str(src / e["image"])
        e.pop("mask", None)
        e["tasks"] = [t for t in e["tasks"] if t != "segmentation"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


BAD_CHAINS = {
    "unknown": (None, "'no_such_chain': not found"),
    "unparsable": ('{"transforms": [ {"_target_": "Identityd", ', "does not parse"),
    "missing class": ('{"transforms": [{"_target_": "ctmtl.transforms.NoSuchTransformd", "keys": "image"}]}', "NoSuchTransformd"),
    "bad argument": ('{"transforms": [{"_target_": "ctmtl.transforms.SelectSlicesd", "kes": "image"}]}', "cannot be built"),
    "random step": ('{"transforms": [{"_target_": "RandFlipd", "keys": "image", "prob": 0.5}]}', "random steps"),
    "no steps": ('{"window": [0, 1]}', "needs a non-empty list 'transforms'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHAINS))
def test_bad_chain_is_one_line_naming_manifest_and_chain(tmp_path, sources, case):
    text, expected = BAD_CHAINS[case]
    if text is None:
        chain_value = "no_such_chain"
    else:
        (tmp_path / "broken.json").write_text(text)
        chain_value = "broken.json"
    path = _bad_manifest(tmp_path, sources, chain_value)
    problems = check_manifest_chains(load_manifest(path))
    assert len(problems) == 1
    line = problems[0]
    assert str(path) in line and chain_value in line and expected in line and "\n" not in line
    with pytest.raises(ChainError) as err:
        SliceDataset(path)  # before any data is read or training starts
    assert err.value.problems == problems
    with pytest.raises(ChainError):
        manifest_chains(load_manifest(path))


def test_manifest_check_cli_exits_non_zero_on_a_bad_chain(tmp_path, sources, capsys):
    from ctmtl.cli import main

    path = _bad_manifest(tmp_path, sources, "no_such_chain")
    rc = main(["manifest", "check", str(path)])
    err = [line for line in capsys.readouterr().err.splitlines() if "no_such_chain" in line]
    assert rc != 0 and len(err) == 1 and str(path) in err[0]

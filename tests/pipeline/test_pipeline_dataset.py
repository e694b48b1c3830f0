"""SliceDataset: per-entry chains, a merged batch, reading each file once, the disk cache, augmentation after
the cache, and bad input reported at construction as one line naming the entry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ctmtl_tiny_data as tiny_data  # loaded by conftest.py
import ctmtl.transforms.io as load_io
from ctmtl.data.manifest import load_manifest
from ctmtl.data.pipeline import SliceDataset, check_sample, multitask_collate, slice_loader
from ctmtl.errors import DataError

SMALL = {"spatial_size": [32, 32]}


def test_merged_manifest_one_batch_each_sample_through_its_own_chain(sources):
    ds = SliceDataset(sources["merged"], overrides=SMALL)
    manifest = load_manifest(sources["merged"])
    expected = {e["id"]: manifest.chain_of(e) for e in manifest.entries}
    assert len(set(expected.values())) == 3
    batch = multitask_collate([ds[i] for i in range(len(ds))])
    chains = {m["entry_id"]: m["chain"] for m in batch["meta"]}
    assert chains == expected  # read from each sample's meta
    assert batch["image"].shape == (len(ds), 1, 32, 32)
    kinds = {m["kind"]: m["chain"] for m in batch["meta"]}
    assert kinds == {"volume": "ct_volume_hu", "dicom_series": "dicom_series", "slice": "slice_8bit"}
    # labels differ by source: masks for volumes (and one slice), boxes for DICOM and volume 'a', classes for the rest
    has = batch["has"]
    for i, m in enumerate(batch["meta"]):
        assert bool(has["class"][i]) == (m["kind"] != "volume")
        assert bool(has["det"][i]) == (m["entry_id"] in ("volume-a", "dicom-s1"))


def test_split_filter_and_counts(sources):
    ds = SliceDataset(sources["volume"], split="train", overrides=SMALL)
    assert ds.slices_per_entry() == {"a": 4}
    ds = SliceDataset(sources["slice"], split="test", overrides=SMALL)
    assert len(ds) == 1 and ds[0]["meta"]["split"] == "test"


def test_each_volume_is_read_once(sources, monkeypatch):
    calls = []
    real = load_io.read_volume

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(load_io, "read_volume", counting)
    ds = SliceDataset(sources["volume"], overrides=SMALL, augment="train_augment")
    assert len(calls) == 4  # image + mask of two entries
    for _epoch in range(2):
        for i in range(len(ds)):
            check_sample(ds[i])
    assert len(calls) == 4
    naive = SliceDataset(sources["volume"], overrides=SMALL, cache="none")
    calls.clear()
    for i in range(len(naive)):
        naive[i]
    assert len(calls) == 2 * len(naive)  # re-read for every slice


def test_uncached_samples_equal_cached_ones(sources):
    cached = SliceDataset(sources["merged"], overrides=SMALL)
    naive = SliceDataset(sources["merged"], overrides=SMALL, cache="none")
    assert len(cached) == len(naive)
    for i in range(len(cached)):
        a, b = cached[i], naive[i]
        assert a["meta"]["entry_id"] == b["meta"]["entry_id"] and a["meta"]["slice"] == b["meta"]["slice"]
        torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())


def test_disk_cache_is_reused(sources, tmp_path, monkeypatch):
    first = SliceDataset(sources["volume"], overrides=SMALL, cache="disk", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.pt"))

    def fail(*args, **kwargs):
        raise AssertionError("read from disk although cached")

    monkeypatch.setattr(load_io, "read_volume", fail)
    second = SliceDataset(sources["volume"], overrides=SMALL, cache="disk", cache_dir=tmp_path / "cache")
    assert len(second) == len(first)
    torch.testing.assert_close(second[3]["image"].as_tensor(), first[3]["image"].as_tensor())
    # another parameter value is another cache entry
    with pytest.raises(Exception, match="read from disk although cached"):
        SliceDataset(sources["volume"], overrides={"spatial_size": [16, 16]}, cache="disk", cache_dir=tmp_path / "cache")


def test_augmentation_runs_after_the_cache_and_leaves_it_alone(sources):
    ds = SliceDataset(sources["volume"], split="train", overrides=SMALL, augment="train_augment", seed=1)
    plain = SliceDataset(sources["volume"], split="train", overrides=SMALL)
    draws = [ds[2]["image"].as_tensor().clone() for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    torch.testing.assert_close(ds._samples[2]["image"].as_tensor(), plain[2]["image"].as_tensor())


def test_loader_with_a_worker_process(sources):
    ds = SliceDataset(sources["merged"], overrides=SMALL, augment="train_augment")
    loader = slice_loader(ds, batch_size=5, shuffle=True, num_workers=1)
    batches = list(loader)
    assert sum(len(b["meta"]) for b in batches) == len(ds)
    assert all(b["image"].shape[1:] == (1, 32, 32) for b in batches)


def _manifest(tmp_path, entry):
    return tiny_data.write_manifest(tmp_path / "bad.json", [dict({"patient": "p", "split": "train", "tasks": ["segmentation"]}, **entry)])


def _one_line_naming_the_entry(err, path, entry_id):
    assert len(err.problems) == 1
    line = err.problems[0]
    assert str(path) in line and f"id {entry_id!r}" in line and "\n" not in line
    return line


def test_volume_without_slice_axis(tmp_path):
    tiny_data.write_nifti(tmp_path / "flat.nii.gz", np.zeros((32, 32), np.int16))
    path = _manifest(tmp_path, {"id": "flat", "kind": "volume", "image": "flat.nii.gz", "slices": [0, 1, 2], "tasks": ["reconstruction"]})
    with pytest.raises(DataError) as err:
        SliceDataset(path)
    assert "slice axis" in _one_line_naming_the_entry(err.value, path, "flat")


def test_all_nan_mask(tmp_path):
    tiny_data.write_volume_pair(tmp_path, "v", shape=(32, 32, 3))
    tiny_data.write_nifti(tmp_path / "nan.nii.gz", np.full((32, 32, 3), np.nan, np.float32))
    path = _manifest(tmp_path, {"id": "nanmask", "kind": "volume", "image": "v_im.nii.gz", "mask": "nan.nii.gz"})
    with pytest.raises(DataError) as err:
        SliceDataset(path)
    assert "NaN" in _one_line_naming_the_entry(err.value, path, "nanmask")


def test_image_of_size_zero(tmp_path):
    tiny_data.write_nifti(tmp_path / "empty.nii.gz", np.zeros((0, 32, 3), np.int16))
    path = _manifest(tmp_path, {"id": "empty", "kind": "volume", "image": "empty.nii.gz", "tasks": ["reconstruction"]})
    with pytest.raises(DataError) as err:
        SliceDataset(path)
    assert "size 0" in _one_line_naming_the_entry(err.value, path, "empty")


def test_missing_file_and_bad_box(tmp_path, sources):
    path = _manifest(tmp_path, {"id": "gone", "kind": "slice", "image": "gone.png", "tasks": ["reconstruction"]})
    with pytest.raises(DataError) as err:
        SliceDataset(path)
    assert "gone.png" in _one_line_naming_the_entry(err.value, path, "gone")
    tiny_data.write_png(tmp_path / "x.png", (20, 20))
    path = _manifest(tmp_path, {"id": "box", "kind": "slice", "image": "x.png", "tasks": ["detection"],
                                "boxes": [{"box": [2, 2, 50, 10], "label": "lesion"}]})
    with pytest.raises(DataError) as err:
        SliceDataset(path)
    assert "outside" in _one_line_naming_the_entry(err.value, path, "box")


def test_manifest_chain_that_breaks_the_contract(tmp_path):
    tiny_data.write_png(tmp_path / "x.png", (20, 20))
    (tmp_path / "raw.json").write_text(json.dumps({"transforms": [
        {"_target_": "ctmtl.transforms.LoadImage2Dd", "keys": "image"},
        {"_target_": "ctmtl.transforms.SelectSlicesd", "keys": "image"},
        {"_target_": "ctmtl.transforms.RecordTasksd"},
    ]}))
    path = _manifest(tmp_path, {"id": "raw", "kind": "slice", "image": "x.png", "tasks": ["reconstruction"], "transforms": "raw.json"})
    from ctmtl.errors import ChainError

    with pytest.raises(ChainError, match=r"'image' spans \[.*\], expected \[0, 1\]"):
        SliceDataset(path)

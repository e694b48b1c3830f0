"""Merging manifests; patient-level splits; the UCSD builder without an official split."""

from __future__ import annotations

import shutil

import pytest

from ctmtl.data.manifest import load_manifest
from ctmtl.data.merge import merge_manifests, supported_tasks
from ctmtl.data.sources import BuildOptions, block_splits, build_manifest, split_patients
from ctmtl.data.sources.ucsd import source_group
from ctmtl.errors import DataError, ManifestError
from tests.data.conftest import assert_fails, run_cli


@pytest.fixture
def built(tiny_synth, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "manifest", "build", "synthetic", tiny_synth, "-o", tmp_path / "m")
    assert rc == 0, err
    return tmp_path / "m"


def test_merge_rewrites_paths_prefixes_ids_and_cuts_tasks(built, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "deeper" / "merged.json"
    rc, stdout, err = run_cli(capsys, "manifest", "merge", built / "medseg.json", built / "lung-pet-ct-dx.json", "-o", out, "--name", "mix")
    assert rc == 0, err
    merged = load_manifest(out)
    medseg, lung = load_manifest(built / "medseg.json"), load_manifest(built / "lung-pet-ct-dx.json")
    assert len(merged.entries) == len(medseg.entries) + len(lung.entries)
    for entry in merged.entries:
        source = medseg if entry["dataset"] == "synthetic-medseg" else lung
        original = next(e for e in source.entries if f"{source.name}/{e['id']}" == entry["id"])
        assert merged.resolve(entry["image"]) == source.resolve(original["image"])
        assert merged.resolve(entry["image"]).exists()
        assert entry["patient"] == f"{source.name}/{original['patient']}"
        assert entry["transforms"] == source.chain_of(original)
        assert set(entry["tasks"]) <= set(original["tasks"])
        for box, obox in zip(entry.get("boxes", []), original.get("boxes", [])):
            assert merged.resolve(box["annotation"]) == source.resolve(obox["annotation"])
    rc, _, err = run_cli(capsys, "manifest", "check", out)
    assert rc == 0, err
    assert_fails(capsys, ["manifest", "merge", built / "medseg.json", "-o", out], f"manifest {out}: exists")


def test_merge_tasks_filter_and_name_clash(built, tmp_path):
    out = tmp_path / "seg.json"
    merged = merge_manifests([built / "medseg.json", built / "ucsd-ai4h.json"], out, tasks=["segmentation"])
    assert merged["entries"] and all(e["tasks"] == ["segmentation"] for e in merged["entries"])
    assert all(e["dataset"] == "synthetic-medseg" for e in merged["entries"])  # UCSD entries have no mask: dropped
    with pytest.raises(ManifestError, match="also the name of"):
        merge_manifests([built / "medseg.json", built / "medseg.json"], tmp_path / "twice.json")


def test_supported_tasks():
    assert supported_tasks({"class": "cancer", "boxes": [{}]}, ["cancer"]) == ["classification", "reconstruction", "detection"]
    assert supported_tasks({"class": "other", "mask": "m"}, ["cancer"]) == ["segmentation", "reconstruction", "detection"]


def test_split_patients_deterministic_and_disjoint():
    patients = [f"p{i}" for i in range(20)]
    a = split_patients(patients, seed=3, val_fraction=0.2, test_fraction=0.25)
    assert a == split_patients(list(reversed(patients)) + patients, seed=3, val_fraction=0.2, test_fraction=0.25)
    assert sorted(a) == sorted(patients)
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 11, "val": 4, "test": 5}
    assert a != split_patients(patients, seed=4, val_fraction=0.2, test_fraction=0.25)
    assert set(split_patients(["a", "b", "c"], 0, 0.1, 0.1).values()) == {"train", "val", "test"}
    assert list(split_patients(["only"], 0).values()) == ["train"]
    blocks = block_splits(10, 0.2, 0.2)
    assert [list(blocks[s]) for s in ("train", "val", "test")] == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]


def test_bad_fractions():
    with pytest.raises(DataError, match="leave no training data"):
        BuildOptions(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="--test-fraction"):
        BuildOptions(test_fraction=-0.1)


def test_ucsd_without_official_split_groups_by_patient(tiny_synth, tmp_path):
    root = tmp_path / "ucsd"
    shutil.copytree(tiny_synth / "ucsd-ai4h-covid-ct", root)
    shutil.rmtree(root / "Data-split")
    build_manifest("ucsd-ai4h", root, tmp_path / "u.json", BuildOptions(split_seed=5, val_fraction=0.25, test_fraction=0.25))
    manifest = load_manifest(tmp_path / "u.json")  # loading validates: no patient in two splits
    for klass in ("covid-19", "non-covid"):
        assert {e["split"] for e in manifest.entries if e["class"] == klass} == {"train", "val", "test"}


def test_source_group():
    assert source_group("2020.02.10.20021584-p6-52%3.png") == "2020.02.10.20021584"
    assert source_group("2020.03.18.20038125-p16-56-5.png") == "2020.03.18.20038125"
    assert source_group("PIIS0140673620303603%7.png") == "PIIS0140673620303603"
    assert source_group("ehaa254-p0-63%3.png") == "ehaa254"
    assert source_group("26%1.jpg") == "26" and source_group("1048.png") == "1048"


def test_example_manifests_are_valid():
    """The documented examples in data_manifests/ are sound manifests (structure only: the data is not here)."""
    import json
    from pathlib import Path

    from ctmtl.data.manifest import validate_manifest_dict

    examples = sorted((Path(__file__).resolve().parents[2] / "data_manifests").glob("*.example.json"))
    assert {p.name for p in examples} >= {"medseg.example.json", "ucsd-ai4h.example.json", "lung-pet-ct-dx.example.json"}
    for path in examples:
        assert validate_manifest_dict(json.loads(path.read_text()), str(path)) == []

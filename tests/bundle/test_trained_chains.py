"""A trained bundle carries its preprocessing chains (``chains/``), so it is self-contained."""

from __future__ import annotations

import json
import logging

from ctmtl.bundle import export_trained_bundle
from ctmtl.data.chains import CHAIN_PATH_ENV, _package_dir, chain_config, find_chain


def _shipped() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(_package_dir().iterdir()) if p.suffix == ".json"}


def _manifest_with_path_chains(synthetic, folder):
    """A copy of the synthetic ``ucsd-ai4h`` manifest in ``folder`` whose header names ``chains/slice_8bit.json``
    (a base named by a relative path) and whose first entry names ``chains/lung.json`` (extends a shipped chain)."""
    data = json.loads(synthetic["ucsd-ai4h"].read_text())
    data["transforms"] = "chains/slice_8bit.json"
    data["entries"][0]["transforms"] = "chains/lung.json"
    (folder / "chains").mkdir(parents=True)
    (folder / "base").mkdir()
    (folder / "base" / "grey.json").write_text((_package_dir() / "slice_8bit.json").read_text())
    (folder / "chains" / "slice_8bit.json").write_text(json.dumps({"_extends_": "../base/grey.json", "equalise": False}))
    (folder / "chains" / "lung.json").write_text(json.dumps({"_extends_": "ct_volume_hu", "window": [-1000, 400]}))
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(data))
    return manifest


def test_export_trained_bundle_copies_every_chain_the_run_can_use(synthetic, tmp_path, monkeypatch, caplog):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "my_window.json").write_text(json.dumps({"_extends_": "ct_volume_hu", "window": [-1000, 0]}))
    monkeypatch.setenv(CHAIN_PATH_ENV, str(extra))
    manifest = _manifest_with_path_chains(synthetic, tmp_path / "data")
    root = tmp_path / "run"
    export_trained_bundle(root, {"image_size": [32, 32], "dataset_manifest": [str(manifest)]})

    chains = root / "chains"
    shipped = _shipped()
    assert set(shipped) <= {p.name for p in chains.iterdir()}
    assert all((chains / name).read_bytes() == data for name, data in shipped.items())  # identical copies
    assert (chains / "my_window.json").read_bytes() == (extra / "my_window.json").read_bytes()  # $CTMTL_CHAIN_PATH
    assert (chains / "lung.json").read_bytes() == (tmp_path / "data" / "chains" / "lung.json").read_bytes()
    # the manifest's slice_8bit.json is another chain than the shipped one of that name, and its base is named by a
    # path that does not resolve from chains/: written resolved, under a name of its own
    [own] = [p for p in chains.glob("slice_8bit-*.json")]
    assert "_extends_" not in json.loads(own.read_text()) and json.loads(own.read_text())["equalise"] is False
    assert chain_config(own)[0] == chain_config(tmp_path / "data" / "chains" / "slice_8bit.json")[0]
    assert not list(root.glob(".chains-*"))  # the staging folder is gone
    # the bundle's configs search chains/ first
    for name in ("train", "evaluate", "inference"):
        assert json.loads((root / "configs" / f"{name}.json").read_text())["chain_dirs"] == "$[@bundle_root + '/chains']"
    assert find_chain("slice_8bit", [chains]) == (chains / "slice_8bit.json").resolve()
    monkeypatch.delenv(CHAIN_PATH_ENV)
    assert find_chain("my_window", [chains]) == (chains / "my_window.json").resolve()  # found without the variable
    assert find_chain("ct_volume_hu", [tmp_path / "no-such-folder"]) == (_package_dir() / "ct_volume_hu.json").resolve()

    # resuming: a chain edited in the bundle is kept (the run goes on with it); missing ones come back
    edited = json.loads(shipped["slice_8bit.json"])
    edited["equalise"] = False
    (chains / "slice_8bit.json").write_text(json.dumps(edited))
    (chains / "dicom_series.json").unlink()
    with caplog.at_level(logging.WARNING, logger="ctmtl.bundle.trained"):
        export_trained_bundle(root, {"image_size": [32, 32]}, resume=True)
    assert json.loads((chains / "slice_8bit.json").read_text()) == edited
    assert (chains / "dicom_series.json").read_bytes() == shipped["dicom_series.json"]
    assert "slice_8bit.json" in caplog.text

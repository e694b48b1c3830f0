"""``ctmtl export-label`` without a MONAI Label server (main suite: needs only ctmtl).

The exported bundles are checked the way MONAI Label will use them (config parsed with ``bundle_root`` set,
``preprocessing`` -> network -> ``postprocessing``), against ctmtl's own prediction. The real server is in
``test_monailabel_server.py`` (marker ``label``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

import ctmtl.export.label as label_module
from ctmtl.cli import main
from ctmtl.data.chains import chain_config
from ctmtl.errors import CtmtlError, ModelError
from ctmtl.export import LABEL_HEADS, BoxesToROId, LabelMapd, export_label, verify_label_bundle
from ctmtl.inference import load_model
from tests.conftest import make_trained_bundle

FILES = ("configs/inference.json", "configs/metadata.json", "configs/slice_8bit.json", "models/model.pt", "docs/README.md")


@pytest.fixture(scope="module")
def exported(label_model, tmp_path_factory):
    """The three bundles of the calibrated model, exported once for the module."""
    return export_label(label_model, tmp_path_factory.mktemp("app_model"), name="ctmtl")


def _parser(bundle):
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser


def _serve(bundle, study):
    """What MONAI Label's BundleInferTask does with a bundle, minus its writer: pre, network (or detector), post."""
    parser = _parser(bundle)
    network = verify_label_bundle(bundle)
    data = {"image": str(study), "image_path": str(study), "model": bundle.name}
    for t in parser.get_parsed_content("preprocessing").transforms:
        data = t(data)
    with torch.no_grad():
        if "detector" in parser:
            detector = parser.get_parsed_content("detector")
            detector.network = network
            data.update(detector(data["image"][None])[0])
        else:
            data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    for t in parser.get_parsed_content("postprocessing").transforms:
        data = t(data)
    return data


def test_writes_one_bundle_per_head(exported, label_model):
    assert list(exported) == ["seg", "det", "class"]
    for task, bundle in exported.items():
        assert bundle.name == f"ctmtl_{LABEL_HEADS[task].suffix}"
        for name in FILES:
            assert (bundle / name).is_file(), f"{bundle.name}: {name} missing"
        assert not list(bundle.parent.glob(".*.partial"))
        inference = json.loads((bundle / "configs" / "inference.json").read_text())
        assert inference["network_def"]["_target_"] == "ctmtl.networks.TaskOutput"
        assert inference["network_def"]["task"] == task
        assert inference["network_def"]["net"]["tasks"] == [task]
        assert inference["image_size"] == [32, 32]
        assert inference["chain_overrides"]["spatial_size"] == [32, 32]
        metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
        first_in = next(iter(metadata["network_data_format"]["inputs"].items()))
        first_out = next(iter(metadata["network_data_format"]["outputs"].items()))
        assert first_in[0] == "image" and first_in[1]["spatial_shape"] == [32, 32]  # 2 values: a 2D task
        assert first_out[0] == "pred"
    seg_labels = json.loads((exported["seg"] / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert seg_labels == {"0": "background", "1": "lesion"}
    class_labels = json.loads((exported["class"] / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert list(class_labels.values()) == ["covid-19", "non-covid", "cancer"]


def test_bundle_carries_the_training_chain(exported):
    """The preprocessing is the slice_8bit chain, copied into the bundle (self-contained apart from ctmtl)."""
    original, _ = chain_config("slice_8bit")
    for bundle in exported.values():
        assert json.loads((bundle / "configs" / "slice_8bit.json").read_text()) == original
        step = _parser(bundle).get_parsed_content("preprocessing").transforms[0]
        assert step.chain.path == (bundle / "configs" / "slice_8bit.json").resolve()
        assert step.chain.params["spatial_size"] == [32, 32]


def test_weights_match_the_wrapper_exactly(exported):
    for task, bundle in exported.items():
        state = torch.load(bundle / "models" / "model.pt", weights_only=True)
        network = _parser(bundle).get_parsed_content("network_def")
        assert set(state) == set(network.state_dict())
        assert all(k.startswith(("net.encoder.", f"net.heads.{task}.")) for k in state)


@pytest.mark.parametrize("task", ["seg", "class", "det"])
def test_wrapper_reproduces_the_multitask_output(exported, label_model, task):
    source = load_model(label_model, device="cpu").network
    network = verify_label_bundle(exported[task])
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = source(image, tasks=(task,))[task], network(image)
    if task == "det":
        for e, g in zip(expected, got, strict=True):
            for key in ("boxes", "labels", "scores"):
                torch.testing.assert_close(g[key], e[key])
    else:
        torch.testing.assert_close(got, expected)


def test_served_mask_equals_ctmtl_prediction(exported, study, reference):
    """pre -> network -> post as MONAI Label runs them gives ctmtl predict's mask, in the writer's x, y order."""
    pred = _serve(exported["seg"], study)["pred"]
    assert pred.dtype == np.uint8 and pred.shape == reference.mask.shape[::-1]
    assert 0 < reference.mask.mean() < 1
    np.testing.assert_array_equal(pred.T, reference.mask)


def test_served_boxes_and_classes_equal_ctmtl_prediction(exported, study, reference):
    data = _serve(exported["det"], study)
    boxes = torch.tensor([d.box for d in reference.detections])
    assert len(boxes) > 0
    expected = BoxesToROId(keys="box")({"box": boxes})["box"]
    order = torch.argsort(data["label_scores"], descending=True)
    torch.testing.assert_close(data["box"][order], expected)
    probs = _serve(exported["class"], study)["pred"]
    np.testing.assert_allclose(np.asarray(probs), list(reference.probabilities.values()), rtol=1e-5, atol=1e-6)


def test_exported_bundles_mirror_as_the_trained_model_does(label_model, study, tmp_path):
    """A model trained with ``tta_flip_axes: [1]`` predicts with test-time mirroring; its exported bundles name the
    same inferer (the detector too), so MONAI Label serves ctmtl predict's mask, boxes and probabilities."""
    import inspect
    import shutil

    from ctmtl.engines.inferers import FlipInferer
    from ctmtl.inference import Predictor

    root = tmp_path / "mirroring"
    shutil.copytree(label_model, root)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["inferer"] = {"_target_": "ctmtl.engines.inferers.FlipInferer", "spatial_axes": [1]}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    reference = Predictor(root, device="cpu", progress=False, threads=1).predict(study)
    plain = Predictor(label_model, device="cpu", progress=False, threads=1).predict(study)
    assert not np.array_equal(reference.mask, plain.mask)  # the mirror view changes the answer
    exported = export_label(root, tmp_path / "app", name="ctmtl")
    for bundle in exported.values():
        inferer = json.loads((bundle / "configs" / "inference.json").read_text())["inferer"]
        assert inferer == {"_target_": "ctmtl.engines.inferers.FlipInferer", "spatial_axes": [1], "nms_thresh": 0.5,
                           "detections_per_img": 100}
        assert set(inferer) - {"_target_"} == set(inspect.signature(FlipInferer).parameters)  # every value written
    np.testing.assert_array_equal(_serve(exported["seg"], study)["pred"].T, reference.mask)
    data = _serve(exported["det"], study)
    expected = BoxesToROId(keys="box")({"box": torch.tensor([d.box for d in reference.detections])})["box"]
    torch.testing.assert_close(data["box"][torch.argsort(data["label_scores"], descending=True)], expected)
    probs = _serve(exported["class"], study)["pred"]
    np.testing.assert_allclose(np.asarray(probs), list(reference.probabilities.values()), rtol=1e-5, atol=1e-6)


def test_an_inferer_the_export_cannot_write_is_an_error(label_model, tmp_path, capsys):
    """A trained bundle whose inferer the export cannot write out: one line naming its inference.json, nothing
    written (served with a plain pass, MONAI Label would answer otherwise than ctmtl predict)."""
    import shutil

    root = tmp_path / "windowed"
    shutil.copytree(label_model, root)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": [32, 32]}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    out = tmp_path / "app"
    assert main(["export-label", "--model", str(root), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{root / 'configs' / 'inference.json'}: inferer is a SlidingWindowInferer" in err
    assert list(out.iterdir()) == []


def test_existing_export_is_not_overwritten(label_model, tmp_path, capsys):
    args = ["export-label", "--model", str(label_model), "--out", str(tmp_path), "--tasks", "seg"]
    assert main(args) == 0
    marker = tmp_path / "ctmtl_segmentation" / "marker"
    marker.write_text("kept")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctmtl export-label: error:") and "--overwrite" in err[0]
    assert marker.read_text() == "kept"
    with pytest.raises(CtmtlError, match="already exist"):
        export_label(label_model, tmp_path, tasks=["seg"])
    assert main([*args, "--overwrite"]) == 0
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctmtl_segmentation"]


def test_mismatched_wrapper_weights_fail_strictly(label_model, tmp_path, monkeypatch):
    """Weights under another layout would load non-strictly in MONAI Label; the export refuses them."""
    monkeypatch.setattr(label_module, "head_state_dict",
                        lambda network, task: {k: v for k, v in network.state_dict().items() if k.startswith(("encoder.", f"heads.{task}."))})
    with pytest.raises(ModelError, match=r"weights do not fit the network of its config: \d+ missing .*\d+ unexpected"):
        export_label(label_model, tmp_path, tasks=["seg"])
    assert list(tmp_path.iterdir()) == []  # nothing left that MONAI Label could serve


def test_one_failing_head_publishes_nothing(label_model, tmp_path, monkeypatch):
    original = label_module.head_state_dict
    monkeypatch.setattr(label_module, "head_state_dict",
                        lambda network, task: {k: v for k, v in original(network, task).items() if task != "det" or "heads" not in k})
    with pytest.raises(ModelError, match=r"ctmtl_detection/models/model.pt: weights do not fit .* missing"):
        export_label(label_model, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the segmentation bundle passed its check but is not published alone


def test_mismatched_wrapper_network_fails_strictly(label_model, tmp_path, monkeypatch):
    original = label_module.head_network_def
    monkeypatch.setattr(label_module, "head_network_def",
                        lambda args, task: original({**args, "decoder_channels": [8, 8, 8, 8, 8]}, task))
    with pytest.raises(ModelError, match="wrong shape"):
        export_label(label_model, tmp_path, tasks=["seg"])
    assert list(tmp_path.iterdir()) == []


def test_model_without_the_head_asked_for(tmp_path):
    bundle = make_trained_bundle(tmp_path / "bundle", tasks=("class", "recon"), det_head=None)
    with pytest.raises(ModelError, match="cannot export"):
        export_label(bundle, tmp_path / "out", tasks=["seg"])
    written = export_label(bundle, tmp_path / "out")
    assert list(written) == ["class"]


def test_bad_name_and_missing_model(label_model, tmp_path):
    with pytest.raises(CtmtlError, match="--name"):
        export_label(label_model, tmp_path, name="a,b")
    with pytest.raises(ModelError, match="no such model"):
        export_label(tmp_path / "nope", tmp_path)


def test_label_map_is_uint8_in_itk_order():
    pred = torch.zeros(1, 2, 3)
    pred[0, 0, 2] = 1
    out = LabelMapd(keys="pred")({"pred": pred})["pred"]
    assert out.dtype == np.uint8 and out.shape == (3, 2) and out[2, 0] == 1
    assert LabelMapd(keys="pred", transpose=False)({"pred": pred})["pred"].shape == (2, 3)


def test_boxes_to_roi():
    out = BoxesToROId(keys="box")({"box": torch.tensor([[2.0, 4.0, 6.0, 10.0]])})["box"]
    torch.testing.assert_close(out, torch.tensor([[4.0, 7.0, 0.0, 4.0, 6.0, 1.0]]))

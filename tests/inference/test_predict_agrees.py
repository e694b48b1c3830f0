"""Predictions are the network's outputs on the training chains' slices, put back onto the input as stored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ctmtl_tiny_data as tiny_data  # loaded by tests/conftest.py
from ctmtl.data.chains import load_chain
from ctmtl.data.io import read_mask_2d
from ctmtl.inference import Predictor, boxes_to_world, find_inputs, invert_boxes
from ctmtl.transforms.geometry import invert_geometry
from tests.inference.conftest import SIZE, stub_model


def _chain_samples(predictor, path):
    item = find_inputs([path])[0]
    return predictor.chain_for(item)({"image": str(path), "meta": {}})


def test_2d_image_at_model_size_is_the_thresholded_network_output(predictor, inputs):
    samples = _chain_samples(predictor, inputs["png32"])
    x = samples[0]["image"].as_tensor()[None]
    with torch.no_grad():
        out = predictor.model.network(x, tasks=("class", "seg"))
    probs = torch.sigmoid(out["seg"])[0, 0].numpy()
    threshold = float(np.median(probs))  # random weights: a threshold that gives a mask of both labels
    pred = Predictor(predictor.model, threshold=threshold, progress=False).predict(inputs["png32"])
    expected = (probs >= threshold).astype(np.uint8)  # MONAI AsDiscrete(threshold=...)
    assert pred.mask.dtype == np.uint8 and pred.mask.shape == (SIZE, SIZE)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(pred.mask, expected)
    np.testing.assert_allclose(pred.slice_probabilities[0], torch.softmax(out["class"][0], 0).numpy(), atol=1e-6)
    assert pred.probabilities == pytest.approx(dict(zip(pred.class_names, pred.slice_probabilities[0].tolist())))


def test_volume_slices_are_the_network_on_each_chain_slice(predictor, inputs):
    samples = _chain_samples(predictor, inputs["volume"])
    x = torch.stack([s["image"].as_tensor() for s in samples])
    with torch.no_grad():
        logits = predictor.model.network(x, tasks=("class",))["class"]
    pred = predictor.predict(inputs["volume"])
    np.testing.assert_allclose(pred.slice_probabilities, torch.softmax(logits, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(pred.slice_probabilities.mean(0), list(pred.probabilities.values()), atol=1e-6)


def test_mask_png_aligns_with_the_image_as_pil_reads_it(tmp_path):
    # a wide image, resized 40 x 64 -> 32 x 32: the stub's lesion (rows 8:20, cols 4:12 of 32) lands top-left
    path = tiny_data.write_png(tmp_path / "wide.png", (40, 64), "RGB")
    pred = Predictor(stub_model(), progress=False).predict(path)
    height, width = np.asarray(Image.open(path)).shape[:2]
    assert pred.mask.shape == (height, width)
    rows, cols = np.nonzero(pred.mask)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (10, 25, 8, 24)  # x 40/32 rows, x 2 columns
    folder = Predictor(stub_model(), progress=False).write(pred, tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "mask.png")), pred.mask)


def test_boxes_go_back_to_the_stored_slice_and_to_world(tmp_path):
    # MedSeg-like volume: slices stored transposed (40 x 48), shown upright (48 x 40) by medseg_volume, resized to 32 x 32
    tiny_data.write_volume_pair(tmp_path, "m", shape=(48, 40, 3), seed=2, transpose=True)
    entry = {"id": "m", "kind": "volume", "image": "m_im.nii.gz", "patient": "p", "split": "test",
             "tasks": ["reconstruction"], "transforms": "medseg_volume"}
    manifest = tiny_data.write_manifest(tmp_path / "m.json", [entry])
    item = find_inputs([manifest])[0]
    predictor = Predictor(stub_model(), progress=False, score_threshold=0.5)
    pred = predictor.predict(item)
    assert pred.shape == (40, 48, 3)
    # where the stub's box (xyxy 4, 8, 12, 20 on the 32 x 32 grid) lands, by inverting a box-shaped mask
    sample = predictor.chain_for(item)({"image": str(item.path), "meta": {}})[1]
    drawn = torch.zeros(1, SIZE, SIZE)
    drawn[0, 8:20, 4:12] = 1
    back = invert_geometry(drawn, sample["meta"], mode="nearest")[0].numpy()
    rows, cols = np.nonzero(back)
    expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    dets = [d for d in pred.detections if d.slice == 1]
    assert len(pred.detections) == 3 and len(dets) == 1
    np.testing.assert_allclose(dets[0].box, expected, atol=1.0)
    # world: the box's corners through the NIfTI affine (voxel centres at integers, so edges at -0.5)
    x1, y1, x2, y2 = dets[0].box
    corners = np.array([[y1 - 0.5, x1 - 0.5, 0.5, 1], [y2 - 0.5, x2 - 0.5, 1.5, 1]]) @ tiny_data.AFFINE.T
    np.testing.assert_allclose(dets[0].world, [*corners.min(0)[:3], *corners.max(0)[:3]], atol=1e-4)
    # the stub's lesion (the same rectangle) went back the same way, on every slice
    for k in range(3):
        np.testing.assert_array_equal(pred.mask[..., k], back.astype(np.uint8))


def test_invert_boxes_matches_the_chain_forward(tmp_path):
    # a rectangle in a stored (transposed, MedSeg) slice; the chain moves it forward; invert_boxes brings its box back
    tiny_data.write_png(tmp_path / "im.png", (30, 50))
    tiny_data.write_palette_mask(tmp_path / "mask.png", (30, 50))
    stored = read_mask_2d(tmp_path / "mask.png") == 2
    chain = load_chain("slice_8bit", {"spatial_size": [64, 64], "pad_to_square": True, "merge_labels": False})
    sample = chain({"image": str(tmp_path / "im.png"), "mask": str(tmp_path / "mask.png"), "meta": {}})[0]
    rows, cols = np.nonzero(sample["mask"][0].numpy() == 2)
    forward = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
    boxes, kept = invert_boxes(forward, sample["meta"])
    rows, cols = np.nonzero(stored)
    np.testing.assert_allclose(boxes[0].numpy(), [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], atol=1.0)
    assert kept.tolist() == [0]


def test_orientation_inverse_of_boxes():
    # the MedSeg orientation (fliplr(rot90(k=3)) = transpose) and a plain rot90: boxes follow the pixels
    for k, flip in ((3, True), (1, False), (2, True)):
        stored = torch.zeros(1, 12, 20)
        stored[0, 2:5, 7:16] = 1
        forward = torch.rot90(stored, k, dims=(1, 2))
        if flip:
            forward = torch.flip(forward, dims=(2,))
        rows, cols = np.nonzero(forward[0].numpy())
        meta = {"geometry": [{"op": "orient", "in": [12, 20], "out": list(forward.shape[1:]), "k": k, "flip_lr": flip}],
                "original_shape": [12, 20, 1]}
        box = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
        back, _ = invert_boxes(box, meta)
        assert back[0].tolist() == [7, 2, 16, 5], (k, flip)


def test_world_boxes_of_a_dicom_series(inputs, tmp_path):
    from ctmtl.data.io import scan_dicom_series

    pred = Predictor(stub_model(), progress=False).predict(inputs["dicom"])
    series = scan_dicom_series(inputs["dicom"])
    det = pred.detections[0]
    assert det.slice_uid == series.sop_uids[det.slice]
    np.testing.assert_allclose(det.world, boxes_to_world([det.box], series.affine, det.slice)[0])
    row = det.to_dict()
    lps, ras = row["patient_lps_mm"], row["world_ras_mm"]
    assert lps["center"] == pytest.approx([-ras["center"][0], -ras["center"][1], ras["center"][2]])
    folder = Predictor(stub_model(), progress=False).write(pred, tmp_path)
    doc = json.loads((folder / "detections.json").read_text())
    assert len(doc["detections"]) == 5 and doc["detections"][0]["sop_uid"] in series.sop_uids
    assert len(list(folder.glob("overlay_slice*.png"))) == 4
    burden = json.loads((folder / "prediction.json").read_text())["segmentation"]["burden"]
    assert burden["slices_with_lesion_percent"] == 100.0
    assert burden["lesion_volume_ml"] == pytest.approx(burden["lesion_voxels"] * 0.7 * 0.7 * 5.0 / 1000, rel=1e-4)


def test_predict_calls_the_network_through_the_bundles_inferer(tmp_path, inputs):
    """A bundle trained with ``tta_flip_axes: [1]`` names the mirroring inferer in ``inference.json``: ``ctmtl
    predict`` answers with the average of the network on the slice and on its mirror image, flipped back."""
    from tests.conftest import make_trained_bundle

    root = make_trained_bundle(tmp_path / "bundle")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["inferer"] = {"_target_": "ctmtl.engines.inferers.FlipInferer", "spatial_axes": [1]}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    predictor = Predictor(root, device="cpu", progress=False, threads=1)
    assert predictor.model.inferer.spatial_axes == (1,)
    x = _chain_samples(predictor, inputs["png32"])[0]["image"].as_tensor()[None]
    with torch.no_grad():
        plain = predictor.model.network(x, tasks=("class", "seg"))
        mirrored = predictor.model.network(torch.flip(x, dims=(-1,)), tasks=("class", "seg"))
    probs = torch.sigmoid((plain["seg"] + torch.flip(mirrored["seg"], dims=(-1,))) / 2)[0, 0].numpy()
    threshold = float(np.median(probs))
    pred = Predictor(predictor.model, threshold=threshold, progress=False).predict(inputs["png32"])
    np.testing.assert_array_equal(pred.mask, (probs >= threshold).astype(np.uint8))
    expected = torch.softmax((plain["class"][0] + mirrored["class"][0]) / 2, 0).numpy()
    np.testing.assert_allclose(pred.slice_probabilities[0], expected, atol=1e-6)
    plain_probs = torch.sigmoid(plain["seg"])[0, 0].numpy()
    assert ((plain_probs >= threshold) != pred.mask.astype(bool)).any()  # the mirror view counted

"""A trained bundle's own ``chains/`` win over the installed chains: in ``load_model``, ``Predictor`` and the
MONAI Label export."""

from __future__ import annotations

import json

import numpy as np

from ctmtl.data.chains import _package_dir
from ctmtl.export import export_label
from ctmtl.inference import Predictor, find_inputs, load_model
from tests.conftest import make_trained_bundle


def _preprocessed(predictor, path):
    item = find_inputs([path])[0]
    return predictor.chain_for(item)({"image": str(path), "meta": {}})[0]["image"].as_tensor()


def test_a_bundles_own_chains_are_used_instead_of_the_installed_ones(inputs, tmp_path):
    bundle = make_trained_bundle(tmp_path / "bundle", tasks=("class", "seg", "recon"), det_head=None)
    installed = Predictor(bundle, device="cpu", progress=False, threads=1)
    assert installed.model.chain_dirs == ()
    before = installed.predict(inputs["png"])
    assert before.chain["path"] == str((_package_dir() / "slice_8bit.json").resolve())

    chains = bundle / "chains"
    chains.mkdir()
    pre = json.loads((_package_dir() / "slice_8bit.json").read_text())
    pre.update(intensity_range=[0, 510], equalise=False)  # luminance 0..255 -> [0, 0.5]
    (chains / "slice_8bit.json").write_text(json.dumps(pre))
    post = json.loads((_package_dir() / "inference_post.json").read_text())
    assert post["transforms"][0]["keys"] == "class"
    post["transforms"][0]["softmax"] = False  # class "probabilities" are the raw logits
    (chains / "inference_post.json").write_text(json.dumps(post))

    model = load_model(bundle, device="cpu")
    assert model.chain_dirs == (chains.resolve(),)
    own = Predictor(model, progress=False, threads=1)
    after = own.predict(inputs["png"])
    assert after.chain["path"] == str((chains / "slice_8bit.json").resolve())
    assert after.chain["params"]["intensity_range"] == [0, 510] and after.chain["params"]["equalise"] is False
    assert float(_preprocessed(installed, inputs["png"]).max()) > 0.9
    assert float(_preprocessed(own, inputs["png"]).max()) <= 0.5 + 1e-6
    np.testing.assert_allclose(before.slice_probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(after.slice_probabilities.sum(axis=1), 1.0, atol=1e-3)

    # the MONAI Label export takes the bundle's chains too
    written = export_label(bundle, tmp_path / "app", tasks=["class"])
    label = written["class"]
    assert json.loads((label / "configs" / "slice_8bit.json").read_text())["intensity_range"] == [0, 510]
    steps = json.loads((label / "configs" / "inference.json").read_text())["postprocessing"]["transforms"]
    assert steps[0]["softmax"] is False

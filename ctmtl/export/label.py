"""Export a trained ctmtl model as MONAI Label bundles, one per head (``ctmtl export-label``).

MONAI Label's ``monaibundle`` app serves a MONAI bundle folder ``<app>/model/<name>`` through its
``BundleInferTask``, which reads

- ``configs/inference.json``: ``network_def`` (built, then ``models/model.pt`` loaded into it *non-strictly*),
  ``preprocessing``, ``postprocessing``, ``inferer`` and, for a detection task, ``detector``;
- ``configs/metadata.json``: the first input and output of ``network_data_format`` (the input's
  ``spatial_shape`` length is the task's dimension, the output's ``channel_def`` its labels);
- the folder's name: ``..._segmentation``, ``..._detection`` and ``..._classification`` select the task type.

MONAI Label runs one network with one output, so each head of the multi-task network becomes its own bundle:
the encoder and that head wrapped in :class:`ctmtl.networks.TaskOutput` (a ``MultiTaskNet`` built with that
one task). Its ``model.pt`` holds exactly the wrapper's keys (``net.encoder.*``, ``net.heads.<task>.*``).
Because MONAI Label would silently serve random weights where keys do not fit, every bundle is checked before
it is published: ``network_def`` is built from the *written* config, the *written* weights are loaded
strictly, and the wrapper must reproduce the multi-task network's output for that head.

Preprocessing is the chain the model was trained with (``slice_8bit`` for PNG / JPEG studies; taken from the
trained bundle's own ``chains/`` when it has one), copied into the bundle's ``configs/`` with the training
parameters (``chain_overrides``), and run by
:class:`ctmtl.export.RunChaind`; postprocessing is ctmtl's ``inference_post`` (the same steps as
``ctmtl predict``) on the output key ``pred``, ending with the label map in the form MONAI Label writes.
The bundle needs the installed ``ctmtl`` package and nothing else.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctmtl import __version__
from ctmtl.constants import LESION_LABELS, SHORT_TASKS
from ctmtl.errors import CtmtlError, ModelError
from ctmtl.inference.model import INFERENCE_CONFIG, MODEL_FILE, LoadedModel, load_model, load_state_dict_strict

__all__ = [
    "LABEL_HEADS",
    "LabelHead",
    "export_label",
    "head_network_def",
    "head_state_dict",
    "label_bundle_configs",
    "verify_label_bundle",
]

CLASS, SEG, RECON, DET = SHORT_TASKS
METADATA = Path("configs") / "metadata.json"
README = Path("docs") / "README.md"
#: post-processing chain of ctmtl's own prediction; its ``seg`` / ``class`` steps are reused on ``pred``
POST_CHAIN = "inference_post"
#: a bundle name must survive ``--conf models a,b`` and be a folder name
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class LabelHead:
    """How one head of the multi-task network is served by MONAI Label.

    Attributes:
        task: short task name (``seg``, ``det``, ``class``).
        suffix: bundle folder suffix; MONAI Label derives the task type from it (``<name>_<suffix>``).
        description: one line for ``metadata.json`` and MONAI Label's model list.
    """

    task: str
    suffix: str
    description: str


#: heads that MONAI Label's monaibundle app can serve, in export order (``recon`` has no MONAI Label task type)
LABEL_HEADS: dict[str, LabelHead] = {
    SEG: LabelHead(SEG, "segmentation", "lesion segmentation of a 2D chest CT slice (ctmtl multi-task network)"),
    DET: LabelHead(DET, "detection", "lesion detection (boxes) on a 2D chest CT slice (ctmtl multi-task network)"),
    CLASS: LabelHead(CLASS, "classification", "diagnosis of a 2D chest CT slice (ctmtl multi-task network)"),
}


# ------------------------------------------------------------------------------------------- network and weights


def _network_args(loaded: LoadedModel) -> dict[str, Any]:
    """The trained ``network_def`` with every reference resolved, as plain JSON values (no ``_target_``)."""
    from monai.bundle import ConfigParser

    from ctmtl.networks import MultiTaskNet

    where = loaded.bundle_root / INFERENCE_CONFIG
    if not isinstance(loaded.network, MultiTaskNet):
        raise ModelError(f"{where}: network_def is a {type(loaded.network).__name__}, expected ctmtl.networks.MultiTaskNet")
    try:  # a fresh parser: the loaded one holds the built network under network_def
        resolved = ConfigParser(copy.deepcopy(loaded.config.get())).get_parsed_content("network_def", instantiate=False)
        config = resolved.get_config() if hasattr(resolved, "get_config") else resolved
        args = json.loads(json.dumps({k: v for k, v in dict(config).items() if not str(k).startswith("_")}))
    except (TypeError, ValueError) as err:
        raise ModelError(f"{where}: network_def does not resolve to plain JSON values ({err})".splitlines()[0]) from None
    args["encoder_weights"] = None  # the weights come from model.pt; a local pretrained file may not exist where served
    return args


def head_network_def(network_args: Mapping[str, Any], task: str) -> dict[str, Any]:
    """``network_def`` of the single-output bundle of ``task``: :class:`ctmtl.networks.TaskOutput` around a
    ``MultiTaskNet`` built with that head only (``forward(image) -> net(image, tasks=(task,))[task]``)."""
    net = {"_target_": "ctmtl.networks.MultiTaskNet", **dict(network_args), "tasks": [task]}
    return {"_target_": "ctmtl.networks.TaskOutput", "net": net, "task": task}


def head_state_dict(network: torch.nn.Module, task: str) -> dict[str, torch.Tensor]:
    """The weights of ``TaskOutput(MultiTaskNet(tasks=[task]), task)`` taken from the trained multi-task network:
    its encoder and its ``task`` head, under the wrapper's prefix ``net.``."""
    keep = ("encoder.", f"heads.{task}.")
    return {f"net.{k}": v.detach().cpu().clone() for k, v in network.state_dict().items() if k.startswith(keep)}


# ------------------------------------------------------------------------------------------------- configs


def _post_steps(key: str, task: str, chain_dirs: Iterable[str | Path] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Parameters and the ``task`` steps of :data:`POST_CHAIN` (looked up in ``chain_dirs`` first), rewritten to
    act on ``key``."""
    from ctmtl.data.chains import chain_config

    config, _ = chain_config(POST_CHAIN, list(chain_dirs))
    params = {k: v for k, v in config.items() if k != "transforms" and not k.startswith("_")}
    steps = []
    for step in config["transforms"]:
        if isinstance(step, dict) and step.get("keys") == task:
            step = {k: v for k, v in step.items() if k != "allow_missing_keys"}
            steps.append({**step, "keys": key})
    return params, steps


def inferer_config(loaded: LoadedModel) -> dict[str, Any]:
    """The exported bundles call their network as the trained bundle does: with its test-time mirroring
    (:class:`ctmtl.engines.inferers.FlipInferer`, its values written out) or with one plain pass.

    Raises:
        ModelError: the trained bundle's ``inferer`` is another kind, which the export cannot write out; serving
            the network with a plain pass instead would answer otherwise than ``ctmtl predict``.
    """
    from monai.inferers import SimpleInferer

    from ctmtl.engines.inferers import FlipInferer

    inferer = loaded.inferer
    if isinstance(inferer, FlipInferer) and inferer.spatial_axes:
        return {"_target_": "ctmtl.engines.inferers.FlipInferer", "spatial_axes": list(inferer.spatial_axes),
                "nms_thresh": inferer.nms_thresh, "detections_per_img": inferer.detections_per_img}
    if not isinstance(inferer, (FlipInferer, SimpleInferer)):
        raise ModelError(f"{loaded.bundle_root / INFERENCE_CONFIG}: inferer is a {type(inferer).__name__}; the MONAI Label "
                         "export writes out SimpleInferer and ctmtl.engines.inferers.FlipInferer only")
    return {"_target_": "SimpleInferer"}


def _det_class_names(loaded: LoadedModel) -> tuple[str, ...]:
    from ctmtl.inference.predict import Predictor

    return Predictor(loaded).det_class_names  # the names ``ctmtl predict`` gives detections


def label_bundle_configs(
    loaded: LoadedModel, head: LabelHead, network_args: Mapping[str, Any], chain_file: str, score_threshold: float = 0.5
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inference.json, metadata.json)`` of the MONAI Label bundle of one head.

    Args:
        loaded: the trained model.
        head: which head.
        network_args: :func:`_network_args` of the trained model.
        chain_file: the preprocessing chain's file name in the bundle's ``configs/``.
        score_threshold: detection boxes scoring below it are not sent (``ctmtl predict``'s default).
    """
    size = [int(s) for s in loaded.image_size]
    in_channels = int(network_args.get("in_channels", 1))
    inference: dict[str, Any] = {
        "_desc_": f"MONAI Label bundle exported by ctmtl {__version__} from {Path(loaded.bundle_root).resolve()}: {head.description}.",
        "imports": ["$import torch", "$import ctmtl", "$import ctmtl.export"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "image_size": size,
        "chain_file": f"$@bundle_root + '/configs/{chain_file}'",
        "chain_overrides": json.loads(json.dumps({**loaded.chain_overrides, "slice_mode": "all"})),  # as ctmtl predict
        "class_names": list(loaded.class_names),
        "network_def": head_network_def(network_args, head.task),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "ctmtl.export.RunChaind", "keys": "image", "chain": "@chain_file", "overrides": "@chain_overrides"}
            ],
        },
        "inferer": inferer_config(loaded),
    }
    if head.task == SEG:
        seg_channels = int(network_args.get("seg_channels", 1))
        params, steps = _post_steps("pred", SEG, loaded.chain_dirs)
        params["multiclass_seg"] = seg_channels > 1
        inference.update(params)
        steps.append({"_target_": "ctmtl.export.LabelMapd", "keys": "pred"})
        labels = {"0": "background", "1": "lesion"} if seg_channels == 1 else {
            str(i): LESION_LABELS.get(i, f"label-{i}") for i in range(seg_channels)
        }
        output = {"type": "image", "format": "segmentation", "num_channels": 1, "spatial_shape": size,
                  "dtype": "uint8", "value_range": [0, max(1, seg_channels - 1)], "is_patch_data": False,
                  "channel_def": labels}
    elif head.task == DET:
        steps = [
            {"_target_": "ctmtl.export.InvertBoxesd", "keys": "box"},
            {"_target_": "ctmtl.export.BoxesToROId", "keys": "box"},
        ]
        inference["score_threshold"] = score_threshold
        inference["detector"] = {"_target_": "ctmtl.export.LabelDetector", "score_threshold": "@score_threshold",
                                 "inferer": "@inferer"}
        inference["detector_ops"] = []  # MONAI Label parses it whenever there is a detector
        names = _det_class_names(loaded)
        det_classes = int(network_args.get("det_classes", 1))
        labels = {"0": "background", **{str(i): names[i - 1] if i <= len(names) else f"class-{i}" for i in range(1, det_classes + 1)}}
        output = {"type": "object", "format": "cccwhd boxes ([cx, cy, 0, w, h, 1] pixels of the study, x = column)",
                  "num_channels": 6, "spatial_shape": [-1, 6], "dtype": "float32", "value_range": [], "is_patch_data": False,
                  "channel_def": labels}
    elif head.task == CLASS:
        params, steps = _post_steps("pred", CLASS, loaded.chain_dirs)
        steps.append({"_target_": "ToMetaTensord", "keys": "pred"})  # MONAI Label's ClassificationWriter reads .array
        num_classes = int(network_args.get("num_classes", len(loaded.class_names)))
        names = list(loaded.class_names) if len(loaded.class_names) == num_classes else [f"class-{i}" for i in range(num_classes)]
        labels = {str(i): name for i, name in enumerate(names)}
        output = {"type": "probabilities", "format": "classes", "num_channels": len(labels), "spatial_shape": [1],
                  "dtype": "float32", "value_range": [0, 1], "is_patch_data": False, "channel_def": labels}
    else:  # pragma: no cover - LABEL_HEADS is fixed
        raise ValueError(f"no MONAI Label export for task {head.task!r}")
    inference["postprocessing"] = {"_target_": "Compose", "transforms": steps}

    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": __version__,
        "changelog": {__version__: f"exported by ctmtl export-label from {Path(loaded.bundle_root).resolve()}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": _version("numpy"),
        "required_packages_version": {"ctmtl": __version__},
        "task": head.description,
        "description": f"{head.description}; 2D PNG / JPEG studies, preprocessed by the ctmtl chain {chain_file}",
        "authors": "ctmtl developers",
        "copyright": "see the ctmtl project",
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "format": "magnitude", "modality": "CT", "num_channels": in_channels,
                          "spatial_shape": size, "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                          "channel_def": {"0": "image"}}
            },
            "outputs": {"pred": output},
        },
    }
    return inference, metadata


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _readme(loaded: LoadedModel, head: LabelHead, folder: str, chain_file: str) -> str:
    size = "x".join(str(s) for s in loaded.image_size)
    outputs = {
        SEG: "a lesion label map with the study's rows and columns (PNG / JPEG study: an 8-bit PNG label), "
             "labels from `channel_def` in `configs/metadata.json`",
        DET: "lesion boxes as JSON (`box`: `[cx, cy, 0, w, h, 1]` in pixels of the study, x = column; `label`), "
             "which 3D Slicer shows as ROI markups",
        CLASS: "diagnosis probabilities as JSON (`prediction`: one `{idx, label, score}` per class)",
    }
    return f"""# {folder}

{head.description[0].upper()}{head.description[1:]}, exported by `ctmtl export-label` (ctmtl {__version__})
from the trained bundle `{Path(loaded.bundle_root).resolve()}`.

- Network: `ctmtl.networks.TaskOutput` around a `MultiTaskNet` with the `{head.task}` head only
  (`configs/inference.json`, `network_def`); `models/model.pt` holds exactly its weights, checked at export by
  a strict load and by comparing its output with the multi-task network's.
- Input: a 2D PNG / JPEG study, preprocessed by the chain the model was trained with
  (`configs/{chain_file}`, parameters `chain_overrides`), to a {size} slice in [0, 1].
- Output: {outputs[head.task]}.
- Needs: the `ctmtl` package installed in MONAI Label's Python environment.

Serve it with MONAI Label's `monaibundle` app: copy this folder to `<app>/model/{folder}` and start the server
with `--conf models {folder} --conf zoo_source local --conf sam2 false` (see ctmtl's `docs/monailabel.md`).
"""


# --------------------------------------------------------------------------------------------------- checks


def _build_network(bundle: Path) -> tuple[Any, torch.nn.Module]:
    from monai.bundle import ConfigParser

    where = bundle / INFERENCE_CONFIG
    parser = ConfigParser()
    try:
        parser.read_config(str(where))
    except Exception as err:
        raise ModelError(f"{where}: does not parse: {err}".splitlines()[0]) from None
    parser["bundle_root"] = str(bundle)
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:
        raise ModelError(f"{where}: network_def does not build: {err}".splitlines()[0]) from None
    return parser, network


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return False


def verify_label_bundle(bundle: str | Path, source: torch.nn.Module | None = None, task: str | None = None,
                        image_size: Iterable[int] | None = None) -> torch.nn.Module:
    """Check an exported bundle as MONAI Label will load it, but strictly.

    Builds ``network_def`` from the written ``configs/inference.json`` (``bundle_root`` set to the folder),
    loads the written ``models/model.pt`` strictly, builds the pre- and post-processing, and, given the
    trained multi-task ``source`` network, checks that the bundle's network gives the same ``task`` output on
    a probe image of ``image_size``.

    Returns:
        the bundle's network, weights loaded, in evaluation mode.

    Raises:
        ModelError: one line: the config does not build, the weights do not fit it exactly, or the outputs differ.
    """
    bundle = Path(bundle)
    parser, network = _build_network(bundle)
    weights = bundle / MODEL_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"{weights}: cannot be read ({type(err).__name__}: {err})".splitlines()[0]) from None
    load_state_dict_strict(network, state, str(weights))
    network.eval()
    for key in ("preprocessing", "postprocessing", "detector"):
        if key in parser:
            try:
                parser.get_parsed_content(key, instantiate=True)
            except CtmtlError:
                raise
            except Exception as err:
                raise ModelError(f"{bundle / INFERENCE_CONFIG}: {key} does not build: {err}".splitlines()[0]) from None
    if source is not None and task is not None:
        inner = getattr(network, "net", network)
        h, w = image_size or (getattr(inner, "size_divisible", 32),) * 2
        in_channels = getattr(inner, "in_channels", 1)
        probe = torch.rand((1, in_channels, int(h), int(w)), generator=torch.Generator().manual_seed(0))
        was_training = source.training
        source.eval()
        with torch.no_grad():
            expected = source(probe.to(next(source.parameters()).device), tasks=(task,))[task]
            got = network(probe)
        source.train(was_training)
        expected = _to_cpu(expected)
        if not _same(got, expected):
            raise ModelError(f"{bundle}: the exported {task!r} network does not reproduce the trained network's output")
    return network


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, Mapping):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_cpu(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------------- export


def export_label(
    model: str | Path,
    out: str | Path,
    name: str = "ctmtl",
    overwrite: bool = False,
    chain: str | Path = "slice_8bit",
    tasks: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Write a MONAI Label bundle per servable head of a trained model: ``out/<name>_segmentation``,
    ``out/<name>_detection``, ``out/<name>_classification`` (those whose head the network has).

    Every bundle is written to a hidden folder beside its target and verified (:func:`verify_label_bundle`);
    only when all pass are they moved into place, so a failed export leaves no bundle MONAI Label could serve.

    Args:
        model: a trained bundle folder or its ``models/*.pt`` (:func:`ctmtl.inference.load_model`).
        out: MONAI Label app's model folder (``<app>/model``), created when missing.
        name: bundle name prefix.
        overwrite: replace existing bundles of the same names; without it an existing one is an error.
        chain: the preprocessing chain the model was trained with (name or file); ``slice_8bit`` for PNG / JPEG.
            A name is looked up in the trained bundle's ``chains/`` first (:attr:`LoadedModel.chain_dirs`).
        tasks: short names of the heads to export (default: every servable head the network has).

    Returns:
        short task name -> bundle folder.

    Raises:
        ModelError: the model does not load, has none of the heads asked for, or an export fails its check.
        ChainError: the chain does not exist or does not build.
        CtmtlError: a bundle exists and ``overwrite`` is not set, or a bad ``name``.
    """
    from ctmtl.data.chains import chain_config, load_chain

    if not _NAME.match(name):
        raise CtmtlError(f"--name {name!r}: use letters, digits, '_', '-' or '.' (it becomes a folder and a MONAI Label model name)")
    loaded = load_model(model, device="cpu")
    network = loaded.network
    built = [t for t in LABEL_HEADS if t in network.heads] if hasattr(network, "heads") else []
    wanted = list(dict.fromkeys(tasks)) if tasks is not None else built
    unknown = [t for t in wanted if t not in LABEL_HEADS]
    if unknown:
        raise ModelError(f"{loaded.bundle_root}: no MONAI Label export for {unknown} (servable heads: {list(LABEL_HEADS)})")
    missing = [t for t in wanted if t not in built]
    if missing or not wanted:
        raise ModelError(f"{loaded.bundle_root}: the network has heads {list(loaded.tasks)}; cannot export {missing or list(LABEL_HEADS)}")
    network_args = _network_args(loaded)

    chain_cfg, chain_path = chain_config(chain, loaded.chain_dirs)
    load_chain(chain_path, loaded.chain_overrides)  # fails now, with the chain's name, if it does not build
    chain_file = f"{chain_path.stem}.json"

    out = Path(out)
    targets = {t: out / f"{name}_{LABEL_HEADS[t].suffix}" for t in wanted}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise CtmtlError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}; pass --overwrite to replace")
    out.mkdir(parents=True, exist_ok=True)

    partials = {task: target.with_name(f".{target.name}.partial") for task, target in targets.items()}
    try:
        for task, partial in partials.items():  # write and check every bundle before publishing any
            if partial.exists():
                shutil.rmtree(partial)
            _write_bundle(partial, loaded, LABEL_HEADS[task], network_args, chain_cfg, chain_file, targets[task].name)
            try:
                verify_label_bundle(partial, network, task, loaded.image_size)
            except ModelError as err:
                raise ModelError([p.replace(str(partial), str(targets[task])) for p in err.problems]) from None
        for task, partial in partials.items():
            target = targets[task]
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            partial.rename(target)
    finally:
        for partial in partials.values():
            if partial.exists():
                shutil.rmtree(partial)
    return dict(targets)


def _write_bundle(folder: Path, loaded: LoadedModel, head: LabelHead, network_args: Mapping[str, Any],
                  chain_cfg: Mapping[str, Any], chain_file: str, name: str) -> None:
    """Write the files of one MONAI Label bundle into ``folder``."""
    for sub in ("configs", "models", "docs"):
        (folder / sub).mkdir(parents=True)
    inference, metadata = label_bundle_configs(loaded, head, network_args, chain_file)
    (folder / INFERENCE_CONFIG).write_text(json.dumps(inference, indent=2) + "\n")
    (folder / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    (folder / "configs" / chain_file).write_text(json.dumps(copy.deepcopy(dict(chain_cfg)), indent=2) + "\n")
    (folder / README).write_text(_readme(loaded, head, name, chain_file))
    torch.save(head_state_dict(loaded.network, head.task), folder / MODEL_FILE)

"""Loading a trained model: a *trained bundle* folder (or its ``models/model.pt``) back into a network.

A trained bundle is what ``ctmtl train`` / ``ctmtl demo`` write and what ``python -m monai.bundle run`` leaves
in a bundle root: ``configs/inference.json`` (defines ``network_def`` and, at top level, ``image_size``
``[H, W]`` and optionally ``chain_overrides``, ``class_names``), ``models/model.pt`` (a plain ``state_dict``
of ``network_def``, loaded strictly) and ``chains/`` (the preprocessing chains of its run, used before the
installed ones). Everything that predicts or exports starts here, so a checkpoint that does
not fit its config fails once, with one line, before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.inferers import SimpleInferer

from ctmtl.constants import CLASS_NAMES
from ctmtl.errors import ModelError

__all__ = ["LoadedModel", "find_bundle_root", "load_model", "load_state_dict_strict"]

INFERENCE_CONFIG = Path("configs") / "inference.json"
MODEL_FILE = Path("models") / "model.pt"
#: a trained bundle's preprocessing chains, searched before the installed ones
CHAINS_DIR = Path("chains")


@dataclass
class LoadedModel:
    """A trained multi-task network with what inference needs to feed it.

    Attributes:
        network: the network in eval mode on ``device``.
        bundle_root: the trained bundle folder.
        config: the parsed ``configs/inference.json`` (``monai.bundle.ConfigParser``, ``bundle_root`` set).
        image_size: slice size the network was trained on, ``(H, W)``.
        chain_overrides: chain parameters of training (``{"spatial_size": [H, W], ...}``).
        class_names: diagnosis classes in label order.
        device: where the network runs.
        weights: the weights file loaded (``None`` when the model was built otherwise).
        chain_dirs: folders searched first for a chain by name: the bundle's own ``chains/`` (a trained bundle
            carries the chains of its run, :func:`ctmtl.bundle.export_trained_bundle`), when it has one.
        inferer: how the network is called, ``inferer(image, network, tasks=...)``: the ``inferer`` of
            ``inference.json`` (test-time mirroring when the run set ``tta_flip_axes``), else one plain pass.
    """

    network: torch.nn.Module
    bundle_root: Path
    config: Any
    image_size: tuple[int, int]
    chain_overrides: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = CLASS_NAMES
    device: torch.device = torch.device("cpu")
    weights: Path | None = None
    chain_dirs: tuple[Path, ...] = ()
    inferer: Callable[..., Any] = field(default_factory=SimpleInferer)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Short names of the heads the network has."""
        return tuple(getattr(self.network, "tasks", ()))


def find_bundle_root(model: str | Path) -> Path:
    """The trained bundle folder of ``model``: the folder itself, or the bundle holding ``models/model.pt``.

    Raises:
        ModelError: no such path, or no ``configs/inference.json`` / ``models/model.pt`` where expected.
    """
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such model (give a trained bundle folder or its models/model.pt)")
    root = path if path.is_dir() else path.parent.parent if path.parent.name == "models" else path.parent
    if not (root / INFERENCE_CONFIG).is_file():
        raise ModelError(f"{path}: not a trained bundle: {root / INFERENCE_CONFIG} is missing "
                         "(give the folder `ctmtl train`/`ctmtl demo` wrote, or its models/model.pt)")
    return root


def load_state_dict_strict(network: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``network.load_state_dict(state, strict=True)``, failing with one line that says what does not fit.

    MONAI Label and ``monai.bundle`` load weights non-strictly; a layout mismatch there would serve random
    weights silently, so ctmtl checks strictly wherever it loads or exports.
    """
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise ModelError(f"{where}: weights do not fit the network of its config: {', '.join(parts)}; "
                         "was it trained with another encoder or head layout?")
    network.load_state_dict(state, strict=True)


def _weights(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelError(f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err})".splitlines()[0]) from None
    if isinstance(state, Mapping):
        for key in ("network", "model", "state_dict"):  # resumable checkpoints hold the network under a key
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model(model: str | Path, device: str | torch.device | None = None, weights: str | Path | None = None) -> LoadedModel:
    """Build ``network_def`` of the trained bundle of ``model`` and load its weights strictly.

    Args:
        model: a trained bundle folder, or a ``.pt`` in its ``models/`` folder (then those weights are loaded).
        device: default CUDA when available, else CPU.
        weights: another weights file to load instead (e.g. ``best_sr.pt`` of a run).

    Raises:
        ModelError: not a trained bundle, a config that does not build, or weights that do not fit.
    """
    from monai.bundle import ConfigParser

    root = find_bundle_root(model)
    path = Path(model)
    if weights is None:
        weights = path if path.is_file() else root / MODEL_FILE
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"{root}: no trained weights at {weights} (has training finished?)")
    parser = ConfigParser()
    parser.read_config(str(root / INFERENCE_CONFIG))
    parser["bundle_root"] = str(root)
    if "network_def" not in parser:
        raise ModelError(f"{root / INFERENCE_CONFIG}: defines no network_def")
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:
        raise ModelError(f"{root / INFERENCE_CONFIG}: network_def does not build: {err}".splitlines()[0]) from None
    load_state_dict_strict(network, _weights(weights), str(weights))
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = network.to(device).eval()
    size = parser.get_parsed_content("image_size") if "image_size" in parser else getattr(network, "image_size", (256, 256))
    overrides = dict(parser.get_parsed_content("chain_overrides")) if "chain_overrides" in parser else {}
    overrides.setdefault("spatial_size", [int(s) for s in size])
    names = tuple(parser.get_parsed_content("class_names")) if "class_names" in parser else CLASS_NAMES
    chains = root / CHAINS_DIR
    try:
        inferer = parser.get_parsed_content("inferer") if "inferer" in parser else SimpleInferer()
    except Exception as err:
        raise ModelError(f"{root / INFERENCE_CONFIG}: inferer does not build: {err}".splitlines()[0]) from None
    return LoadedModel(network, root, parser, (int(size[0]), int(size[1])), overrides, names, device, weights.resolve(),
                       chain_dirs=(chains.resolve(),) if chains.is_dir() else (), inferer=inferer)

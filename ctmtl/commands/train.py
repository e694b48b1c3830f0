"""``ctmtl train CONFIG [--out DIR] [--override key=value ...] [--resume]``: train through the bundle.

There is one wiring: the bundle ``chest_ct_multitask`` (``bundles/chest_ct_multitask/configs/train.json``). CONFIG
is either a full train config (it defines ``train``; e.g. that file or an edited copy), a bundle folder (its
``configs/train.json``), or a small override file (JSON/YAML of top-level values such as ``encoder: resnet50`` or
``dataset_manifest: [...]``) layered on the shipped ``train.json``. ``--override key=value`` sets one more value
(the value is read as YAML: ``--override image_size=[128,128]``, ``--override plan=joint``). The run folder
``--out`` becomes a trained bundle (docs/architecture.md, "Trained bundle"): the configs with the values used,
``models/model.pt`` and the per-stage best weights, ``runs/`` with metrics, TensorBoard and resumable checkpoints.
It is equivalent to::

    python -m monai.bundle run --config_file "['.../train.json', 'CONFIG']" --bundle_root DIR --key value ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctmtl.errors import ConfigError

DEFAULT_OUT = Path("runs") / "train"


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}`` with each value read as YAML (numbers, lists, booleans)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--override {item!r}: expected key=value, e.g. --override encoder=resnet50")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--override {item!r}: the value does not parse as YAML ({err})".splitlines()[0]) from None
        if isinstance(value, str) and text.strip():
            try:  # YAML 1.1 reads 1e-3 as a string
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def _read(path: Path) -> Mapping[str, Any]:
    from monai.bundle import ConfigParser

    try:
        content = ConfigParser.load_config_file(str(path))
    except Exception as err:
        raise ConfigError(f"{path}: does not parse as a JSON/YAML config ({err})".splitlines()[0]) from None
    if not isinstance(content, Mapping):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(content).__name__}")
    return content


def config_files(config: str | Path | None) -> list[Path]:
    """The config files of a run, in merge order: the shipped ``train.json``, then CONFIG when it only overrides.

    Raises:
        ConfigError: CONFIG does not exist or does not parse.
    """
    from ctmtl.bundle import config_file

    shipped = config_file("train.json")
    if config is None:
        return [shipped]
    path = Path(config)
    if path.is_dir():
        path = path / "configs" / "train.json"
    if not path.is_file():
        raise ConfigError(f"{config}: no such config file (give a train config, an override file or a bundle folder)")
    if "train" in _read(path):
        return [path]
    return [shipped, path]


def train(config: str | Path | None, out: str | Path, overrides: Mapping[str, Any] | None = None, resume: bool = False,
          extra_files: Sequence[str | Path] = ()):
    """Run the bundle's train workflow into the bundle root ``out``; returns the finished ``ConfigWorkflow``."""
    from ctmtl.bundle import run_workflow

    own = Path(out) / "configs" / "train.json"
    if resume and config is None and own.is_file():
        files = [own]  # a resumed run continues with the values it was started with (extra files included)
    else:
        files = [*config_files(config), *map(Path, extra_files)]
    values = dict(overrides or {})
    if resume:
        values["resume"] = True
    return run_workflow(files, "train", bundle_root=str(Path(out)), **values)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the multi-task network (the bundle's train workflow)",
        description="Train through the chest_ct_multitask bundle; the output folder becomes a trained bundle.")
    parser.add_argument("config", nargs="?", type=Path,
                        help="train config, override file (JSON/YAML) or bundle folder; default: the shipped train.json")
    add_run_arguments(parser, DEFAULT_OUT)
    parser.set_defaults(func=run)


def add_run_arguments(parser, default_out: Path) -> None:
    """``--out``, ``--override``/``-o`` and ``--resume``: the arguments of every command that runs the bundle."""
    parser.add_argument("--out", type=Path, default=default_out, help=f"run folder, a trained bundle (default {default_out})")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="set a bundle config value (YAML): -o encoder=small -o image_size=[128,128] -o plan=joint")
    parser.add_argument("--resume", action="store_true", help="resume the interrupted run in --out from its last checkpoint")


def run(args) -> int:
    overrides = parse_overrides(args.override)
    workflow = train(args.config, args.out, overrides, resume=args.resume)
    ckpt = Path(workflow.parser.get_parsed_content("ckpt_dir"))
    print(f"trained bundle: {args.out} (weights {ckpt / 'model.pt'})")
    history = Path(workflow.parser.get_parsed_content("output_dir")) / "metrics.json"
    if history.is_file():
        print(f"per-epoch metrics: {history}")
    print(f"next: ctmtl predict --model {args.out} IMAGE... --out predictions/  |  "
          f"python -m monai.bundle run --config_file {args.out / 'configs' / 'evaluate.json'} --bundle_root {args.out}")
    return 0


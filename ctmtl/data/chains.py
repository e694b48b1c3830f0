"""Preprocessing chains: MONAI config files in the top-level ``transforms/`` folder, loaded by name or path.

A chain file is a MONAI bundle-style config (JSON or YAML, read with ``monai.bundle.ConfigParser``)::

    {
      "_desc_": "what the chain is for",
      "spatial_size": [256, 256],                 # parameters, with their defaults
      "window": [-1350, 150],
      "transforms": [                            # the steps, referring to the parameters
        {"_target_": "ctmtl.transforms.LoadCTVolumed", "keys": ["image", "mask"], "allow_missing_keys": true},
        {"_target_": "ctmtl.transforms.CTIntensityd", "keys": "image", "window": "@window"},
        ...
      ]
    }

Every top-level key except ``transforms`` and the ``_underscored_`` ones is a parameter; ``overrides`` (from a
bundle config or a caller) replace parameter values before the steps are built. ``"_extends_": "<chain>"``
starts from another chain: its parameters and steps, with this file's parameters (and ``transforms``, if
given) on top -- ``medseg_volume`` is ``ct_volume_hu`` with ``rotate_medseg: true``.

Where a chain is found:

* a value that looks like a path (has a ``/`` or ends in ``.json`` / ``.yaml`` / ``.yml``) is a file, relative
  to ``base_dir`` (a manifest's folder, for a manifest's ``"transforms"``), else to the working directory;
* a bare name is looked up as ``<name>.json|.yaml|.yml`` in ``search_dirs``, then in the folders listed in the
  ``CTMTL_CHAIN_PATH`` environment variable, then in the chains shipped with ctmtl (the package data
  ``ctmtl.chains``, which is the repository's ``transforms/`` folder in a checkout or editable install).

Every failure is a :class:`ctmtl.errors.ChainError` of one line naming the chain (and, from
:func:`manifest_chains`, the manifest): unknown name, a file that does not parse, a ``_target_`` that does not
exist, arguments a transform does not take.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from monai.transforms import Compose, Randomizable

from ctmtl.errors import ChainError

__all__ = [
    "CHAIN_SUFFIXES",
    "CHAIN_PATH_ENV",
    "Chain",
    "chain_dirs",
    "available_chains",
    "find_chain",
    "chain_config",
    "load_chain",
    "manifest_chains",
    "check_manifest_chains",
]

CHAIN_SUFFIXES: tuple[str, ...] = (".json", ".yaml", ".yml")
#: environment variable: extra folders (``os.pathsep``-separated) searched for chains by name
CHAIN_PATH_ENV = "CTMTL_CHAIN_PATH"
_EXTENDS = "_extends_"


class Chain(Compose):
    """A loaded preprocessing chain: a MONAI ``Compose`` (``map_items=True``: steps after a slicing step run
    on each slice) that also knows where it came from.

    Attributes:
        name: the name or path it was asked for (recorded in each sample's ``meta["chain"]``).
        path: the file.
        params: the parameter values it was built with (defaults with overrides applied).
        digest: a short hash of the resolved configuration (file contents and parameters), for cache keys.
    """

    def __init__(self, transforms: Sequence, name: str, path: Path, params: Mapping[str, Any], digest: str) -> None:
        super().__init__(list(transforms), map_items=True)
        self.name = name
        self.path = Path(path)
        self.params = dict(params)
        self.digest = digest

    @property
    def is_random(self) -> bool:
        """Whether any step draws random numbers (then the chain cannot be cached)."""
        return any(isinstance(t, Randomizable) for t in self.flatten().transforms)

    def __repr__(self) -> str:
        return f"Chain({self.name!r}, {len(self.transforms)} steps, path={str(self.path)!r})"


def _package_dir() -> Path:
    return Path(str(resources.files("ctmtl.chains")))


def chain_dirs(search_dirs: Iterable[str | Path] | None = None) -> list[Path]:
    """Folders searched for a chain given by name, in order: ``search_dirs``, ``$CTMTL_CHAIN_PATH``, the package."""
    dirs = [Path(p) for p in (search_dirs or [])]
    dirs += [Path(p) for p in os.environ.get(CHAIN_PATH_ENV, "").split(os.pathsep) if p]
    dirs.append(_package_dir())
    return dirs


def available_chains(search_dirs: Iterable[str | Path] | None = None) -> dict[str, Path]:
    """Every chain that a bare name can reach: name -> file (the first folder that has it wins)."""
    found: dict[str, Path] = {}
    for folder in chain_dirs(search_dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in CHAIN_SUFFIXES and not path.name.startswith((".", "_")):
                found.setdefault(path.stem, path)
    return found


def _is_path_like(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith(CHAIN_SUFFIXES)


def find_chain(name_or_path: str | Path, search_dirs: Iterable[str | Path] | None = None, base_dir: str | Path | None = None) -> Path:
    """The file of a chain.

    Args:
        name_or_path: a chain name (``"ct_volume_hu"``) or a file path.
        search_dirs: extra folders searched first for a name.
        base_dir: folder that a relative path is relative to (a manifest's folder); default the working directory.

    Raises:
        ChainError: no such chain (the message lists where it looked and what is available).
    """
    text = str(name_or_path)
    if not text.strip():
        raise ChainError("chain '': empty chain name")
    if isinstance(name_or_path, Path) or _is_path_like(text):
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or Path.cwd()) / path
        if path.is_file():
            return path.resolve()
        raise ChainError(f"chain {text!r}: file {path} not found")
    dirs = chain_dirs(search_dirs)
    for folder in dirs:
        for suffix in CHAIN_SUFFIXES:
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path.resolve()
    names = ", ".join(sorted(available_chains(search_dirs))) or "none"
    raise ChainError(f"chain {text!r}: not found (looked in {', '.join(str(d) for d in dirs)}; available: {names})")


def _read(path: Path, label: str) -> dict:
    from monai.bundle import ConfigParser

    try:
        config = ConfigParser.load_config_file(path)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError, ValueError (suffix)
        msg = " ".join(str(err).split())
        raise ChainError(f"chain {label} ({path}): does not parse ({type(err).__name__}: {msg})") from None
    if not isinstance(config, dict):
        raise ChainError(f"chain {label} ({path}): does not parse (expected a mapping at the top, got {type(config).__name__})")
    return config


def chain_config(
    name_or_path: str | Path, search_dirs: Iterable[str | Path] | None = None, base_dir: str | Path | None = None
) -> tuple[dict, Path]:
    """The configuration of a chain as a plain dict (``_extends_`` resolved) and its file.

    Raises:
        ChainError: not found, does not parse, ``transforms`` is not a list, or an ``_extends_`` loop.
    """
    search_dirs = list(search_dirs or [])
    path = find_chain(name_or_path, search_dirs, base_dir)
    label = repr(str(name_or_path))
    config = _read(path, label)
    seen, current = {path}, path
    while _EXTENDS in config:
        base_name = config.pop(_EXTENDS)
        try:
            base_path = find_chain(base_name, [current.parent, *search_dirs], base_dir=current.parent)
        except ChainError as err:
            raise ChainError(f"chain {label} ({path}): _extends_ {err.problems[0]}") from None
        if base_path in seen:
            raise ChainError(f"chain {label} ({path}): _extends_ loop through {base_path}")
        seen.add(base_path)
        config = {**_read(base_path, repr(str(base_name))), **config}  # the base's own _extends_ is followed next
        current = base_path
    if not isinstance(config.get("transforms"), list) or not config["transforms"]:
        raise ChainError(f"chain {label} ({path}): needs a non-empty list 'transforms'")
    return config, path


def _params(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "transforms" and not k.startswith("_")}


def load_chain(
    name_or_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    search_dirs: Iterable[str | Path] | None = None,
    base_dir: str | Path | None = None,
    strict: bool = False,
) -> Chain:
    """Build a chain: find its file, apply parameter overrides, instantiate every step.

    Args:
        name_or_path: chain name or file (see the module docstring for where names are looked up).
        overrides: parameter values replacing the file's defaults, e.g. ``{"spatial_size": [128, 128]}``.
            Keys the chain does not declare are ignored (one override dict can serve every chain of a merged
            data set), unless ``strict``.
        search_dirs: extra folders searched first for a name.
        base_dir: folder a relative path is relative to.
        strict: an override the chain does not declare is an error.

    Returns:
        a :class:`Chain` (a MONAI ``Compose``).

    Raises:
        ChainError: one line naming the chain: not found, does not parse, unknown parameter (strict), or a step
            that cannot be built (missing class, wrong arguments), naming the step.
    """
    from monai.bundle import ConfigParser

    config, path = chain_config(name_or_path, search_dirs, base_dir)
    label = repr(str(name_or_path))
    params = _params(config)
    for key, value in (overrides or {}).items():
        if key in params:
            config[key] = value
        elif strict:
            raise ChainError(f"chain {label} ({path}): no parameter {key!r} to override (parameters: {', '.join(sorted(params))})")
    params = _params(config)
    parser = ConfigParser(config)
    steps = []
    for i, item in enumerate(config["transforms"]):
        target = item.get("_target_", "?") if isinstance(item, dict) else "?"
        try:
            step = parser.get_parsed_content(f"transforms#{i}", instantiate=True)
        except Exception as err:  # ModuleNotFoundError (no such class), RuntimeError (bad arguments), ...
            cause = err.__cause__ or err
            msg = " ".join(str(cause).split())
            raise ChainError(f"chain {label} ({path}): step {i} ({target}) cannot be built: {type(cause).__name__}: {msg}") from None
        if step is None:  # "_disabled_": true
            continue
        if not callable(step):
            raise ChainError(f"chain {label} ({path}): step {i} ({target}) is not a transform (got {type(step).__name__})")
        steps.append(step)
    resolved = json.dumps({"path": str(path), "config": config}, sort_keys=True, default=str)
    digest = hashlib.sha1(resolved.encode()).hexdigest()[:12]
    return Chain(steps, name=str(name_or_path), path=path, params=params, digest=digest)


def manifest_chains(
    manifest, overrides: Mapping[str, Any] | None = None, search_dirs: Iterable[str | Path] | None = None, deterministic: bool = True
) -> dict[str, Chain]:
    """Load every chain a manifest's entries use (entry ``transforms``, else header, else the kind's default).

    Args:
        manifest: a :class:`ctmtl.data.manifest.Manifest`.
        overrides: parameter overrides for every chain (see :func:`load_chain`).
        search_dirs: extra folders for chain names.
        deterministic: a chain with a random step is an error (source chains are cached; augmentation belongs
            in ``train_augment``).

    Returns:
        chain name (as written) -> :class:`Chain`.

    Raises:
        ChainError: one line per failing chain, each naming the manifest, the chain and the first entry using it.
    """
    chains: dict[str, Chain] = {}
    problems: list[str] = []
    first_user: dict[str, str] = {}
    for i, entry in enumerate(manifest.entries):
        first_user.setdefault(manifest.chain_of(entry), f"entry {i} (id {entry.get('id')!r})")
    for name, user in first_user.items():
        where = f"manifest {manifest.path}, {user}"
        try:
            chain = load_chain(name, overrides, search_dirs=search_dirs, base_dir=manifest.root)
        except ChainError as err:
            problems += [f"{where}: {line}" for line in err.problems]
            continue
        if deterministic and chain.is_random:
            steps = [type(t).__name__ for t in chain.flatten().transforms if isinstance(t, Randomizable)]
            problems.append(
                f"{where}: chain {name!r} ({chain.path}) has random steps ({', '.join(steps)}); a source chain is cached, "
                "put augmentation in train_augment"
            )
            continue
        chains[name] = chain
    if problems:
        raise ChainError(problems)
    return chains


def check_manifest_chains(manifest, overrides: Mapping[str, Any] | None = None, search_dirs: Iterable[str | Path] | None = None) -> list[str]:
    """Problems with a manifest's chains, one line each (empty when every chain loads); for ``ctmtl manifest check``."""
    try:
        manifest_chains(manifest, overrides, search_dirs)
    except ChainError as err:
        return list(err.problems)
    return []

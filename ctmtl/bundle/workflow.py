"""Running a bundle config from Python the way ``python -m monai.bundle run`` does, with ctmtl's errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctmtl.errors import ConfigError, CtmtlError

__all__ = ["run_workflow", "ctmtl_cause"]


def ctmtl_cause(err: BaseException) -> CtmtlError | None:
    """The ctmtl error under MONAI's wrappers (``RuntimeError: Failed to instantiate ...`` / ``... evaluate ...``)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, CtmtlError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_workflow(
    config_files: str | Path | Sequence[str | Path],
    workflow_type: str | None = "train",
    *,
    meta_file: str | Path | None = None,
    logging_file: str | Path | bool | None = None,
    check: bool = True,
    **overrides: Any,
):
    """Run a bundle workflow: ``monai.bundle.ConfigWorkflow`` ``initialize()``, ``run()``, ``finalize()``.

    The same wiring as ``python -m monai.bundle run --config_file ... --key value``: ``ctmtl train`` / ``ctmtl demo``
    and a shell user get the same run from the same values.

    Args:
        config_files: config file(s), merged in order (e.g. ``train.json`` then ``multi_gpu_train.json``).
        workflow_type: ``train``, ``eval`` or ``infer`` (MONAI's property checks), or None.
        meta_file: default ``metadata.json`` beside the first config.
        logging_file: default ``logging.conf`` beside the first config; False leaves logging alone.
        check: after ``initialize()``, fail when a property MONAI requires of ``workflow_type`` is missing.
        overrides: top-level (or ``a#b``) config ids and their values, e.g. ``image_size=[128, 128]``,
            ``dataset_manifest="/data/ucsd.json"``.

    Returns:
        the finished ``ConfigWorkflow`` (e.g. ``workflow.parser.get_parsed_content("train#trainer")``).

    Raises:
        CtmtlError: a ctmtl error anywhere in the run, re-raised as itself (one line per problem) with MONAI's
            wrapper as its cause.
        ConfigError: a config file that does not exist, or a missing required property.
    """
    from monai.bundle import ConfigWorkflow

    files = [config_files] if isinstance(config_files, (str, Path)) else list(config_files)
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such bundle config file")
    kwargs: dict[str, Any] = {"workflow_type": workflow_type}
    if meta_file is not None:
        kwargs["meta_file"] = str(meta_file)
    if logging_file is not None:
        kwargs["logging_file"] = logging_file if isinstance(logging_file, bool) else str(logging_file)
    try:
        workflow = ConfigWorkflow(config_file=[str(f) for f in files], **kwargs, **overrides)
        workflow.initialize()
        if check and workflow_type is not None:
            absent = workflow.check_properties()
            if absent:
                raise ConfigError(f"{files[0]}: missing the {workflow_type} properties {absent} that MONAI requires")
        workflow.run()
        workflow.finalize()
    except CtmtlError:
        raise
    except Exception as err:
        cause = ctmtl_cause(err)
        if cause is None:
            raise
        raise type(cause)(cause.problems) from err
    return workflow

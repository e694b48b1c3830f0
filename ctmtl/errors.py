"""Errors that reach the user as one clear line per problem (the CLI prints them, no traceback)."""

from __future__ import annotations

from collections.abc import Iterable


class CtmtlError(Exception):
    """Base class of every error ctmtl raises on bad input.

    Args:
        problems: one message or several; each names the file or manifest entry and what is wrong.
    """

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ManifestError(CtmtlError):
    """A manifest, or a file it points to, is not usable."""


class ChainError(CtmtlError):
    """A preprocessing chain does not exist, does not parse, or names a missing class."""


class DataError(CtmtlError):
    """An image, mask or annotation cannot be read or is inconsistent."""


class ConfigError(CtmtlError):
    """A training / bundle configuration value is wrong."""


class ModelError(CtmtlError):
    """A checkpoint or bundle cannot be loaded into the expected network."""

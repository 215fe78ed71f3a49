"""Exceptions raised by the library.

Every error a user can cause by what they pass in (a path, a column, an option
value, a cache that does not match) is an :class:`IqaError`.  Its message is one
line that names the culprit and what was expected; ``cli/`` turns it into an
exit code.  Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

MAX_SHOWN = 200  # characters of a value echoed in an error message


def clip(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as text, cut to ``limit`` characters (saying how many more
    were left out): a value echoed in a one-line error never makes it long."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


class IqaError(Exception):
    """Base class for user-facing errors (one-line message, exit code 2)."""

    exit_code = 2


class DatasetError(IqaError):
    """A dataset description (root, CSV, column, row, image) is not usable."""


class CacheError(IqaError):
    """An HDF5 cache is missing, damaged, incomplete or does not match."""


class ConfigError(IqaError):
    """An option value or a combination of options is invalid."""


class WeightsUnavailable(IqaError):
    """Pretrained encoder weights cannot be found or downloaded."""


class RunError(IqaError):
    """A run directory is missing, unfinished or would be overwritten."""


class TrainingDiverged(IqaError):
    """Training produced a non-finite loss or prediction."""

    exit_code = 4


class WriteError(IqaError):
    """An output file cannot be written (disk full, no permission); nothing
    half-written is left under its name."""

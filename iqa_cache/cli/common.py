"""Shared CLI pieces: error handling, choice enums, option parsers."""
from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Callable, Optional, TypeVar

import typer

from iqa_cache.binning import parse_decimal
from iqa_cache.device import Device  # noqa: F401  (the --device choices, from the library)
from iqa_cache.errors import IqaError

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_WITH_FAILURES = 3
EXIT_INTERRUPTED = 130


@dataclass
class _State:
    debug: bool = False


STATE = _State()
F = TypeVar("F", bound=Callable)


def handle_errors(fn: F) -> F:
    """Turn library errors into a one-line message and an exit code (a
    traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except IqaError as e:
            if STATE.debug:
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if STATE.debug:
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as e:
            if STATE.debug:
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            typer.echo(f"error: {e.strerror or e}{where}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class ResizeMode(str, Enum):
    squash = "squash"
    shortest = "shortest"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class DatasetName(str, Enum):
    koniq = "koniq"
    spaq = "spaq"
    csv = "csv"
    demo = "demo"
    webdataset = "webdataset"


class OutOfRange(str, Enum):
    error = "error"
    clip = "clip"
    drop = "drop"


# The label CSV's columns and the label scale: declared once for `iqa embed`
# (--dataset csv; webdataset reads json keys of the same names) and `iqa import`.
_LABEL_COL_HELP = "CSV column with the labels [default: label, mos, score or quality]"
_SPLIT_COL_HELP = ("CSV column with train/val/test [default: split or set; without one, a seeded random split in "
                   "KonIQ-10k's proportions, about 70/10/20]")
LabelCol = Annotated[Optional[str], typer.Option("--label-col", help=_LABEL_COL_HELP + ".")]
SplitCol = Annotated[Optional[str], typer.Option("--split-col", help=_SPLIT_COL_HELP + ".")]
# embed's take the webdataset spelling too
LabelColOrKey = Annotated[Optional[str], typer.Option(
    "--label-col", "--label-key", help=_LABEL_COL_HELP + "; webdataset: the json key (or a member such as cls) "
                                                         "with the label.")]
SplitColOrKey = Annotated[Optional[str], typer.Option(
    "--split-col", "--split-key", help=_SPLIT_COL_HELP + "; webdataset: the json key with the split.")]
LabelRange = Annotated[Optional[str], typer.Option(
    help="The label scale LO,HI [default: the smallest whole-number range that holds every label].",
    metavar="LO,HI")]
OutOfRangeOpt = Annotated[OutOfRange, typer.Option(
    "--out-of-range", help="Labels outside --label-range: error, clip (into the range) or drop (the rows).")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the random split when the data has none.")]


def _not_number(text: str) -> bool:
    try:
        parse_decimal(text)
        return False
    except ValueError:
        return True


def parse_range(text: str | None) -> tuple[float, float] | None:
    """'LO,HI' → (lo, hi)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2:
        raise typer.BadParameter(f"'{text}' is not LO,HI (two numbers separated by a comma)",
                                 param_hint="--label-range")
    try:
        lo, hi = (parse_decimal(x) for x in parts)
    except ValueError as e:
        bad = next(x.strip() for x in parts if _not_number(x))
        raise typer.BadParameter(f"'{text}' is not LO,HI: '{bad}' {e}", param_hint="--label-range") from None
    if not lo < hi:
        raise typer.BadParameter(f"'{text}': LO must be below HI", param_hint="--label-range")
    return lo, hi


EXPECT_KEYS = {"model": str, "pretrained": str, "pretrained_kind": str, "pretrained_sha256": str,
               "resize_mode": str, "image_size": int, "interpolation": str, "precision": str, "dataset": str,
               "feature_dim": int}


def parse_expect(items: list[str] | None) -> dict:
    """['pretrained=laion2b_s34b_b79k', 'image_size=224'] → typed dict of
    cache attributes that must match."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in EXPECT_KEYS:
            raise typer.BadParameter(f"'{item}' is not KEY=VALUE with KEY one of {', '.join(EXPECT_KEYS)}",
                                     param_hint="--expect")
        try:
            out[key] = EXPECT_KEYS[key](value.strip())
        except ValueError:
            raise typer.BadParameter(f"'{item}': {key} must be a whole number", param_hint="--expect") from None
    return out


def echo_out(text: str) -> None:
    """Tables and results go to stdout."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()

"""Shared CLI pieces: error handling, choice enums, option parsers."""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, List, Optional, TypeVar

import typer
from typer.core import TyperCommand

from iqa_cache.binning import parse_decimal
from iqa_cache.device import Device  # noqa: F401  (the --device choices, from the library)
from iqa_cache.embed.decode import DECODERS
from iqa_cache.embed.preprocess import PRECISIONS, RESIZE_MODES
from iqa_cache.errors import IqaError, clip

from . import signals
from .signals import EXIT_INTERRUPTED, sigterm_as_interrupt

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_WITH_FAILURES = 3


@dataclass
class _State:
    debug: bool = False
    quiet: bool = False  # -q: no progress bars either


STATE = _State()
F = TypeVar("F", bound=Callable)


def handle_errors(fn: F) -> F:
    """Turn library errors into a one-line message and an exit code (a
    traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            signals.arm()  # SIGTERM and Ctrl-C raise KeyboardInterrupt from here (one that came earlier: now)
            return fn(*args, **kwargs)
        except IqaError as e:
            if STATE.debug:
                raise
            typer.echo(f"error: {one_line(str(e))}", err=True)
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


MAX_ERROR_CHARS = 2000  # the library cuts the values it echoes; this is the safety net for the rest


def one_line(msg: str) -> str:
    """An error message on one line, at most about :data:`MAX_ERROR_CHARS`
    characters (a 10-million-character label must not make a 10 MB line)."""
    return clip(" ".join(msg.splitlines()), MAX_ERROR_CHARS)


_LIST_OR_RANGE = re.compile(r"<list\[(.*?)\]>|<(int|float) range>")


def _plain_type(text: str) -> str:
    """``<list[str]>`` → ``<str>``, ``<int range>`` → ``<int>``: the help says
    what repeats and the bounds."""
    return _LIST_OR_RANGE.sub(lambda m: f"<{m.group(1) or m.group(2)}>", text)


class Command(TyperCommand):
    """Every `iqa` command's help: usage ``RUN...`` rather than
    ``{RUN}...``, arguments by their metavar without a ``<list[Path]>``
    type, and option types without ``list[...]`` or ``range``.  Under the
    global ``-q`` a command's progress bars are off, as if ``--no-progress``
    were given."""

    def invoke(self, ctx: typer.Context):
        if STATE.quiet and "progress" in ctx.params:
            ctx.params["progress"] = False
        return super().invoke(ctx)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [re.sub(r"^\{(.*)\}", r"\1", p) for p in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx: typer.Context, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            rv = param.get_help_record(ctx)
            if rv is None:
                continue
            if param.param_type_name == "argument":
                name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
                args.append((name, rv[1]))
            elif param.param_type_name == "option":
                opts.append((_plain_type(rv[0]), rv[1]))
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of a library's choice tuple, for an option's choices."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


ResizeMode = choices("ResizeMode", RESIZE_MODES)
Precision = choices("Precision", PRECISIONS)
Decoder = choices("Decoder", DECODERS)
# the engines' choices (sources.DATASETS, datasets.OUT_OF_RANGE_POLICIES, embed.PIPELINES) live in modules that
# import pandas or torch; tests/test_options.py checks that these equal them
DatasetName = choices("DatasetName", ("koniq", "spaq", "csv", "demo", "webdataset"))
OutOfRange = choices("OutOfRange", ("error", "clip", "drop"))
Pipeline = choices("Pipeline", ("auto", "pil", "tensor"))


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
CacheFile = Annotated[Path, typer.Option(help="HDF5 cache made by `iqa embed` or `iqa import`.", metavar="FILE")]
Expect = Annotated[Optional[List[str]], typer.Option(
    help="Refuse the cache unless its attribute KEY equals VALUE (repeatable), e.g. "
         "pretrained=laion2b_s34b_b79k, resize_mode=squash, model=ViT-B-32.", metavar="KEY=VALUE")]
LabelRange = Annotated[Optional[str], typer.Option(
    help="The label scale LO,HI [default: the smallest whole-number range that holds every label].",
    metavar="LO,HI")]
OutOfRangeOpt = Annotated[OutOfRange, typer.Option(
    "--out-of-range", help="Labels outside --label-range: error, clip (into the range) or drop (the rows).")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the random split when the data has none.")]
Threads = Annotated[Optional[int], typer.Option(min=1, help="CPU threads for training (a shared machine) "
                                                            "[default: torch's, one per core].",
                                                show_default=False)]
LogEvery = Annotated[int, typer.Option(min=0, help="With --no-progress: a log line every this many epochs of a "
                                                   "stack, with the elapsed time (0: none; one line per finished "
                                                   "stack always).")]


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


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM ends a run like Ctrl-C: cleanup runs (committed batches stay,
    temporary files go), exit code 130."""
    try:
        old = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)

"""The Typer application object and its global options."""
from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from .common import STATE

# The commands as `iqa --help` lists them: the pipeline's order.  Typer lists
# commands in the order they were registered, which is the order the command
# modules happen to be imported in (ablate_cmd imports train_cmd, so
# train-head came first); this list decides instead.
COMMAND_ORDER = ("embed", "import", "train-head", "ablate", "evaluate", "report", "predict", "demo")


class PipelineOrder(TyperGroup):
    """The `iqa` group: lists its commands in :data:`COMMAND_ORDER`; a command
    missing from it comes last (tests/test_first_look.py fails on one)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(COMMAND_ORDER)))


app = typer.Typer(
    name="iqa",
    cls=PipelineOrder,
    help="Frozen-CLIP embeddings in an HDF5 cache, and LDS/FDS regression heads trained on them in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


MAX_WARNING_CHARS = 600  # longer warnings are cut on the terminal unless -v


def shorten(msg: str, limit: int = MAX_WARNING_CHARS) -> str:
    """``msg`` cut to about ``limit`` characters at a word boundary, saying
    how much was left out; the library summarises its own long lists, this
    is the safety net for the rest."""
    if len(msg) <= limit:
        return msg
    cut = msg.rfind(" ", 0, limit)
    cut = cut if cut > limit // 2 else limit
    return f"{msg[:cut].rstrip(' ,;')} ... ({len(msg) - cut:,} more characters; -v shows all)"


class _Formatter(logging.Formatter):
    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if not self.verbose and logging.WARNING <= record.levelno < logging.ERROR:
            msg = shorten(msg)
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"warning: {msg}"
        return msg


class _QuietThirdParty(logging.Filter):
    """OpenCLIP logs chatter on the root logger; show it only with -v."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("iqa_cache"):
            return True
        return self.verbose or record.levelno >= logging.ERROR


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure logging once: messages on stderr, warnings prefixed."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_iqa", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._iqa = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter(verbose))
    handler.addFilter(_QuietThirdParty(verbose))
    root.addHandler(handler)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root.setLevel(level)
    for name in ("iqa_cache",):
        logging.getLogger(name).setLevel(level)


def _print_version(value: bool) -> None:
    if value:
        from iqa_cache import DISTRIBUTION, __version__  # importlib.metadata: only when asked

        typer.echo(f"{DISTRIBUTION} {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version of iqa-cache and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output (includes OpenCLIP's).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr (no progress "
                                                              "bars).")] = False,
) -> None:
    STATE.debug = debug or os.environ.get("IQA_DEBUG", "") not in ("", "0")
    STATE.quiet = quiet
    setup_logging(verbose, quiet)

"""SIGTERM as Ctrl-C, and the exit code of both: light (no typer), so that
:func:`iqa_cache.cli.main.main` sets it up before anything else loads.

While the command line loads (its modules, then Typer reading the
commands' signatures), SIGTERM and Ctrl-C are only recorded
(:func:`defer`): raised there, KeyboardInterrupt could land inside a
library's import (which may swallow it) or in Typer outside any handler (a
traceback).  The command's error handling calls :func:`arm` first thing:
from then on both raise KeyboardInterrupt, and one recorded while loading
is raised at once, so it ends like Ctrl-C: ``interrupted``, exit 130."""
from __future__ import annotations

import signal

EXIT_INTERRUPTED = 130

_deferring = False
_pending: list[int] = []


def sigterm_as_interrupt(signum, frame):  # pragma: no cover - exercised by the subprocess tests
    """A SIGTERM handler that raises KeyboardInterrupt: the run ends as on Ctrl-C."""
    raise KeyboardInterrupt


def _record(signum, frame):  # pragma: no cover - exercised by the subprocess tests
    _pending.append(signum)


def defer() -> None:
    """Record SIGTERM and Ctrl-C instead of raising them, until :func:`arm`
    (the `iqa` process only: :func:`iqa_cache.cli.main.main` calls it)."""
    global _deferring
    _deferring = True
    signal.signal(signal.SIGTERM, _record)
    signal.signal(signal.SIGINT, _record)


def arm() -> None:
    """At a command's start: SIGTERM and Ctrl-C raise KeyboardInterrupt from
    now on, and one that came while the command line loaded is raised now.
    Does nothing unless :func:`defer` was called (e.g. under CliRunner)."""
    global _deferring
    if not _deferring:
        return
    _deferring = False
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _pending:
        raise KeyboardInterrupt

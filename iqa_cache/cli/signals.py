"""SIGTERM as Ctrl-C, and the exit code of both: light (no typer), so that
:func:`iqa_cache.cli.main.main` installs it before anything else loads."""
from __future__ import annotations

EXIT_INTERRUPTED = 130


def sigterm_as_interrupt(signum, frame):  # pragma: no cover - exercised by the subprocess tests
    """A SIGTERM handler that raises KeyboardInterrupt: the run ends as on Ctrl-C."""
    raise KeyboardInterrupt

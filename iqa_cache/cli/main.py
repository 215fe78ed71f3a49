"""Entry point of the `iqa` console script.

:func:`main` defers SIGTERM and Ctrl-C while the command line loads and
makes them end the command like Ctrl-C once it runs (:mod:`.signals`): a
SIGTERM at any moment, from the process's first instant, exits with 130
and the line ``interrupted``, never a traceback or a bare -15.
``from iqa_cache.cli.main import app`` gives the application with every
command registered.
"""
from __future__ import annotations

import sys

from . import signals


def _app():
    from . import (  # noqa: F401  (register)
        ablate_cmd,
        demo_cmd,
        embed_cmd,
        evaluate_cmd,
        import_cmd,
        predict_cmd,
        report_cmd,
        train_cmd,
    )
    from .app import app

    return app


def __getattr__(name: str):
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _exit_interrupted(say: bool) -> None:
    """Exit 130 now.  ``os._exit``, after flushing: CPython ends with SIGINT
    (-2), even though the interrupt was handled, when its last
    KeyboardInterrupt was raised inside some C code (an extension's import)."""
    import logging
    import os

    if say:
        sys.stderr.write("interrupted\n")
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(signals.EXIT_INTERRUPTED)


def main() -> None:
    signals.defer()
    try:
        _app()()
    except KeyboardInterrupt:  # pragma: no cover - only if an interrupt escapes the command's handling
        _exit_interrupted(say=True)
    except SystemExit as e:
        if e.code == signals.EXIT_INTERRUPTED:
            _exit_interrupted(say=False)
        raise


if __name__ == "__main__":
    main()

"""Entry point of the `iqa` console script.

:func:`main` makes SIGTERM end the process like Ctrl-C from its first
instant (exit code 130, the commands' cleanup runs) and only then imports
the command modules, so that a Ctrl-C or SIGTERM while they load prints
``interrupted``, not a traceback.  ``from iqa_cache.cli.main import app``
gives the application with every command registered.
"""
from __future__ import annotations

import signal
import sys

from .signals import EXIT_INTERRUPTED, sigterm_as_interrupt


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


def main() -> None:
    try:
        signal.signal(signal.SIGTERM, sigterm_as_interrupt)
        app = _app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    app()


if __name__ == "__main__":
    main()

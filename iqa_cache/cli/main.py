"""Entry point of the `iqa` console script."""
from __future__ import annotations

from . import ablate_cmd, demo_cmd, embed_cmd, import_cmd, predict_cmd, report_cmd, train_cmd  # noqa: F401  (register)
from .app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Entry point of the `iqa` console script."""
from __future__ import annotations

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""What became of each configuration of an ablation, and of the whole."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..results import TrainResult
from ..runs import Run
from .expand import GridPoint


@dataclass
class Outcome:
    """What became of one configuration.  ``run``: its run directory as
    written (read back, so the summary is computed from the files `iqa
    report` reads); ``kept``: that run was already there, finished, for the
    same configuration and cache, and was not retrained."""

    point: GridPoint
    status: str  # ok, diverged, skipped
    message: str = ""
    result: TrainResult | None = None
    run_dir: Path | None = None
    run: Run | None = None
    kept: bool = False

    @property
    def predictions(self) -> pd.DataFrame | None:
        if self.run is not None:
            return self.run.predictions
        return self.result.predictions if self.result is not None else None

    @property
    def best(self) -> tuple[float, int]:
        """(validation MAE, epoch) of the epoch kept."""
        if self.result is not None:
            return self.result.best_val_mae, self.result.best_epoch
        m = self.run.metrics if self.run is not None else {}
        val = m.get("best_val_mae")
        return (math.nan if val is None else float(val)), int(m.get("best_epoch", -1))


@dataclass
class AblationResult:
    outcomes: list[Outcome]
    summary: pd.DataFrame
    notes: list[str]
    out_dir: Path
    seconds: float
    n_stacks: int
    device: str

    @property
    def n_diverged(self) -> int:
        return sum(o.status == "diverged" for o in self.outcomes)

    @property
    def n_ok(self) -> int:
        return sum(o.status == "ok" for o in self.outcomes)

    @property
    def n_kept(self) -> int:
        return sum(o.kept for o in self.outcomes)

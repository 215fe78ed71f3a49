"""What became of each configuration of an ablation, and of the whole."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..results import TrainResult
from ..runs import Run, load_run
from ..status import OK, RUN_STATUSES
from .expand import GridPoint


@dataclass
class Outcome:
    """What became of one configuration.  ``run``: its run directory as
    written (read back, so the summary is computed from the files `iqa
    report` reads); ``kept``: that run was already there, finished, for the
    same configuration and cache, and was not retrained."""

    point: GridPoint
    status: str  # a trained run's (ok, worse-than-mean, unstable: RUN_STATUSES), diverged, skipped
    message: str = ""
    result: TrainResult | None = None
    run_dir: Path | None = None
    run: Run | None = None
    kept: bool = False

    @classmethod
    def trained(cls, point: GridPoint, run_dir: Path, *, result: TrainResult | None = None, run: Run | None = None,
                kept: bool = False) -> "Outcome":
        """A trained configuration (its run directory ``run_dir``, read
        unless ``run`` is given), its status and why from the run's metrics
        (runs written before statuses existed: ok)."""
        run = run if run is not None else load_run(run_dir)
        return cls(point, str(run.metrics.get("status", OK)), str(run.metrics.get("status_reason", "")),
                   result=result, run_dir=run_dir, run=run, kept=kept)

    @property
    def is_trained(self) -> bool:
        return self.status in RUN_STATUSES

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
        return sum(o.status == OK for o in self.outcomes)

    @property
    def n_trained(self) -> int:
        """Configurations with a run directory, whatever their status."""
        return sum(o.is_trained for o in self.outcomes)

    def suspect(self) -> dict[str, int]:
        """How many trained runs have each status other than ok."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            if o.is_trained and o.status != OK:
                out[o.status] = out.get(o.status, 0) + 1
        return out

    @property
    def n_kept(self) -> int:
        return sum(o.kept for o in self.outcomes)

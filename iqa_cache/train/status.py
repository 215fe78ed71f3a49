"""A run's status, recorded in its metrics.json: whether it beat predicting
the training mean, and whether its validation error stayed sane after the
epoch kept.  Torch-free (the report and the ablation summary read it)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["OK", "WORSE_THAN_MEAN", "UNSTABLE", "RUN_STATUSES", "UNSTABLE_FACTOR", "mean_baseline_mae", "run_status"]

# A run's status (metrics.json, the ablation summary): ``ok``; ``worse-than-mean``,
# its best validation MAE not below that of predicting the training labels'
# mean; ``unstable``, its validation MAE after the best epoch rose above
# UNSTABLE_FACTOR times the best (or became non-finite): the epoch kept was a
# lucky one.  A run without validation images is ``ok`` (nothing to check).
OK, WORSE_THAN_MEAN, UNSTABLE = "ok", "worse-than-mean", "unstable"
RUN_STATUSES = (OK, WORSE_THAN_MEAN, UNSTABLE)
UNSTABLE_FACTOR = 100.0


def mean_baseline_mae(labels: np.ndarray, split: np.ndarray) -> float:
    """The validation MAE of predicting the training labels' mean (NaN
    without training or validation labels)."""
    tr, va = labels[split == "train"], labels[split == "val"]
    tr, va = tr[np.isfinite(tr)], va[np.isfinite(va)]
    if not len(tr) or not len(va):
        return math.nan
    return float(np.abs(va.astype(np.float64) - tr.astype(np.float64).mean()).mean())


def run_status(history: Sequence[dict[str, float]], best_epoch: int, best_val_mae: float,
               mean_val_mae: float) -> tuple[str, str]:
    """``(status, why)`` of a run (:data:`RUN_STATUSES`); ``why`` is '' for ok.
    History rows without an epoch (ridge's strengths) are not epochs after the best."""
    if not math.isfinite(best_val_mae):
        return OK, ""
    if math.isfinite(mean_val_mae) and not best_val_mae < mean_val_mae:
        return WORSE_THAN_MEAN, (f"best validation MAE {best_val_mae:.4g} is not below the {mean_val_mae:.4g} of "
                                 "predicting the training mean")
    after = [h["val_mae"] for h in history if "epoch" in h and "val_mae" in h and h["epoch"] > best_epoch]
    worst = max(after, key=lambda v: v if math.isfinite(v) else math.inf, default=None)
    if worst is not None and not worst <= UNSTABLE_FACTOR * best_val_mae:
        return UNSTABLE, (f"validation MAE rose to {worst:.4g} after the best epoch {best_epoch} "
                          f"({best_val_mae:.4g}), over {UNSTABLE_FACTOR:g} times the best")
    return OK, ""

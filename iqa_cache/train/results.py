"""What training hands back: a :class:`TrainResult` per head, packaged the
same way by the stacked engine (:mod:`iqa_cache.train.stacked`) and by the plain
reference loop (``tests/reference.py``), and the messages with which either
gives up on a configuration (:class:`~iqa_cache.errors.TrainingDiverged`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..binning import Bins
from ..cache import CacheData
from ..metrics import default_edges, mae, per_bin_mae
from .config import TrainConfig
from .head import ResidualMLPHead
from .status import mean_baseline_mae, run_status


@dataclass
class TrainResult:
    head: ResidualMLPHead
    config: TrainConfig
    bins: Bins
    best_epoch: int
    best_val_mae: float
    history: list[dict[str, float]]
    predictions: pd.DataFrame
    metrics: dict[str, Any]
    seconds: float
    device: str


def summarize(predictions: pd.DataFrame, label_range: tuple[float, float]) -> dict[str, Any]:
    """MAE per split and per label bin (default edges for the range)."""
    out: dict[str, Any] = {}
    edges = default_edges(label_range)
    for split in ("train", "val", "test"):
        p = predictions[predictions["split"] == split]
        if len(p) == 0:
            continue
        out[split] = {"n": int(len(p)), "mae": mae(p["label"], p["pred"]),
                      "per_bin": {k: {"mae": v[0], "n": v[1]}
                                  for k, v in per_bin_mae(p["label"], p["pred"], edges).items()}}
    return out


def package_result(data: CacheData, cfg: TrainConfig, bins: Bins, head: ResidualMLPHead, pred: np.ndarray, *,
                   best_epoch: int, best_val_mae: float, history: list[dict[str, float]], seconds: float,
                   device: str, stopped_epoch: int | None = None) -> TrainResult:
    """The selected ``head`` with its predictions ``pred`` for every cached
    image and their metrics; ``stopped_epoch``: the last epoch trained when
    ``--patience`` stopped it early (None: it ran every epoch)."""
    predictions = pd.DataFrame({"image_id": data.image_id, "split": data.split,
                                "label": data.label.astype(np.float64), "pred": pred})
    metrics = summarize(predictions, data.label_range)
    metrics.update({"best_epoch": best_epoch, "best_val_mae": best_val_mae, "epochs": cfg.epochs,
                    "stopped_epoch": stopped_epoch})
    mean_val = mean_baseline_mae(data.label, data.split)
    status, why = run_status(history, best_epoch, best_val_mae, mean_val)
    metrics.update({"mean_val_mae": mean_val, "status": status, "status_reason": why})
    return TrainResult(head=head, config=cfg, bins=bins, best_epoch=best_epoch, best_val_mae=best_val_mae,
                       history=history, predictions=predictions, metrics=metrics, seconds=seconds, device=device)


def diverged_message(epoch: int, loss: float, lr: float, cfg: TrainConfig) -> str:
    """A training loss turned non-finite."""
    return (f"training diverged at epoch {epoch}: the loss is {loss} (lr {lr:g}, "
            f"lds={'on' if cfg.lds.enabled else 'off'}, fds={'on' if cfg.fds.enabled else 'off'}); "
            "try a lower --lr")


def never_finite_message(cfg: TrainConfig) -> str:
    """No epoch had a finite validation MAE: there is no head to select."""
    return f"the validation MAE was never finite in {cfg.epochs} epochs (lr {cfg.optim.lr:g}); try a lower --lr"


def nonfinite_predictions_message(best_epoch: int) -> str:
    """The selected head predicts non-finite values for some cached image."""
    return f"the selected head (epoch {best_epoch}) predicts non-finite values; try a lower --lr"

"""Stage two: train the residual MLP head on cached features.

:func:`train_head` trains one head with the stacked engine of
:mod:`iqa_cache.stacked` (a stack of one configuration): the whole split on
the device, index batches, one fused Adam call per step, vectorised FDS.
:func:`train_head_simple` is the same training as one readable loop (nanoGPT
style: the learning rate from a pure ``get_lr``, evaluation under
``torch.no_grad()``, the best validation-MAE epoch kept); it is the
reference the engine is tested against (same results for the same seed, to
float rounding).  The config is saved with the weights so the head can be
rebuilt from it.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from .binning import Bins
from .cache import CacheData
from .config import LOSSES, PRESETS, SCHEDULES, FDSConfig, HeadConfig, LDSConfig, OptimConfig, TrainConfig
from .device import resolve_device
from .errors import TrainingDiverged
from .head import ResidualMLPHead
from .metrics import default_edges, mae, per_bin_mae
from .stacked import check_data, loss_terms, train_stack

log = logging.getLogger(__name__)

__all__ = ["LOSSES", "PRESETS", "SCHEDULES", "FDSConfig", "HeadConfig", "LDSConfig", "OptimConfig",
           "TrainConfig", "TrainResult", "get_lr", "predict", "summarize", "train_head", "train_head_simple"]

def get_lr(epoch: int, optim: OptimConfig, epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based); pure."""
    if optim.schedule == "cosine":
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if optim.schedule == "step":
        return optim.lr * 0.1 ** sum(epoch >= int(epochs * f) for f in (0.6, 0.8))
    return optim.lr


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str) -> torch.Tensor:
    return (loss_terms(pred, target, kind) * weight).mean()


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


@torch.no_grad()
def predict(head: ResidualMLPHead, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x.new_zeros(0)


def train_head(data: CacheData, cfg: TrainConfig, *, progress: bool = False) -> TrainResult:
    """Train one head on ``data`` (a loaded cache) and return the head of the
    best validation-MAE epoch, its predictions for every cached image and
    its metrics.  Raises :class:`TrainingDiverged` on a non-finite loss."""
    (result,) = train_stack(data, [cfg], progress=progress)
    if isinstance(result, TrainingDiverged):
        raise result
    return result


def train_head_simple(data: CacheData, cfg: TrainConfig, *, progress: bool = False) -> TrainResult:
    """:func:`train_head` as one plain loop over ``nn.Module`` layers and
    ``torch.optim.Adam``: slower, easy to read, and the reference that the
    stacked engine must match."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    bins = cfg.bins(data.label_range)
    check_data(data, cfg, bins)
    tr, va = data.subset("train"), data.subset("val")
    head_cfg = replace(cfg.head, in_dim=int(data.features.shape[1]))
    cfg = replace(cfg, head=head_cfg, device=device)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(data.features).to(device)
    y_all = torch.from_numpy(data.label).to(device)
    tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
    x_tr, y_tr = x_all[tr_t], y_all[tr_t]
    b_tr = torch.from_numpy(bins.index(data.label[tr])).to(device) if cfg.fds.enabled else None
    w_tr = torch.from_numpy(cfg.lds.weights(data.label[tr], bins)).to(device)
    x_va, y_va = x_all[va_t], y_all[va_t]

    head = ResidualMLPHead(head_cfg, cfg.fds, bins.n).to(device)
    with torch.no_grad():
        head.fc.bias.fill_(float(y_tr.mean()))  # start from the mean label, not from 0
    opt = torch.optim.Adam(head.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                           weight_decay=cfg.optim.weight_decay)

    best_mae, best_epoch, best_state = math.inf, -1, None
    history: list[dict[str, float]] = []
    n_tr, bs = len(tr), cfg.batch_size
    epochs = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc="training", unit="epoch", leave=False, dynamic_ncols=True)
    for epoch in epochs:
        lr = get_lr(epoch, cfg.optim, cfg.epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        head.train()
        perm = torch.randperm(n_tr, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, n_tr, bs):
            idx = perm[i:i + bs]
            pred = head(x_tr[idx], b_tr[idx] if b_tr is not None else None, epoch)
            loss = weighted_loss(pred, y_tr[idx], w_tr[idx], cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
        train_loss = float(loss_sum) / n_tr
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training diverged at epoch {epoch}: the loss is {train_loss} (lr {lr:g}, "
                f"lds={'on' if cfg.lds.enabled else 'off'}, fds={'on' if cfg.fds.enabled else 'off'}); "
                "try a lower --lr")
        if head.fds is not None and epoch >= cfg.fds.start_update:
            with torch.no_grad():
                head.eval()
                head.fds.update(head.features(x_tr), b_tr, epoch)
        val_mae = float((predict(head, x_va) - y_va).abs().mean()) if len(va) else math.nan
        history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_mae": val_mae})
        improved = val_mae < best_mae if len(va) else True
        if improved:
            best_mae, best_epoch = (val_mae if len(va) else math.nan), epoch
            best_state = copy.deepcopy(head.state_dict())
    if best_state is None:
        raise TrainingDiverged(f"the validation MAE was never finite in {cfg.epochs} epochs (lr {cfg.optim.lr:g}); "
                               "try a lower --lr")
    head.load_state_dict(best_state)
    pred_all = predict(head, x_all).cpu().numpy().astype(np.float64)
    if not np.isfinite(pred_all).all():
        raise TrainingDiverged(f"the selected head (epoch {best_epoch}) predicts non-finite values; try a lower --lr")
    predictions = pd.DataFrame({"image_id": data.image_id, "split": data.split,
                                "label": data.label.astype(np.float64), "pred": pred_all})
    metrics = summarize(predictions, data.label_range)
    metrics.update({"best_epoch": best_epoch, "best_val_mae": best_mae, "epochs": cfg.epochs})
    head = head.cpu()
    return TrainResult(head=head, config=cfg, bins=bins, best_epoch=best_epoch, best_val_mae=best_mae,
                       history=history, predictions=predictions, metrics=metrics,
                       seconds=time.perf_counter() - t0, device=device)


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

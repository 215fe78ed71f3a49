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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from .cache import CacheData
from .encoder import resolve_device
from .errors import ConfigError, TrainingDiverged
from .head import HeadConfig, ResidualMLPHead
from .imbalance import Bins, FDSConfig, LDSConfig
from .metrics import default_edges, mae, per_bin_mae
from .seeds import check_seed
from .stacked import check_data, loss_terms, train_stack

log = logging.getLogger(__name__)

LOSSES = ("l1", "mse", "huber")
SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class OptimConfig:
    """Adam.  ``schedule``: constant; cosine (to 0 at the last epoch); or
    step (×0.1 at 60 % and 80 % of the epochs, as the DIR reference)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"Adam betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ConfigError(f"need eps > 0 and weight decay >= 0 (got {self.eps}, {self.weight_decay})")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule '{self.schedule}' is not one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json``.

    ``label_range`` None means the cache's recorded range (KonIQ: 0-100)."""

    head: HeadConfig = field(default_factory=HeadConfig)
    lds: LDSConfig = field(default_factory=LDSConfig)
    fds: FDSConfig = field(default_factory=FDSConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bin_size: float = 1.0
    label_range: tuple[float, float] | None = None
    epochs: int = 200
    batch_size: int = 256
    loss: str = "l1"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        object.__setattr__(self, "seed", check_seed(self.seed, "--seed"))
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss '{self.loss}' is not one of {', '.join(LOSSES)}")
        if self.label_range is not None:
            object.__setattr__(self, "label_range", tuple(float(x) for x in self.label_range))
        if not (math.isfinite(self.bin_size) and self.bin_size > 0):
            raise ConfigError(f"--bin-size must be a positive number, got {self.bin_size}")
        if self.fds.enabled and self.fds.start_smooth >= self.epochs:
            log.warning("FDS starts smoothing at epoch %d but training stops after %d epochs: FDS will have "
                        "no effect", self.fds.start_smooth, self.epochs)

    def bins(self, label_range: tuple[float, float]) -> Bins:
        lo, hi = self.label_range or label_range
        return Bins(lo, hi, self.bin_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        sub = {"head": HeadConfig, "lds": LDSConfig, "fds": FDSConfig, "optim": OptimConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        kw = {}
        for k, v in d.items():
            if k in sub:
                sub_known = {f.name for f in fields(sub[k])}
                bad = set(v) - sub_known
                if bad:
                    raise ConfigError(f"unknown {k} setting(s): {', '.join(sorted(bad))}")
                kw[k] = sub[k](**v)
            else:
                kw[k] = tuple(v) if k == "label_range" and v is not None else v
        return cls(**kw)


# The paper's settings (Nguyen et al. 2024): Adam (§4.1: lr 0.1 on KonIQ-10k,
# 0.01 on the 0-4 internal set; betas 0.9/0.999, eps 1e-8, no weight decay;
# 200 epochs), LDS r = 1, m = 100, w(x) = sqrt(1/x) (``sqrt_inv``, the default
# reweighting with --lds), kernel N(12, 10), and FDS u = 0, s = 1, kernel
# N(5, 2) (§3.2.2).  N(12, 10) is run as gaussian ks 11, sigma 10: the
# reference builds its window from a half width (ks - 1) // 2 = 5, so its ks
# 12 *is* an 11-bin window, identical to ks 11 here.  m = 100 is a number of
# bins (the reference's max target / bucket count): on KonIQ's 0-100 scale
# r = 1 gives exactly those 100 bins; on the 0-4 internal scale the same 100
# bins are bins of 0.04, so that both kernels (given in bins) cover the same
# fraction of the scale as on KonIQ.  Integer labels 0-4 then fall in bins 0,
# 25, 50, 75 and 99, each value its own bin (a bin of 1 over 0-4 would
# merge 3 and 4, the rare values the paper's Table 2 separates).
PAPER_LDS = {"lds_kernel": "gaussian", "lds_ks": 11, "lds_sigma": 10.0}
PAPER_FDS = {"fds_kernel": "gaussian", "fds_ks": 5, "fds_sigma": 2.0, "fds_start_update": 0, "fds_start_smooth": 1}
PAPER_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "epochs": 200}
PRESETS: dict[str, dict[str, Any]] = {
    "paper-koniq": {"lr": 0.1, **PAPER_ADAM, "bin_size": 1.0, "label_range": (0.0, 100.0), **PAPER_LDS,
                    **PAPER_FDS},
    "paper-internal": {"lr": 0.01, **PAPER_ADAM, "bin_size": 0.04, "label_range": (0.0, 4.0), **PAPER_LDS,
                       **PAPER_FDS},
}


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

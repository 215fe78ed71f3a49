"""``method=ridge``: the linear probe of the frozen-feature IQA papers
(ARNIQA, Re-IQA, CONTRIQUE fit a ridge regression on frozen features, its
strength chosen on a validation split).

Closed form, in float64, from one pass over the training rows (in memory or
read from the file block by block): the centred Gram matrix
``G = Xcᵀ Xc`` and ``Xcᵀ yc`` are decomposed once (``G = V diag(s) Vᵀ``), so
every strength of the grid costs one ``D × D`` product:
``w(λ) = V diag(1 / (s + λ)) Vᵀ Xcᵀ yc``, intercept ``ȳ - x̄ᵀ w``.  The
strengths are :class:`~iqa_cache.train.methods.MethodConfig`'s
``ridge_steps`` log-spaced factors from ``ridge_min`` to ``ridge_max``
times the mean eigenvalue ``trace(G) / D`` (a grid that does not move with
the features' scale).  The strength with the lowest validation MAE is kept,
as the heads keep their best validation epoch; the run's history lists
every strength with its validation MAE.

The fitted map is a :class:`LinearHead` (``head.pt`` holds its ``fc``
weight and bias), so a ridge run is read, evaluated and used by
``iqa predict`` like any other run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..binning import Bins
from ..cache import CacheData
from ..errors import ConfigError
from .config import HeadConfig, TrainConfig
from .results import TrainResult, package_result

if TYPE_CHECKING:
    from .stacked.data import DeviceData

log = logging.getLogger(__name__)

__all__ = ["LinearHead", "ridge_strengths", "solve_ridge", "fit_ridge"]


class LinearHead(nn.Module):
    """``x (D) → Linear(D, 1)``: a ridge run's head (the call signature and
    ``cfg`` of :class:`~iqa_cache.train.head.ResidualMLPHead`; only
    ``cfg.in_dim`` is read)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.in_dim, 1)

    def forward(self, x: torch.Tensor, bins: torch.Tensor | None = None, epoch: int | None = None) -> torch.Tensor:
        return self.fc(x).squeeze(-1)


def ridge_strengths(cfg: TrainConfig) -> np.ndarray:
    """The grid's factors (times the mean eigenvalue), smallest first."""
    m = cfg.method
    return np.logspace(np.log10(m.ridge_min), np.log10(m.ridge_max), m.ridge_steps)


def _moments(blocks, y: torch.Tensor) -> tuple[int, torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """n, Σx, Σy, XᵀX and Xᵀy over ``blocks`` ((start, features) of the rows
    whose labels are ``y``), in float64."""
    n, sx, sy, xx, xy = 0, None, 0.0, None, None
    for a, x in blocks:
        x = x.double()
        yb = y[a:a + len(x)].double()
        if sx is None:
            d = x.shape[1]
            sx, xx, xy = x.new_zeros(d), x.new_zeros(d, d), x.new_zeros(d)
        n += len(x)
        sx += x.sum(0)
        sy += float(yb.sum())
        xx += x.T @ x
        xy += x.T @ yb
    return n, sx, sy, xx, xy


def solve_ridge(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, lambdas: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solutions for each absolute strength of ``lambdas``: weights
    ``[D, L]`` and intercepts ``[L]`` (float64; the intercept is not
    penalised)."""
    x, y = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y))
    return _solve(*_moments([(0, x)], y), torch.as_tensor(np.asarray(lambdas, np.float64)))


def _solve(n: int, sx: torch.Tensor, sy: float, xx: torch.Tensor, xy: torch.Tensor, lambdas: torch.Tensor
           ) -> tuple[np.ndarray, np.ndarray]:
    mx, my = sx / n, sy / n
    gram = xx - n * torch.outer(mx, mx)
    b = xy - n * mx * my
    s, v = torch.linalg.eigh(gram)
    s = s.clamp_min(0.0)
    w = v @ ((v.T @ b)[:, None] / (s[:, None] + lambdas.to(s)[None, :]))
    intercept = my - mx @ w
    return w.cpu().numpy(), intercept.cpu().numpy()


def fit_ridge(data: CacheData, cfg: TrainConfig, dev: "DeviceData", bins: Bins) -> TrainResult:
    """The ridge run of ``cfg`` on ``dev`` (the cache's rows on the device):
    strength chosen on validation; ConfigError without validation rows."""
    t0 = time.perf_counter()
    if not len(dev.va):
        raise ConfigError(f"--method ridge chooses its strength on the validation split, and cache {data.path} has "
                          "no validation rows; draw a split with --split-seed N")
    n, sx, sy, xx, xy = _moments(dev.blocks("train"), dev.y_tr)
    factors = ridge_strengths(cfg)
    mean_eig = float(xx.diagonal().sum() - (sx * sx).sum() / n) / xx.shape[0]
    lambdas = torch.as_tensor(factors * max(mean_eig, 1e-300), dtype=torch.float64)
    w, b = _solve(n, sx, sy, xx, xy, lambdas)
    w_t, b_t = torch.from_numpy(w).to(dev.device), torch.from_numpy(b).to(dev.device)
    err = torch.zeros(len(factors), dtype=torch.float64, device=dev.device)
    for a, x in dev.blocks("val"):
        pred = x.double() @ w_t + b_t
        err += (pred - dev.y_va[a:a + len(x)].double()[:, None]).abs().sum(0)
    val = (err / len(dev.va)).cpu().numpy()
    finite = np.isfinite(val)
    if not finite.any():
        raise ConfigError("ridge: no strength of the grid gives finite validation predictions; raise --ridge-max")
    best = int(np.nanargmin(np.where(finite, val, np.inf)))
    if best in (0, len(factors) - 1) and len(factors) > 1:
        log.warning("ridge: the best validation strength (%g) is at the end of the grid [%g, %g]; widen "
                    "--ridge-min/--ridge-max", factors[best], factors[0], factors[-1])
    cfg = replace(cfg, head=replace(cfg.head, in_dim=data.feature_dim), device=dev.device)
    head = LinearHead(cfg.head)
    with torch.no_grad():
        head.fc.weight.copy_(torch.from_numpy(w[:, best]).float()[None, :])
        head.fc.bias.fill_(float(b[best]))
    head = head.to(dev.device).eval()
    with torch.no_grad():
        pred = torch.cat([head(x) for _, x in dev.blocks("all")]).cpu().numpy().astype(np.float64)
    history = [{"strength": float(f), "lambda": float(lam), "val_mae": float(v)}
               for f, lam, v in zip(factors, lambdas.tolist(), val)]
    result = package_result(data, cfg, bins, head.cpu(), pred, best_epoch=0, best_val_mae=float(val[best]),
                            history=history, seconds=time.perf_counter() - t0, device=dev.device)
    result.metrics.update({"ridge_strength": float(factors[best]), "ridge_lambda": float(lambdas[best])})
    return result

"""Many heads trained at once: K configurations that share shapes as one stack.

Every parameter of the residual MLP head gets a leading configuration axis
(weights ``[K, in, out]``, biases ``[K, 1, out]``), so one batched matrix
product (``torch.baddbmm``) runs a layer for all K heads.  Each configuration
keeps its own

* initialisation: the head that the plain loop (``train_head_simple`` in
  ``tests/reference.py``) builds for its seed, copied into its slice;
* batch order: a CPU generator seeded with its seed, as the plain loop;
* LDS loss weights (a ``[K, N]`` table);
* FDS state: per-bin running statistics ``[K, bins, H]``, smoothed by one
  grouped ``conv1d`` with its own window (windows of different sizes are
  zero-padded to the largest, which leaves each result unchanged);
* learning rate: configurations are ordered by learning rate and each run of
  equal rates is one Adam parameter group over row slices of the stacked
  tensors.

The loss is the sum of the per-configuration losses, so each slice's gradient
is that configuration's own gradient; Adam is elementwise, so one Adam over
the stack equals K independent Adams.  A configuration trained in a stack
therefore gives the same result as trained alone (to float rounding: batched
and plain matrix products round differently), which ``tests/test_grid.py``
checks.  A configuration whose loss turns non-finite is reported as diverged
and does not disturb the others (nothing couples the slices).

What makes it fast (the whole split is on the device; batches are index
tensors; one fused Adam call per step; FDS statistics by scatter-add from one
forward pass per epoch; calibration by one gather of a per-bin table) also
makes a stack of one configuration the single-run path of ``train_head``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .binning import Bins
from .cache import CacheData
from .config import HeadConfig, LDSConfig, OptimConfig, TrainConfig
from .device import resolve_device
from .errors import ConfigError, TrainingDiverged
from .head import ACTIVATIONS, ResidualMLPHead
from .imbalance import fds_window, fill_empty_bins
from .results import TrainResult, diverged_message, never_finite_message, nonfinite_predictions_message, package_result

log = logging.getLogger(__name__)

# Elements of one activation tensor [K, rows, H] in evaluation passes: bounds
# memory when many configurations evaluate all cached images at once.
EVAL_BUDGET = 1 << 25


# --------------------------------------------------------------------- data

@dataclass
class DeviceData:
    """A loaded cache on the device, shared by every stack of a grid."""

    device: str
    x_all: torch.Tensor
    y_all: torch.Tensor
    tr: np.ndarray
    va: np.ndarray
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    y_mean: float


def to_device(data: CacheData, device: str) -> DeviceData:
    x_all = torch.from_numpy(data.features).to(device)
    y_all = torch.from_numpy(data.label).to(device)
    tr, va = data.subset("train"), data.subset("val")
    tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
    y_tr = y_all[tr_t]
    return DeviceData(device=device, x_all=x_all, y_all=y_all, tr=tr, va=va, x_tr=x_all[tr_t], y_tr=y_tr,
                      x_va=x_all[va_t], y_va=y_all[va_t], y_mean=float(y_tr.mean()) if len(tr) else 0.0)


def check_data(data: CacheData, cfg: TrainConfig, bins: Bins) -> None:
    """What train_head refuses or warns about, before any training."""
    if bins.n < 2:
        raise ConfigError(f"--bin-size {cfg.bin_size:g} leaves a single label bin over {bins.lo:g}-{bins.hi:g}")
    tr, va = data.subset("train"), data.subset("val")
    if len(tr) == 0:
        raise ConfigError(f"cache {data.path} has no training images (split 'train'); nothing to train on")
    if len(va) == 0:
        log.warning("cache %s has no validation images: the last epoch is kept instead of the best one", data.path)
    n_out = bins.out_of_range(data.label[tr])
    if n_out:
        log.warning("%d training label(s) lie outside [%g, %g]: counted in the end bins", n_out, bins.lo, bins.hi)


def check_fds_bins(cfg: TrainConfig, bins: Bins) -> None:
    """FDS reflect-pads the bin axis by half its window: it needs more bins."""
    half = (cfg.fds.ks - 1) // 2
    if cfg.fds.enabled and bins.n <= half:
        raise ConfigError(f"FDS kernel size {cfg.fds.ks} needs more than {half} label bins, there are {bins.n}; "
                          "use a smaller --fds-ks or --bin-size")


def stack_key(cfg: TrainConfig) -> TrainConfig:
    """Configurations with equal keys can share a stack: they may differ only
    in LDS settings, seed, learning rate and FDS window (kernel, size, sigma)."""
    fds = replace(cfg.fds, kernel="gaussian", ks=1, sigma=1.0) if cfg.fds.enabled else replace(cfg.fds, enabled=False)
    return replace(cfg, lds=LDSConfig(), seed=0, optim=replace(cfg.optim, lr=1.0), fds=fds)


# -------------------------------------------------------------------- heads

def _linear_names(head_cfg: HeadConfig) -> list[str]:
    names = ["proj"]
    for j in range(head_cfg.n_blocks):
        names += [f"blocks.{j}.fc1", f"blocks.{j}.fc2"]
    return names + ["fc"]


class HeadStack:
    """K residual MLP heads of one shape as stacked tensors: for each linear
    layer (in head order) a weight ``[K, in, out]`` and a bias ``[K, 1, out]``."""

    def __init__(self, head_cfg: HeadConfig, params: list[torch.Tensor]):
        self.cfg = head_cfg
        self.params = params
        self.act = ACTIVATIONS[head_cfg.activation]()
        self.names = _linear_names(head_cfg)

    @property
    def k(self) -> int:
        return int(self.params[0].shape[0])

    @classmethod
    def from_heads(cls, heads: Sequence[ResidualMLPHead], device: str) -> "HeadStack":
        cfg = heads[0].cfg
        params = []
        for name in _linear_names(cfg):
            mods = [h.get_submodule(name) for h in heads]
            params.append(torch.stack([m.weight.detach().t() for m in mods]).to(device).contiguous())
            params.append(torch.stack([m.bias.detach().view(1, -1) for m in mods]).to(device).contiguous())
        for p in params:
            p.requires_grad_(True)
        return cls(cfg, params)

    def state_dict_of(self, k: int, params: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Configuration ``k``'s weights as ``ResidualMLPHead`` names them."""
        params = self.params if params is None else params
        out = {}
        for i, name in enumerate(self.names):
            out[f"{name}.weight"] = params[2 * i][k].detach().t().cpu().contiguous()
            out[f"{name}.bias"] = params[2 * i + 1][k].detach().reshape(-1).cpu().clone()
        return out

    def features(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden features ``[K, B, H]`` (what FDS calibrates) for
        per-configuration inputs ``[K, B, D]`` or shared inputs ``[B, D]``."""
        p = self.params if params is None else params
        k = int(p[0].shape[0])
        if x.dim() == 2:
            x = x.expand(k, *x.shape)
        h = self.act(torch.baddbmm(p[1], x, p[0]))
        for j in range(self.cfg.n_blocks):
            w1, b1, w2, b2 = p[2 + 4 * j: 6 + 4 * j]
            h = self.act(h + torch.baddbmm(b2, self.act(torch.baddbmm(b1, h, w1)), w2))
        return h

    def output(self, z: torch.Tensor, params: Sequence[torch.Tensor] | None = None, *,
               train: bool = False) -> torch.Tensor:
        """The final layer on (calibrated) features ``z`` [K, B, H], after
        dropout when ``train`` (as ``ResidualMLPHead``: FDS, dropout, FC)."""
        p = self.params if params is None else params
        if train and self.cfg.dropout > 0:
            z = F.dropout(z, self.cfg.dropout, training=True)
        return torch.baddbmm(p[-1], z, p[-2]).squeeze(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Predictions ``[K, N]`` for shared inputs ``[N, D]`` (FDS is the
        identity at evaluation), in chunks that bound memory."""
        p = self.params if params is None else params
        k = int(p[0].shape[0])
        chunk = max(1, EVAL_BUDGET // (k * max(self.cfg.hidden_dim, self.cfg.in_dim)))
        if len(x) == 0:
            return x.new_zeros(k, 0)
        return torch.cat([self.output(self.features(x[i:i + chunk], p), p) for i in range(0, len(x), chunk)], 1)


# ---------------------------------------------------------------------- FDS

def stacked_bin_statistics(z: torch.Tensor, bins: torch.Tensor, count: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and unbiased variance of ``z`` [K, N, H] (bins [N] shared
    by all K; ``count`` [n_bins] their counts), by scatter-add; the formula of
    :func:`iqa_cache.imbalance.bin_statistics` with a configuration axis."""
    k, _, h = z.shape
    n_bins = count.numel()
    total = z.new_zeros(k, n_bins, h).index_add_(1, bins, z)
    mean = total / count.clamp(min=1).view(1, -1, 1)
    centred = z - mean[:, bins]
    sq = z.new_zeros(k, n_bins, h).index_add_(1, bins, centred * centred)
    return mean, sq / (count - 1).clamp(min=1).view(1, -1, 1)


def padded_windows(windows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Odd-length windows zero-padded on both sides to the longest: ``[K, L]``."""
    n = max(int(w.numel()) for w in windows)
    return torch.stack([F.pad(w, ((n - w.numel()) // 2, (n - w.numel()) // 2)) for w in windows])


def stacked_smooth(stats: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Smooth ``stats`` [K, n_bins, H] across bins, configuration k with
    window ``windows[k]`` (zero-padded, odd length L), reflect-padded by
    (L-1)/2 bins: one grouped conv1d.  For each k this equals
    :func:`iqa_cache.imbalance.smooth_statistics` with its own window."""
    k, _, _ = stats.shape
    half = (windows.shape[1] - 1) // 2
    if half == 0:
        return stats * windows[:, :1].view(k, 1, 1)
    x = F.pad(stats.permute(2, 0, 1), (half, half), mode="reflect")  # [H, K, n_bins + 2 half]
    out = F.conv1d(x, windows.to(stats).unsqueeze(1), groups=k)  # [H, K, n_bins]
    return out.permute(1, 2, 0).contiguous()


class StackedFDS:
    """FDS state of K configurations that share bins, momentum and schedule
    (:class:`iqa_cache.imbalance.FDS` semantics, with a configuration axis).

    ``table`` [K * n_bins, 3, H] holds, per bin, what calibration needs:
    the bin mean m, the factor sqrt(clip(v~/v)) and the smoothed mean m~, so
    that ``z' = (z - m) * f + m~`` is one gather and three elementwise ops;
    entries the reference leaves unchanged (a bin whose variances sum below
    1e-10, a zero-variance dimension) hold (0, 1, 0), which maps z to z."""

    def __init__(self, fds_cfgs: Sequence, n_bins: int, dim: int, device: str):
        c = fds_cfgs[0]
        self.momentum, self.start_update, self.start_smooth = c.momentum, c.start_update, c.start_smooth
        self.clip = (c.clip_min, c.clip_max)
        self.empty_bins = c.empty_bins
        self.k, self.n_bins, self.dim = len(fds_cfgs), n_bins, dim
        self.windows = padded_windows([fds_window(f.kernel, f.ks, f.sigma) for f in fds_cfgs]).to(device)
        shape = (self.k, n_bins, dim)
        self.running_mean = torch.zeros(shape, device=device)
        self.running_var = torch.ones(shape, device=device)
        self.smoothed_mean = torch.zeros(shape, device=device)
        self.smoothed_var = torch.ones(shape, device=device)
        self.seen = torch.zeros(n_bins, dtype=torch.bool, device=device)
        self.updated = False
        self.table = self._identity(device)
        self.best = {n: getattr(self, n).clone() for n in self.STATE}

    STATE = ("running_mean", "running_var", "smoothed_mean", "smoothed_var")

    def _identity(self, device) -> torch.Tensor:
        t = torch.zeros(self.k * self.n_bins, 3, self.dim, device=device)
        t[:, 1] = 1.0
        return t

    @torch.no_grad()
    def update(self, stack: HeadStack, x_tr: torch.Tensor, bins: torch.Tensor, count: torch.Tensor) -> None:
        """Fold this epoch's training features (one forward pass, in chunks
        of configurations) into the running statistics, then smooth them and
        rebuild the calibration table."""
        kc = max(1, EVAL_BUDGET // max(1, len(x_tr) * self.dim))
        for a in range(0, self.k, kc):
            rows = slice(a, min(self.k, a + kc))
            self.fold(rows, stack.features(x_tr, [p[rows] for p in stack.params]), bins, count)
        self.refresh(count)

    @torch.no_grad()
    def fold(self, rows: slice, z: torch.Tensor, bins: torch.Tensor, count: torch.Tensor) -> None:
        """Fold features ``z`` [k, N, H] of configurations ``rows`` into their
        running statistics (momentum; the first update of a bin replaces)."""
        present = count > 0
        keep = torch.where(self.seen & present, self.momentum, 0.0).view(1, -1, 1)
        upd = present.view(1, -1, 1)
        mean, var = stacked_bin_statistics(z, bins, count)
        rm, rv = self.running_mean[rows], self.running_var[rows]
        rm.copy_(torch.where(upd, keep * rm + (1 - keep) * mean, rm))
        rv.copy_(torch.where(upd, keep * rv + (1 - keep) * var, rv))

    @torch.no_grad()
    def refresh(self, count: torch.Tensor) -> None:
        """After all configurations were folded: mark the bins seen, smooth the
        statistics and rebuild the calibration table."""
        self.seen |= count > 0
        if self.empty_bins == "fill":
            self.running_mean = fill_empty_bins(self.running_mean, count > 0)
            self.running_var = fill_empty_bins(self.running_var, count > 0)
        self.smoothed_mean = stacked_smooth(self.running_mean, self.windows)
        self.smoothed_var = stacked_smooth(self.running_var, self.windows)
        self.updated = True
        v1, v2 = self.running_var, self.smoothed_var
        usable = (v1.sum(dim=2, keepdim=True) >= 1e-10) & (v1 != 0)
        factor = torch.sqrt(torch.clamp(v2 / torch.where(usable, v1, torch.ones_like(v1)), *self.clip))
        zero = torch.zeros((), device=v1.device)
        self.table = torch.stack([torch.where(usable, self.running_mean, zero),
                                  torch.where(usable, factor, torch.ones_like(factor)),
                                  torch.where(usable, self.smoothed_mean, zero)], dim=2
                                 ).view(self.k * self.n_bins, 3, self.dim)

    def calibrate(self, z: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """z [K, B, H] with bins [K, B] (or shared bins [B])."""
        offset = torch.arange(self.k, device=z.device).view(-1, 1) * self.n_bins
        m1, f, m2 = self.table[bins + offset].unbind(2)
        return (z - m1) * f + m2

    def keep_best(self, mask: torch.Tensor) -> None:
        for n in self.STATE:
            self.best[n][mask] = getattr(self, n)[mask]

    def state_dict_of(self, k: int, fds_cfg, best_epoch: int) -> dict[str, torch.Tensor]:
        """Configuration k's FDS buffers at its best epoch, named as
        :class:`iqa_cache.imbalance.FDS` names them."""
        updated = best_epoch >= self.start_update
        rm, rv = self.best["running_mean"][k].cpu(), self.best["running_var"][k].cpu()
        return {
            "window": fds_window(fds_cfg.kernel, fds_cfg.ks, fds_cfg.sigma),
            "running_mean": rm.clone(), "running_var": rv.clone(), "mean": rm.clone(), "var": rv.clone(),
            "smoothed_mean": self.best["smoothed_mean"][k].cpu().clone(),
            "smoothed_var": self.best["smoothed_var"][k].cpu().clone(),
            "seen": self.seen.cpu().clone() if updated else torch.zeros(self.n_bins, dtype=torch.bool),
            "last_update": torch.tensor(best_epoch if updated else -1, dtype=torch.long),
        }


# ---------------------------------------------------------------- optimiser

def get_lr(epoch: int, optim: OptimConfig, epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based); pure."""
    if optim.schedule == "cosine":
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if optim.schedule == "step":
        return optim.lr * 0.1 ** sum(epoch >= int(epochs * f) for f in (0.6, 0.8))
    return optim.lr


def make_adam(groups: list[dict], optim_cfg) -> torch.optim.Adam:
    """Adam over ``groups``: fused where this torch and device support it
    (CUDA, and CPU since torch 2.4), else foreach."""
    kw = dict(betas=optim_cfg.betas, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
    try:
        return torch.optim.Adam(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, foreach=True, **kw)


def lr_groups(lrs: Sequence[float]) -> list[tuple[int, int]]:
    """The slices ``(start, stop)`` of equal consecutive learning rates in
    ``lrs`` (sorted: one Adam parameter group each)."""
    groups: list[tuple[int, int]] = []
    for i, lr in enumerate(lrs):
        if groups and lrs[groups[-1][0]] == lr:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
    return groups


class GroupedAdam:
    """One Adam over a stack whose configurations are ordered by learning
    rate: a parameter group per run of equal rates, over row slices of the
    stacked tensors; each configuration follows its own schedule."""

    def __init__(self, stack: HeadStack, cfgs: Sequence[TrainConfig]):
        self.cfgs = cfgs
        self.groups = lr_groups([c.optim.lr for c in cfgs])
        with torch.no_grad():
            self.views = [[p[a:b] for p in stack.params] for a, b in self.groups]
        self.opt = make_adam([{"params": v, "lr": cfgs[a].optim.lr} for v, (a, _) in zip(self.views, self.groups)],
                             cfgs[0].optim)

    def schedule(self, epoch: int) -> list[float]:
        """Set the groups' learning rates for ``epoch``; returns each configuration's."""
        lrs = [get_lr(epoch, c.optim, c.epochs) for c in self.cfgs]
        for g, (a, _) in zip(self.opt.param_groups, self.groups):
            g["lr"] = lrs[a]
        return lrs

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One step with the gradients of the stacked tensors (in stack order)."""
        for v, (a, b) in zip(self.views, self.groups):
            for p, g in zip(v, grads):
                p.grad = g[a:b]
        self.opt.step()


def loss_terms(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Unweighted elementwise loss (l1, mse or huber with beta 1)."""
    if kind == "l1":
        return (pred - target).abs()
    if kind == "mse":
        return (pred - target) ** 2
    return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)


# ----------------------------------------------------------------- training

def init_stack(cfgs: Sequence[TrainConfig], head_cfg: HeadConfig, y_mean: float, device: str) -> HeadStack:
    """Each configuration's head initialised for its seed, its output bias at
    the mean training label, stacked."""
    heads = []
    for c in cfgs:
        torch.manual_seed(c.seed)  # the same draws as the plain loop: init, then dropout
        h = ResidualMLPHead(head_cfg)
        with torch.no_grad():
            h.fc.bias.fill_(y_mean)
        heads.append(h)
    return HeadStack.from_heads(heads, device)


@dataclass
class TrainingRows:
    """The training rows as a stack trains on them: the LDS weights of each
    configuration ``[K, N]`` and, only when FDS needs them, the rows' label
    bins and the bins' counts."""

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    bins: torch.Tensor | None
    count: torch.Tensor | None
    batch_size: int

    @classmethod
    def of(cls, data: CacheData, dev: DeviceData, cfgs: Sequence[TrainConfig], bins: Bins) -> "TrainingRows":
        labels = data.label[dev.tr]
        weights = torch.from_numpy(np.stack([c.lds.weights(labels, bins) for c in cfgs])).to(dev.device)
        b_tr = count = None  # no bins at all unless FDS needs them (LDS weights are per image)
        if cfgs[0].fds.enabled:
            b_tr = torch.from_numpy(bins.index(labels)).to(dev.device)
            count = torch.bincount(b_tr, minlength=bins.n).float()
        return cls(dev.x_tr, dev.y_tr, weights, b_tr, count, cfgs[0].batch_size)

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, perm: torch.Tensor) -> Iterator[tuple]:
        """``(x, y, weights, bins, n_rows)`` per batch, each configuration's
        rows in its own order ``perm`` [K, N]."""
        n, bs = len(self), self.batch_size
        for i in range(0, n, bs):
            if bs >= n:  # the order of one full batch does not matter: no gather
                yield self.x, self.y.expand(len(perm), -1), self.weights, self.bins, n
            else:
                idx = perm[:, i:i + bs]
                yield (self.x[idx], self.y[idx], self.weights.gather(1, idx),
                       self.bins[idx] if self.bins is not None else None, idx.shape[1])


def train_epoch(stack: HeadStack, opt: GroupedAdam, rows: TrainingRows, perm: torch.Tensor,
                fds: StackedFDS | None, loss: str) -> list[float]:
    """One pass over the training rows, features calibrated by ``fds`` (None:
    not this epoch); returns each configuration's mean training loss."""
    loss_sum = torch.zeros(stack.k, device=rows.weights.device)
    for xb, yb, wb, bb, n in rows.batches(perm):
        z = stack.features(xb)
        if fds is not None:
            z = fds.calibrate(z, bb)
        loss_k = (loss_terms(stack.output(z, train=True), yb, loss) * wb).mean(dim=-1)
        opt.step(torch.autograd.grad(loss_k.sum(), stack.params))
        loss_sum += loss_k.detach() * n
    return [s / len(rows) for s in loss_sum.tolist()]


def validation_mae(stack: HeadStack, dev: DeviceData) -> list[float]:
    if len(dev.va):
        return (stack.predict(dev.x_va) - dev.y_va).abs().mean(dim=1).tolist()
    return [math.nan] * stack.k


class BestEpochs:
    """Per configuration of a stack: its history, its best validation epoch
    so far with that epoch's parameters (and FDS state), and the divergence
    it ran into, if any (it is then never improved again)."""

    def __init__(self, stack: HeadStack, cfgs: Sequence[TrainConfig], has_val: bool):
        self.stack, self.cfgs, self.has_val = stack, cfgs, has_val
        self.params = [p.detach().clone() for p in stack.params]
        self.val = [math.inf] * stack.k
        self.epoch = [-1] * stack.k
        self.diverged: dict[int, str] = {}
        self.history: list[list[dict[str, float]]] = [[] for _ in range(stack.k)]

    def record(self, epoch: int, lrs: list[float], train_loss: list[float], val: list[float],
               fds: StackedFDS | None) -> None:
        for k, tl in enumerate(train_loss):
            if k not in self.diverged and not math.isfinite(tl):
                self.diverged[k] = diverged_message(epoch, tl, lrs[k], self.cfgs[k])
        improved = []
        for k in range(self.stack.k):
            self.history[k].append({"epoch": epoch, "lr": lrs[k], "train_loss": train_loss[k], "val_mae": val[k]})
            better = (val[k] < self.val[k]) if self.has_val else True
            improved.append(better and k not in self.diverged)
            if improved[-1]:
                self.val[k], self.epoch[k] = (val[k] if self.has_val else math.nan), epoch
        if any(improved):
            mask = torch.tensor(improved, device=self.params[0].device)
            with torch.no_grad():
                for bp, p in zip(self.params, self.stack.params):
                    bp[mask] = p[mask]
            if fds is not None:
                fds.keep_best(mask)

    def outcome(self, k: int, data: CacheData, bins: Bins, fds: StackedFDS | None, pred: np.ndarray,
                seconds: float, device: str) -> TrainResult | TrainingDiverged:
        """Configuration ``k``'s head of its best epoch, packaged with its
        predictions ``pred`` for every cached image; or why there is none."""
        c, best_epoch = self.cfgs[k], self.epoch[k]
        if k in self.diverged:
            return TrainingDiverged(self.diverged[k])
        if best_epoch < 0:
            return TrainingDiverged(never_finite_message(c))
        if not np.isfinite(pred).all():
            return TrainingDiverged(nonfinite_predictions_message(best_epoch))
        head = ResidualMLPHead(c.head, c.fds, bins.n)
        state = self.stack.state_dict_of(k, self.params)
        if fds is not None:
            state.update({f"fds.{n}": t for n, t in fds.state_dict_of(k, c.fds, best_epoch).items()})
        head.load_state_dict(state)
        return package_result(data, c, bins, head.eval(), pred, best_epoch=best_epoch, best_val_mae=self.val[k],
                              history=self.history[k], seconds=seconds, device=device)


def _epochs(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, unit="epoch", leave=False, dynamic_ncols=True)


def train_stack(data: CacheData, cfgs: Sequence[TrainConfig], *, dev: DeviceData | None = None,
                progress: bool = False, desc: str = "training", checked: bool = False
                ) -> list[TrainResult | TrainingDiverged]:
    """Train the configurations ``cfgs`` (equal :func:`stack_key`) together.

    Returns, in the order given, each configuration's
    :class:`~iqa_cache.results.TrainResult` (best validation epoch, its
    predictions and metrics; ``seconds`` is its share of the stack's time)
    or the :class:`~iqa_cache.errors.TrainingDiverged` it ran into.  ``dev``
    is the data already on the device; ``checked`` skips the checks (and
    warnings) that :func:`train_many` made once for all stacks."""
    t0 = time.perf_counter()
    if not cfgs:
        return []
    if len({stack_key(c) for c in cfgs}) > 1:
        raise ValueError("train_stack needs configurations that differ only in LDS, seed, lr and FDS window")
    c0 = cfgs[0]
    device = dev.device if dev is not None else resolve_device(c0.device)
    bins = c0.bins(data.label_range)
    if not checked:
        check_data(data, c0, bins)
        for c in cfgs:
            check_fds_bins(c, bins)
    dev = dev if dev is not None else to_device(data, device)
    head_cfg = replace(c0.head, in_dim=int(data.features.shape[1]))
    order = sorted(range(len(cfgs)), key=lambda i: cfgs[i].optim.lr)  # equal learning rates side by side
    cfgs = [replace(cfgs[i], head=head_cfg, device=device) for i in order]

    stack = init_stack(cfgs, head_cfg, dev.y_mean, device)
    gens = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    opt = GroupedAdam(stack, cfgs)
    rows = TrainingRows.of(data, dev, cfgs, bins)
    fds = StackedFDS([c.fds for c in cfgs], bins.n, head_cfg.hidden_dim, device) if c0.fds.enabled else None
    best = BestEpochs(stack, cfgs, has_val=len(dev.va) > 0)
    for epoch in _epochs(c0.epochs, progress, desc):
        lrs = opt.schedule(epoch)
        perm = torch.stack([torch.randperm(len(rows), generator=g) for g in gens]).to(device)
        calibrating = fds is not None and fds.updated and epoch >= fds.start_smooth
        train_loss = train_epoch(stack, opt, rows, perm, fds if calibrating else None, c0.loss)
        if fds is not None and epoch >= fds.start_update:
            fds.update(stack, rows.x, rows.bins, rows.count)
        best.record(epoch, lrs, train_loss, validation_mae(stack, dev), fds)

    pred_all = stack.predict(dev.x_all, best.params).cpu().numpy().astype(np.float64)
    share = (time.perf_counter() - t0) / len(cfgs)
    results = [best.outcome(k, data, bins, fds, pred_all[k], share, device) for k in range(len(cfgs))]
    return [results[order.index(i)] for i in range(len(cfgs))]


def plan_stacks(cfgs: Sequence[TrainConfig], max_stack: int) -> list[list[int]]:
    """Indices of ``cfgs`` grouped into stacks: equal :func:`stack_key`, at
    most ``max_stack`` each, in order of first appearance."""
    if max_stack < 1:
        raise ConfigError(f"--max-stack must be at least 1, got {max_stack}")
    groups: dict = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(stack_key(c), []).append(i)
    return [g[a:a + max_stack] for g in groups.values() for a in range(0, len(g), max_stack)]


def train_many(data: CacheData, cfgs: Sequence[TrainConfig], *, max_stack: int = 64, progress: bool = False
               ) -> Iterator[tuple[int, TrainResult | TrainingDiverged]]:
    """Train every configuration, those that share shapes together in
    stacks of at most ``max_stack``; yield ``(index, result or
    TrainingDiverged)`` as each stack finishes.  Invalid settings raise
    before anything is trained."""
    stacks = plan_stacks(cfgs, max_stack)
    checked = set()
    for c in cfgs:
        bins = c.bins(data.label_range)
        if bins not in checked:  # warnings once per bin grid
            check_data(data, c, bins)
            checked.add(bins)
        check_fds_bins(c, bins)
    devices: dict[str, DeviceData] = {}
    for s, members in enumerate(stacks):
        device = resolve_device(cfgs[members[0]].device)
        if device not in devices:
            devices[device] = to_device(data, device)
        desc = f"stack {s + 1}/{len(stacks)} ({len(members)} config{'s' if len(members) > 1 else ''})"
        results = train_stack(data, [cfgs[i] for i in members], dev=devices[device], progress=progress, desc=desc,
                              checked=True)
        yield from zip(members, results)

"""FDS of K configurations at once: per-bin statistics by scatter-add, one
grouped conv1d for the smoothing, calibration by one gather."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..imbalance import fds_window, fill_empty_bins
from .heads import EVAL_BUDGET, HeadStack


def stacked_bin_moments(z: torch.Tensor, bins: torch.Tensor, count: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and sum of squared deviations of ``z`` [K, N, H] (bins
    [N] shared by all K; ``count`` [n_bins] their counts), by scatter-add."""
    k, _, h = z.shape
    n_bins = count.numel()
    total = z.new_zeros(k, n_bins, h).index_add_(1, bins, z)
    mean = total / count.clamp(min=1).view(1, -1, 1)
    centred = z - mean[:, bins]
    return mean, z.new_zeros(k, n_bins, h).index_add_(1, bins, centred * centred)


def stacked_bin_statistics(z: torch.Tensor, bins: torch.Tensor, count: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and unbiased variance of ``z`` [K, N, H]; the formula of
    :func:`iqa_cache.train.imbalance.bin_statistics` with a configuration axis."""
    mean, sq = stacked_bin_moments(z, bins, count)
    return mean, sq / (count - 1).clamp(min=1).view(1, -1, 1)


def padded_windows(windows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Odd-length windows zero-padded on both sides to the longest: ``[K, L]``."""
    n = max(int(w.numel()) for w in windows)
    return torch.stack([F.pad(w, ((n - w.numel()) // 2, (n - w.numel()) // 2)) for w in windows])


def stacked_smooth(stats: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Smooth ``stats`` [K, n_bins, H] across bins, configuration k with
    window ``windows[k]`` (zero-padded, odd length L), reflect-padded by
    (L-1)/2 bins: one grouped conv1d.  For each k this equals
    :func:`iqa_cache.train.imbalance.smooth_statistics` with its own window."""
    k, _, _ = stats.shape
    half = (windows.shape[1] - 1) // 2
    if half == 0:
        return stats * windows[:, :1].view(k, 1, 1)
    x = F.pad(stats.permute(2, 0, 1), (half, half), mode="reflect")  # [H, K, n_bins + 2 half]
    out = F.conv1d(x, windows.to(stats).unsqueeze(1), groups=k)  # [H, K, n_bins]
    return out.permute(1, 2, 0).contiguous()


class StackedFDS:
    """FDS state of K configurations that share bins, momentum and schedule
    (:class:`iqa_cache.train.imbalance.FDS` semantics, with a configuration axis).

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
    def update_blocks(self, stack: HeadStack, blocks: Iterable[tuple[int, torch.Tensor]], bins: torch.Tensor,
                      count: torch.Tensor) -> None:
        """:meth:`update` from the training rows in blocks ``(start,
        features)`` (a streamed cache): each block's per-bin moments merged
        into the epoch's in float64 (Chan et al.'s pairwise formula), so the
        statistics equal the one-pass ones to float rounding."""
        n_bins, dev = self.n_bins, self.running_mean.device
        n_seen = torch.zeros(n_bins, dtype=torch.float64, device=dev)
        mean = torch.zeros(self.k, n_bins, self.dim, dtype=torch.float64, device=dev)
        m2 = torch.zeros_like(mean)
        for a, x in blocks:
            b = bins[a:a + len(x)]
            cnt = torch.bincount(b, minlength=n_bins)
            tot = n_seen + cnt
            frac = (cnt / tot.clamp(min=1)).view(1, -1, 1)
            cross = (n_seen * cnt / tot.clamp(min=1)).view(1, -1, 1)
            kc = max(1, EVAL_BUDGET // max(1, len(x) * self.dim))
            for r in range(0, self.k, kc):
                rows = slice(r, min(self.k, r + kc))
                bm, bsq = stacked_bin_moments(stack.features(x, [p[rows] for p in stack.params]), b, cnt.float())
                delta = bm.double() - mean[rows]
                mean[rows] += delta * frac
                m2[rows] += bsq.double() + delta * delta * cross
            n_seen = tot
        var = m2 / (count.double() - 1).clamp(min=1).view(1, -1, 1)
        self.fold_statistics(slice(0, self.k), mean.float(), var.float(), count)
        self.refresh(count)

    @torch.no_grad()
    def fold(self, rows: slice, z: torch.Tensor, bins: torch.Tensor, count: torch.Tensor) -> None:
        """Fold features ``z`` [k, N, H] of configurations ``rows`` into their
        running statistics (momentum; the first update of a bin replaces)."""
        self.fold_statistics(rows, *stacked_bin_statistics(z, bins, count), count)

    @torch.no_grad()
    def fold_statistics(self, rows: slice, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """Fold this epoch's per-bin ``mean`` and ``var`` [k, n_bins, H] of
        configurations ``rows`` into their running statistics."""
        present = count > 0
        keep = torch.where(self.seen & present, self.momentum, 0.0).view(1, -1, 1)
        upd = present.view(1, -1, 1)
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
        :class:`iqa_cache.train.imbalance.FDS` names them."""
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

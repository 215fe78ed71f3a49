"""Label bins, kernel windows, LDS loss weights and the FDS layer.

Semantics follow Yang et al., "Delving into Deep Imbalanced Regression"
(ICML 2021) and its public reference code (docs/method.md, "Reference
semantics"), with deliberate deviations listed in docs/deviations.md: labels
binned by their decimal value, even kernel sizes refused, no aliased FDS
buffers, calibration from ``start_smooth`` with the previous epoch's
statistics, empty bins filled from their neighbours (``empty_bins='fill'``),
out-of-place vectorised calibration on any device.  The torch-free parts
(bins, kernel windows, LDS weights, the configs) live in binning.py,
kernels.py and config.py and are re-exported here.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..binning import Bins
from ..errors import ConfigError
from .config import EMPTY_BINS, FDSConfig, LDSConfig
from .kernels import (
    INVERSE_CLIP,
    KERNELS,
    REWEIGHTS,
    Kernel,
    Reweight,
    check_kernel,
    even_kernel_message,
    kernel_window,
    label_density,
    lds_weights,
)

__all__ = ["Bins", "EMPTY_BINS", "FDSConfig", "LDSConfig", "INVERSE_CLIP", "KERNELS", "REWEIGHTS", "Kernel",
           "Reweight", "check_kernel", "even_kernel_message", "kernel_window", "label_density", "lds_weights",
           "fds_window", "bin_statistics", "empty_bin_plan", "fill_empty_bins", "smooth_statistics", "calibrate",
           "FDS"]


# ------------------------------------------------------------------------- FDS

def fds_window(kernel: str, ks: int, sigma: float) -> torch.Tensor:
    """The FDS smoothing window: the LDS window normalised to sum 1."""
    w = kernel_window(kernel, ks, sigma)
    return torch.tensor(w / w.sum(), dtype=torch.float32)


def bin_statistics(features: torch.Tensor, bins: torch.Tensor, n_bins: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, mean, unbiased variance) of ``features`` [N, D] by
    scatter-add, no loop over labels.  A bin with one sample has variance 0
    (as the reference); an empty bin has mean and variance 0."""
    features = features.float()
    d = features.shape[1]
    count = torch.zeros(n_bins, device=features.device, dtype=torch.float32)
    count.index_add_(0, bins, torch.ones_like(bins, dtype=torch.float32))
    total = torch.zeros(n_bins, d, device=features.device, dtype=torch.float32).index_add_(0, bins, features)
    mean = total / count.clamp(min=1).unsqueeze(1)
    centred = features - mean[bins]
    sq = torch.zeros(n_bins, d, device=features.device, dtype=torch.float32).index_add_(0, bins, centred * centred)
    var = sq / (count - 1).clamp(min=1).unsqueeze(1)
    return count, mean, var




def empty_bin_plan(present) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For bins without training samples (``present`` False): the two bins
    and the weight their statistics are filled from, ``(left, right, t)``
    with ``filled = (1 - t) * x[left] + t * x[right]``.

    A run of empty bins between two non-empty ones is interpolated linearly
    between them; a run at either end copies the nearest non-empty bin.  For
    a lone empty bin this is exactly what the reference's continuous-label
    FDS (sts-b-dir) does each epoch (the mean of its two neighbours; an end
    bin copies its neighbour); for longer runs it is the state that the
    reference's bin-by-bin filling converges to over epochs.  Present bins
    map to themselves (t 0).  None when no bin is empty or none is present."""
    present = np.asarray(present, dtype=bool)
    n = len(present)
    if present.all() or not present.any():
        return None
    idx = np.arange(n)
    pos = np.flatnonzero(present)
    left = pos[np.clip(np.searchsorted(pos, idx, side="right") - 1, 0, len(pos) - 1)]
    right = pos[np.clip(np.searchsorted(pos, idx, side="left"), 0, len(pos) - 1)]
    left = np.where(idx < pos[0], right, left)  # before the first present bin: copy it
    right = np.where(idx > pos[-1], left, right)  # after the last: copy it
    gap = (right - left).astype(np.float64)
    t = np.where(gap > 0, (idx - left) / np.where(gap > 0, gap, 1.0), 0.0)
    return left, right, t


def fill_empty_bins(stats: torch.Tensor, present) -> torch.Tensor:
    """``stats`` [..., n_bins, D] with the rows of empty bins replaced as
    :func:`empty_bin_plan` says (out of place; present bins unchanged)."""
    present = np.asarray(present.cpu() if isinstance(present, torch.Tensor) else present, dtype=bool)
    plan = empty_bin_plan(present)
    if plan is None:
        return stats
    left, right, t = (torch.as_tensor(a, device=stats.device) for a in plan)
    t = t.to(stats.dtype).unsqueeze(-1)
    filled = (1 - t) * stats[..., left, :] + t * stats[..., right, :]
    return torch.where(torch.as_tensor(present, device=stats.device).unsqueeze(-1), stats, filled)


def smooth_statistics(stats: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Smooth [n_bins, D] statistics across bins with ``window``, padding by
    reflection at both ends (as the reference)."""
    half = (window.numel() - 1) // 2
    if half == 0:
        return stats.clone()
    x = stats.t().unsqueeze(1)  # [D, 1, n_bins]
    x = F.pad(x, (half, half), mode="reflect")
    return F.conv1d(x, window.to(stats).view(1, 1, -1)).squeeze(1).t().contiguous()


def calibrate(features: torch.Tensor, bins: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
              smoothed_mean: torch.Tensor, smoothed_var: torch.Tensor, clip_min: float = 0.1,
              clip_max: float = 10.0) -> torch.Tensor:
    """FDS calibration, out of place::

        z' = (z - m[b]) * sqrt(clip(v~[b] / v[b], clip_min, clip_max)) + m~[b]

    for each sample's bin ``b``.  As in the reference, a bin whose variances
    sum below 1e-10 is left as is, and so is any dimension whose variance is 0.
    """
    m1, v1 = mean[bins], var[bins]
    m2, v2 = smoothed_mean[bins], smoothed_var[bins]
    usable = (var.sum(dim=1) >= 1e-10)[bins].unsqueeze(1) & (v1 != 0)
    safe_v1 = torch.where(usable, v1, torch.ones_like(v1))
    factor = torch.sqrt(torch.clamp(v2 / safe_v1, clip_min, clip_max))
    return torch.where(usable, (features - m1) * factor + m2, features)



class FDS(torch.nn.Module):
    """Feature distribution smoothing for [N, D] features with integer bins.

    Buffers (saved in the state dict): ``running_mean``/``running_var`` (per
    bin, momentum-averaged over epochs; the first update of a bin replaces;
    bins without samples in an update filled from their neighbours, or kept,
    per ``empty_bins``),
    ``mean``/``var`` (a copy of the running statistics at the last update:
    what calibration uses) and ``smoothed_mean``/``smoothed_var`` (those,
    smoothed across bins).  At evaluation, and before ``start_smooth``, the
    layer is the identity.
    """

    def __init__(self, dim: int, n_bins: int, cfg: FDSConfig):
        super().__init__()
        self.cfg, self.dim, self.n_bins = cfg, dim, n_bins
        half = (cfg.ks - 1) // 2
        if n_bins <= half:
            raise ConfigError(f"FDS kernel size {cfg.ks} needs more than {half} label bins, there are {n_bins}; "
                              "use a smaller --fds-ks or --bin-size")
        self.register_buffer("window", fds_window(cfg.kernel, cfg.ks, cfg.sigma))
        for name, fill in (("running_mean", 0.0), ("running_var", 1.0), ("mean", 0.0), ("var", 1.0),
                           ("smoothed_mean", 0.0), ("smoothed_var", 1.0)):
            self.register_buffer(name, torch.full((n_bins, dim), fill))
        self.register_buffer("seen", torch.zeros(n_bins, dtype=torch.bool))
        self.register_buffer("last_update", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def update(self, features: torch.Tensor, bins: torch.Tensor, epoch: int) -> None:
        """Fold one epoch's training features into the running statistics,
        then refresh the statistics used for calibration."""
        if epoch < self.cfg.start_update:
            return
        count, mean, var = bin_statistics(features, bins, self.n_bins)
        present = count > 0
        m = self.cfg.momentum
        # first update of a bin replaces, later ones average with momentum
        keep = torch.where(self.seen & present, m, 0.0).unsqueeze(1)
        upd = present.unsqueeze(1)
        self.running_mean.copy_(torch.where(upd, keep * self.running_mean + (1 - keep) * mean, self.running_mean))
        self.running_var.copy_(torch.where(upd, keep * self.running_var + (1 - keep) * var, self.running_var))
        self.seen |= present
        if self.cfg.empty_bins == "fill":
            self.running_mean.copy_(fill_empty_bins(self.running_mean, present))
            self.running_var.copy_(fill_empty_bins(self.running_var, present))
        self.mean.copy_(self.running_mean)
        self.var.copy_(self.running_var)
        self.smoothed_mean.copy_(smooth_statistics(self.mean, self.window))
        self.smoothed_var.copy_(smooth_statistics(self.var, self.window))
        self.last_update.fill_(epoch)

    def forward(self, features: torch.Tensor, bins: torch.Tensor | None = None,
                epoch: int | None = None) -> torch.Tensor:
        if (not self.training or bins is None or epoch is None or epoch < self.cfg.start_smooth
                or int(self.last_update) < 0):
            return features
        return calibrate(features, bins, self.mean, self.var, self.smoothed_mean, self.smoothed_var,
                         self.cfg.clip_min, self.cfg.clip_max)



"""Label bins, kernel windows, LDS loss weights and the FDS layer.

Semantics follow Yang et al., "Delving into Deep Imbalanced Regression"
(ICML 2021) and its public reference code, with these deliberate deviations
(also listed in the README):

* continuous labels are **binned** (explicit bin size over an explicit range;
  labels outside go to the end bins) before counting or grouping; the
  reference indexes bins by ``int(label)`` and groups FDS statistics by
  unique raw label values;
* **even kernel sizes are rejected**: the reference silently uses ``ks - 1``
  for the gaussian and laplace windows (its half width is ``(ks-1)//2``), so
  the paper's N(12, 10) is run here as ks 11, sigma 10 (the same window); its
  triang window is ``triang(ks)`` of even length, off-centre by half a bin;
* LDS smoothing is done in **floating point** for every reweight mode (the
  reference convolves the integer counts of ``inverse`` in integer
  arithmetic, which truncates the smoothed density);
* FDS keeps **copies**, not aliases, of the statistics it calibrates with, and
  takes both the per-bin and the smoothed statistics from the same update
  (the reference aliases ``running_mean_last_epoch`` to ``running_mean``, so
  its calibration mixes this epoch's raw statistics with the previous
  epoch's smoothed ones), and calibrates from ``start_smooth`` with the
  statistics of the epoch before; the reference's first effective
  calibration comes one epoch later (its smoothed statistics lag one epoch);
* FDS fills the statistics of **empty bins** from their neighbours by
  linear interpolation (``empty_bins='fill'``, the default; ``'keep'``
  leaves them at mean 0 / variance 1 as the discrete-label reference
  variants do); the continuous-label reference (sts-b-dir) fills them bin by
  bin each epoch, which equals this for a lone empty bin and converges to it
  for runs of empty bins;
* FDS calibration is **out of place** and vectorised (no Python loop over
  labels), and works on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import convolve1d, gaussian_filter1d
from scipy.signal.windows import triang

from .binning import MAX_BINS, bin_index, count_bins, equal_edges
from .errors import ConfigError


class Kernel(str, Enum):
    gaussian = "gaussian"
    triang = "triang"
    laplace = "laplace"


class Reweight(str, Enum):
    none = "none"
    inverse = "inverse"
    sqrt_inv = "sqrt_inv"


KERNELS = tuple(k.value for k in Kernel)
REWEIGHTS = tuple(r.value for r in Reweight)
INVERSE_CLIP = (5, 1000)  # the reference clips counts to this range for 'inverse'


# ------------------------------------------------------------------------ bins

@dataclass(frozen=True)
class Bins:
    """Equal-width label bins over [lo, hi]: ``n`` bins of width ``size``
    (the last one may be narrower).  Labels below ``lo`` go to bin 0, labels
    at or above ``hi`` to the last bin.  A label is binned by its decimal
    value (:func:`iqa_cache.binning.bin_index`): a float32 1.4 is in the bin
    that starts at 1.4.  More than :data:`~iqa_cache.binning.MAX_BINS` bins
    are refused."""

    lo: float = 0.0
    hi: float = 100.0
    size: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ConfigError(f"label range [{self.lo}, {self.hi}] is not a range (need lo < hi)")
        if not (math.isfinite(self.size) and self.size > 0):
            raise ConfigError(f"--bin-size must be a positive number, got {self.size}")
        if self.size > self.hi - self.lo:
            raise ConfigError(f"--bin-size {self.size:g} is larger than the label range "
                              f"[{self.lo:g}, {self.hi:g}]")
        q = (self.hi - self.lo) / self.size
        if not q <= MAX_BINS + 1:
            raise ConfigError(f"--bin-size {self.size:g} over the label range [{self.lo:g}, {self.hi:g}] makes "
                              f"{q:.4g} label bins, more than {MAX_BINS}: pass --label-range LO,HI (labels "
                              "outside go to the end bins) or a larger --bin-size")
        object.__setattr__(self, "_n", count_bins(self.lo, self.hi, self.size))
        if self._n > MAX_BINS:
            raise ConfigError(f"--bin-size {self.size:g} over the label range [{self.lo:g}, {self.hi:g}] makes "
                              f"{self._n} label bins, more than {MAX_BINS}: pass --label-range LO,HI (labels "
                              "outside go to the end bins) or a larger --bin-size")

    @property
    def n(self) -> int:
        return self._n

    def index(self, labels) -> np.ndarray:
        """Bin of each label (int64), clipped into [0, n-1]."""
        return bin_index(np.asarray(labels, dtype=np.float64), self.edges(), clip=True)

    def index_t(self, labels: torch.Tensor) -> torch.Tensor:
        """:meth:`index` of a tensor, as a long tensor on its device."""
        idx = self.index(labels.detach().double().cpu().numpy())
        return torch.from_numpy(idx).to(labels.device)

    def out_of_range(self, labels) -> int:
        """How many labels lie outside [lo, hi] (by their decimal value)."""
        return int((bin_index(np.asarray(labels, dtype=np.float64), (self.lo, self.hi)) < 0).sum())

    def counts(self, labels) -> np.ndarray:
        return np.bincount(self.index(labels), minlength=self.n)

    def edges(self) -> np.ndarray:
        return equal_edges(self.lo, self.hi, self.size, self.n)


# --------------------------------------------------------------------- kernels

def even_kernel_message(kernel: str | None, ks: int, what: str = "kernel") -> str:
    """Why an even kernel size is refused, as the reference would treat it.

    The reference builds gaussian and laplace windows from a half width of
    ``(ks - 1) // 2``, i.e. silently with ``ks - 1`` bins; its triang window is
    ``scipy.signal.windows.triang(ks)`` as given: ``ks`` bins with no centre
    bin, which shifts LDS smoothing by half a bin and leaves its FDS
    smoothing one bin short.  ``kernel`` None (not known yet): both cases."""
    kernel = None if kernel is None else str(getattr(kernel, "value", kernel))
    odd = f"use an odd size ({ks - 1} or {ks + 1})"
    shrink = (f"for gaussian and laplace the reference code silently uses ks-1 = {ks - 1} "
              "(so the paper's N(12, 10) is ks 11, sigma 10)")
    tri = (f"for triang it uses scipy's triang({ks}) as is, an even window without a centre bin that shifts "
           "LDS smoothing by half a bin and makes its FDS smoothing one bin short")
    if kernel == "triang":
        return f"{what} size {ks} is even; {odd}: {tri}"
    if kernel in ("gaussian", "laplace"):
        return f"{what} size {ks} is even; {odd}: {shrink}"
    return f"{what} size {ks} is even; {odd}: {shrink}; {tri}"


def check_kernel(kernel: str, ks: int, sigma: float, *, what: str = "kernel") -> None:
    """Raise ConfigError for an unknown kernel, an even or non-positive size
    or a non-positive sigma."""
    if str(kernel) not in KERNELS:
        raise ConfigError(f"{what} '{kernel}' is not one of {', '.join(KERNELS)}")
    if int(ks) != ks or ks < 1:
        raise ConfigError(f"{what} size {ks} must be a positive odd integer")
    if ks % 2 == 0:
        raise ConfigError(even_kernel_message(kernel, int(ks), what))
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"{what} sigma must be a positive number, got {sigma}")


def kernel_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
    """The LDS window (float64, length ks, peak 1): a Gaussian-filtered unit
    impulse, a triangle, or exp(-|x|/sigma), each divided by its maximum."""
    kernel = str(getattr(kernel, "value", kernel))
    check_kernel(kernel, ks, sigma)
    half = (ks - 1) // 2
    if kernel == "gaussian":
        impulse = np.zeros(ks)
        impulse[half] = 1.0
        w = gaussian_filter1d(impulse, sigma=sigma)
    elif kernel == "triang":
        w = triang(ks)
    else:
        w = np.exp(-np.abs(np.arange(-half, half + 1, dtype=np.float64)) / sigma)
    return w / w.max()


# ------------------------------------------------------------------------- LDS

def _bin_values(counts: np.ndarray, reweight: str) -> np.ndarray:
    counts = counts.astype(np.float64)
    if reweight == "sqrt_inv":
        return np.sqrt(counts)
    if reweight == "inverse":
        return np.clip(counts, *INVERSE_CLIP)
    return counts


def label_density(labels, *, bin_size: float = 1.0, lo: float = 0.0, hi: float = 100.0,
                  reweight: str = "sqrt_inv", kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0,
                  lds: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin (empirical, effective) values that LDS weights invert: the
    counts transformed by ``reweight`` (sqrt, or clipped to [5, 1000]), and
    that convolved with the kernel window (``mode='constant'``) when ``lds``."""
    reweight = str(getattr(reweight, "value", reweight))
    if reweight not in REWEIGHTS:
        raise ConfigError(f"--reweight '{reweight}' is not one of {', '.join(REWEIGHTS)}")
    bins = Bins(lo, hi, bin_size)
    empirical = _bin_values(bins.counts(labels), reweight)
    if not lds:
        return empirical, empirical.copy()
    smoothed = convolve1d(empirical, weights=kernel_window(kernel, ks, sigma), mode="constant")
    return empirical, smoothed


def lds_weights(labels, *, bin_size: float = 1.0, lo: float = 0.0, hi: float = 100.0,
                reweight: str = "sqrt_inv", kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0,
                lds: bool = True) -> np.ndarray:
    """Per-sample loss weights (float32, mean 1 over ``labels``).

    Each label's bin value (count, sqrt of the count for ``sqrt_inv``, count
    clipped to [5, 1000] for ``inverse``) is smoothed across bins by the
    kernel window when ``lds`` is true; the weight is its inverse, rescaled so
    the weights average 1.  ``reweight='none'`` gives all ones.  Compute it on
    the training labels only.
    """
    labels = np.asarray(labels, dtype=np.float64)
    reweight = str(getattr(reweight, "value", reweight))
    if reweight not in REWEIGHTS:
        raise ConfigError(f"--reweight '{reweight}' is not one of {', '.join(REWEIGHTS)}")
    if reweight == "none":
        return np.ones(len(labels), dtype=np.float32)
    _, eff = label_density(labels, bin_size=bin_size, lo=lo, hi=hi, reweight=reweight, kernel=kernel,
                           ks=ks, sigma=sigma, lds=lds)
    per_sample = eff[Bins(lo, hi, bin_size).index(labels)]
    w = 1.0 / per_sample
    return (w * (len(w) / w.sum())).astype(np.float32)


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


EMPTY_BINS = ("fill", "keep")


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


@dataclass(frozen=True)
class FDSConfig:
    """FDS settings (DESIGN §6.2).  Statistics are updated from the training
    features at the end of each epoch >= ``start_update`` and used for
    calibration from epoch ``start_smooth`` on (the reference's first
    effective calibration comes one epoch later: see the README).

    ``empty_bins``: what the statistics of bins without training samples
    are before smoothing.  ``fill`` (default, as the reference's
    continuous-label variant sts-b-dir): taken from the neighbouring bins
    (:func:`empty_bin_plan`); ``keep``: left at mean 0 / variance 1 (the
    reference's discrete-label variants), which drags the smoothed statistics
    of the bins next to them, i.e. of the rare tail bins."""

    enabled: bool = False
    kernel: str = "gaussian"
    ks: int = 5
    sigma: float = 2.0
    momentum: float = 0.9
    start_update: int = 0
    start_smooth: int = 1
    clip_min: float = 0.1
    clip_max: float = 10.0
    empty_bins: str = "fill"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", str(getattr(self.kernel, "value", self.kernel)))
        object.__setattr__(self, "empty_bins", str(getattr(self.empty_bins, "value", self.empty_bins)))
        if self.empty_bins not in EMPTY_BINS:
            raise ConfigError(f"--fds-empty-bins '{self.empty_bins}' is not one of {', '.join(EMPTY_BINS)}")
        if self.enabled:
            check_kernel(self.kernel, self.ks, self.sigma, what="--fds-kernel")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--fds-momentum must be in [0, 1), got {self.momentum}")
        if self.start_update < 0 or self.start_smooth < 0:
            raise ConfigError("--fds-start-update and --fds-start-smooth must be 0 or more")
        if self.start_smooth <= self.start_update:
            raise ConfigError(f"--fds-start-smooth ({self.start_smooth}) must come after --fds-start-update "
                              f"({self.start_update}): calibration needs statistics from an earlier epoch")
        if not 0 < self.clip_min <= 1 <= self.clip_max:
            raise ConfigError(f"FDS clip range [{self.clip_min}, {self.clip_max}] must contain 1")


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


@dataclass(frozen=True)
class LDSConfig:
    """LDS settings (DESIGN §6.1).  ``reweight`` 'none' means no loss
    weights; with ``enabled`` the bin values are smoothed by the kernel
    first (LDS), without it they are inverted as they are."""

    enabled: bool = False
    reweight: str = "none"
    kernel: str = "gaussian"
    ks: int = 5
    sigma: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reweight", str(getattr(self.reweight, "value", self.reweight)))
        object.__setattr__(self, "kernel", str(getattr(self.kernel, "value", self.kernel)))
        if self.reweight not in REWEIGHTS:
            raise ConfigError(f"--reweight '{self.reweight}' is not one of {', '.join(REWEIGHTS)}")
        if self.enabled:
            if self.reweight == "none":
                raise ConfigError("--lds needs --reweight inverse or sqrt_inv (LDS smooths the density that "
                                  "the weights invert)")
            check_kernel(self.kernel, self.ks, self.sigma, what="--lds-kernel")

    def weights(self, labels: Sequence[float], bins: Bins) -> np.ndarray:
        return lds_weights(labels, bin_size=bins.size, lo=bins.lo, hi=bins.hi, reweight=self.reweight,
                           kernel=self.kernel, ks=self.ks, sigma=self.sigma, lds=self.enabled)

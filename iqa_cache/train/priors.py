"""What the imbalance methods compute from the training labels, once per
run, in numpy: the Gaussian mixture of GAI, the label histogram of BNI, the
DenseWeight loss weights and the Dist Loss pseudo-labels; and each method's
per-sample loss weights (:func:`loss_weights`).

Formulas and the differences from the official code: ``docs/method.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..binning import Bins
from .kernels import kernel_window

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["GaussianMixture", "fit_gmm", "bni_prior", "kde_density", "dense_weights", "loss_weights",
           "label_pdf", "pseudo_labels", "batch_counts",
           "bin_centres"]


# ------------------------------------------------------------------- GAI

@dataclass(frozen=True)
class GaussianMixture:
    """A 1-d Gaussian mixture: ``means``, ``variances``, ``weights`` [M]."""

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray


def fit_gmm(labels, k: int, *, iters: int = 500, tol: float = 1e-10, reg: float = 1e-6) -> GaussianMixture:
    """Fit ``k`` Gaussians to ``labels`` by EM (deterministic: started from
    ``k`` equal-count slices of the sorted labels; ``reg`` is added to each
    variance, as scikit-learn's ``reg_covar``).  Stops when the mean
    log-likelihood improves by less than ``tol``."""
    y = np.sort(np.asarray(labels, dtype=np.float64))
    k = max(1, min(int(k), len(y)))
    parts = np.array_split(y, k)
    mu = np.array([p.mean() for p in parts])
    var = np.array([p.var() for p in parts]) + reg
    var = np.where(var > reg, var, max(y.var(), 1.0) / k ** 2 + reg)  # a slice of equal labels
    w = np.array([len(p) for p in parts], dtype=np.float64) / len(y)
    last = -np.inf
    for _ in range(iters):
        log_p = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (y[:, None] - mu) ** 2 / var  # [n, k]
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))
        ll = float(log_norm.mean())
        resp = np.exp(log_p - log_norm)
        nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
        w = nk / len(y)
        mu = (resp * y[:, None]).sum(axis=0) / nk
        var = (resp * (y[:, None] - mu) ** 2).sum(axis=0) / nk + reg
        if ll - last < tol:
            break
        last = ll
    return GaussianMixture(mu, var, w)


# ------------------------------------------------------------------- BNI

def bni_prior(labels, bins: Bins, *, window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BNI's buckets: the bin centres and the training labels' share of each
    bin (summing to 1), smoothed across bins by ``window`` first when given
    (LDS-style, zeros beyond the ends).  Empty bins get weight 0."""
    counts = bins.counts(labels).astype(np.float64)
    if window is not None:
        from scipy.ndimage import convolve1d

        counts = convolve1d(counts, weights=window, mode="constant")
    return bin_centres(bins), counts / counts.sum()


# ----------------------------------------------------------- DenseWeight

# Up to this many (label, point) pairs a density is summed exactly, beyond it on a grid.
EXACT_PAIRS = 1 << 26


def kde_density(labels, at, bandwidth: float, *, grid: int = 4096, exact_pairs: int = EXACT_PAIRS) -> np.ndarray:
    """Gaussian kernel density of ``labels`` at the points ``at`` with the
    kernel's standard deviation ``bandwidth``.  Summed exactly over all pairs
    up to ``exact_pairs`` of them (in chunks; KonIQ's 7,058 training labels
    at themselves: 50 M), beyond that as KDEpy's FFTKDE does: linear
    binning onto an even grid of ``grid`` points, one convolution with the
    sampled kernel, linear interpolation; linear in the number of labels."""
    y = np.asarray(labels, dtype=np.float64)
    at = np.asarray(at, dtype=np.float64)
    n, h = len(y), float(bandwidth)
    norm = 1.0 / (n * h * np.sqrt(2 * np.pi))
    if n * len(at) <= exact_pairs:
        step = max(1, exact_pairs // (8 * n))
        out = np.empty(len(at))
        for a in range(0, len(at), step):
            d = (at[a:a + step, None] - y[None, :]) / h
            out[a:a + step] = np.exp(-0.5 * d * d).sum(axis=1)
        return out * norm
    lo, hi = min(y.min(), at.min()) - 4 * h, max(y.max(), at.max()) + 4 * h
    step = (hi - lo) / (grid - 1)
    pos = (y - lo) / step
    left = np.clip(np.floor(pos).astype(np.int64), 0, grid - 2)
    frac = pos - left
    mass = np.bincount(left, 1 - frac, minlength=grid) + np.bincount(left + 1, frac, minlength=grid)
    half = int(np.ceil(4 * h / step))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / h) ** 2)
    from scipy.signal import fftconvolve

    dens = np.maximum(fftconvolve(mass, kernel, mode="same"), 0.0) * norm
    return np.interp(at, lo + step * np.arange(grid), dens)


def dense_weights(labels, alpha: float, eps: float, *, grid: int = 4096) -> np.ndarray:
    """DenseWeight (Steininger et al. 2021) of each label: ``max(1 - alpha *
    p'(y), eps)`` divided by the weights' mean (float32, mean 1).  ``p`` is
    the Gaussian KDE of the labels with the package's bandwidth ``1.06 std
    n^-1/5`` (population std); ``p'`` is ``p`` min-max scaled over the
    package's grid (``grid`` points over the labels' range widened by
    ``max(5 % of it, 3.9 bandwidths)``, KDEpy's autogrid), evaluated at the
    labels themselves (the package looks up the grid point left of each)."""
    y = np.asarray(labels, dtype=np.float64)
    h = 1.06 * y.std() * len(y) ** -0.2
    if not h > 0:  # all labels equal: all weights equal
        return np.ones(len(y), dtype=np.float32)
    width = max(0.05 * (y.max() - y.min()), 3.9 * h)
    on_grid = kde_density(y, np.linspace(y.min() - width, y.max() + width, grid), h)
    lo, span = on_grid.min(), on_grid.max() - on_grid.min()
    scaled = (kde_density(y, y, h) - lo) / span
    w = np.maximum(1.0 - alpha * scaled, eps)
    return (w / w.mean()).astype(np.float32)


def loss_weights(cfg: "TrainConfig", labels, bins: Bins) -> np.ndarray:
    """The per-sample loss weights that ``cfg``'s method trains with: LDS
    (or --reweight) weights, DenseWeight's, or ones."""
    if cfg.method.name == "denseweight":
        return dense_weights(labels, cfg.method.dw_alpha, cfg.method.dw_eps)
    return cfg.lds.weights(labels, bins)


# ------------------------------------------------------------- Dist Loss

def bin_centres(bins: Bins) -> np.ndarray:
    edges = bins.edges()
    return (edges[:-1] + edges[1:]) / 2


def label_pdf(labels, bins: Bins, bw_factor: float) -> np.ndarray:
    """Dist Loss's label density: the Gaussian KDE of the labels with
    bandwidth ``bw_factor`` times their (sample) std, as
    ``scipy.stats.gaussian_kde(labels, bw_method=bw_factor)``, at the bin
    centres, normalised to sum 1."""
    y = np.asarray(labels, dtype=np.float64)
    h = bw_factor * (y.std(ddof=1) if len(y) > 1 else 0.0)
    centres = bin_centres(bins)
    if not h > 0:
        dens = (bins.index(centres) == bins.index(y[:1])[0]).astype(np.float64)
    else:
        dens = kde_density(y, centres, h)
    return dens / dens.sum()


def batch_counts(pdf: np.ndarray, n: int, region: float = 0.5) -> np.ndarray:
    """How many of ``n`` pseudo-labels fall in each bin, as Dist Loss's
    ``get_batch_label_distribution`` counts them: each tail up to the first
    full label lumped into its end bin, the bins between rounded, and the
    rounding residual spread over bins around the mode (within ``region``
    of the bins).  Where that official rule would go wrong (a batch too
    small for two tails, a window past the ends, counts below 0) the counts
    are the largest-remainder rounding of ``pdf * n`` instead."""
    num = pdf * n
    m_bins = len(num)
    fallback = np.floor(num).astype(np.int64)
    order = np.argsort(-(num - fallback), kind="stable")
    fallback[order[:n - int(fallback.sum())]] += 1
    cum, rcum = np.cumsum(num), np.cumsum(num[::-1])[::-1]
    if not (cum[-1] >= 1 and (cum >= 1).any() and (rcum >= 1).any()):
        return fallback
    f, b = int(np.argmax(cum >= 1)), int(m_bins - 1 - np.argmax(rcum[::-1] >= 1))
    if f >= b:
        return fallback
    counts = np.zeros(m_bins, dtype=np.int64)
    counts[f], counts[b] = round(cum[f]), round(rcum[b])
    counts[f + 1:b] = np.round(num[f + 1:b]).astype(np.int64)
    res = n - int(counts.sum())
    width = max(1, int(region * m_bins))
    mode = int(np.argmax(counts))
    if res:
        sign, size = (1 if res > 0 else -1), abs(res)
        if size <= width:
            a = min(max(mode - size // 2, 0), m_bins - size)
            counts[a:a + size] += sign
        else:
            per, rest = divmod(size, width)
            a = min(max(mode - width // 2, 0), m_bins - width)
            counts[a:a + width] += sign * per
            counts[mode] += sign * rest
    if counts.min() < 0 or counts.sum() != n:
        return fallback
    return counts


def pseudo_labels(pdf: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``n`` pseudo-labels, ascending: each bin's value ``values[i]``
    repeated :func:`batch_counts` times."""
    return np.repeat(values, batch_counts(pdf, n)).astype(np.float64)


def kernel_of(cfg: "TrainConfig") -> np.ndarray:
    """The LDS kernel window of ``cfg`` (BNI smooths with it)."""
    return kernel_window(cfg.lds.kernel, cfg.lds.ks, cfg.lds.sigma)

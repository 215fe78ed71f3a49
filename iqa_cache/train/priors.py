"""What the imbalance methods compute from the training labels, once per
run, in numpy: the Gaussian mixture of GAI (scikit-learn's), the label
histogram of BNI and the Dist Loss pseudo-labels on the label grid, the
DenseWeight loss weights; and each method's per-sample loss weights
(:func:`loss_weights`).

Formulas and the differences from the official code: ``docs/method.md``.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import convolve1d

from ..binning import Bins, snap
from .kernels import kernel_window

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["GaussianMixture", "fit_gmm", "label_grid", "grid_index", "bni_prior", "kde_density",
           "practical_support", "dense_weights", "loss_weights", "label_pdf", "pseudo_labels", "batch_counts"]


# ------------------------------------------------------------------- GAI

@dataclass(frozen=True)
class GaussianMixture:
    """A 1-d Gaussian mixture: ``means``, ``variances``, ``weights`` [M]."""

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray


def fit_gmm(labels, k: int) -> GaussianMixture:
    """GAI's label prior as the official ``preprocess_gmm.py`` fits it:
    scikit-learn's ``GaussianMixture(n_components=k, random_state=0)`` on
    the training labels (k-means start, ``reg_covar`` 1e-6 in each
    variance); ``k`` at most the number of labels.  Float labels are fitted
    in their own precision (float32 from a cache, as the official loader
    gives them: scikit-learn's fit differs between float32 and float64)."""
    from sklearn.mixture import GaussianMixture as SkMixture

    y = np.asarray(labels)
    y = (y if np.issubdtype(y.dtype, np.floating) else y.astype(np.float64)).reshape(-1, 1)
    k = max(1, min(int(k), len(y)))
    with warnings.catch_warnings(record=True) as caught:  # e.g. fewer distinct labels than components
        warnings.simplefilter("always")
        gmm = SkMixture(n_components=k, random_state=0).fit(y)
    for w in caught:  # the fit stands, as in the official code; said once, in the log
        log.info("GAI's mixture (K = %d): %s", k, w.message)
    return GaussianMixture(gmm.means_.reshape(-1).astype(np.float64), gmm.covariances_.reshape(-1).astype(np.float64),
                           gmm.weights_.reshape(-1).astype(np.float64))


# ---------------------------------------------------------- the label grid

def label_grid(bins: Bins) -> np.ndarray:
    """The label grid of BNI and Dist Loss: ``lo, lo + size, ..., hi``
    (the bins' n + 1 edges), as the official codes' ``range(max_target)``
    and ``np.arange(min_label, max_label + step, step)``."""
    return bins.edges()


def grid_index(labels, bins: Bins) -> np.ndarray:
    """Each label's grid point: the one at or below it (the official
    ``int(label)`` on integer grids), by the label's decimal value
    (:func:`~iqa_cache.binning.bin_index`); ``hi`` is the last point, labels
    outside go to the end points."""
    y = np.asarray(labels, dtype=np.float64)
    idx = bins.index(y)
    idx[snap(y, (bins.lo, bins.hi)) >= bins.hi] = bins.n
    return idx


# ------------------------------------------------------------------- BNI

def bni_prior(labels, bins: Bins, *, window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BNI's buckets as the official ``get_bucket_info``: the label grid
    (:func:`label_grid`) and the training labels' share of each point
    (:func:`grid_index`), summing to 1.  With ``window`` the integer counts
    are smoothed first (``convolve1d``, zeros beyond the ends) into integers,
    truncated, as the official code does.  Buckets with no (smoothed) count
    get weight 0, the same as the official code dropping them."""
    counts = np.bincount(grid_index(labels, bins), minlength=bins.n + 1)
    if window is not None:
        counts = convolve1d(counts, weights=window, mode="constant")  # an integer array: truncated
    return label_grid(bins), counts / counts.sum()


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


def practical_support(bandwidth: float, atol: float = 1e-4) -> float:
    """How far out KDEpy's autogrid reaches for a Gaussian kernel of
    standard deviation ``bandwidth`` (``Kernel.practical_support``): where
    the kernel's density falls to ``atol``, found by ``brentq`` on [0, 8
    bandwidths] to 1e-3, plus 1e-3.  Not a fixed multiple of the
    bandwidth: 4.07 bandwidths at 1, 3.90 at 2, 4.77 at 0.05.  0 where the
    kernel's peak is below ``atol`` (KDEpy raises there)."""
    from scipy.optimize import brentq

    h = float(bandwidth)

    def above(x: float) -> float:
        return math.exp(-0.5 * (x / h) ** 2) / (h * math.sqrt(2 * math.pi)) - atol

    if above(0.0) <= 0:
        return 0.0
    return brentq(above, 0.0, 8 * h, xtol=1e-3) + 1e-3


def dense_weights(labels, alpha: float, eps: float, *, grid: int = 4096) -> np.ndarray:
    """DenseWeight (Steininger et al. 2021) of each label: ``max(1 - alpha *
    p'(y), eps)`` divided by the weights' mean (float32, mean 1).  ``p`` is
    the Gaussian KDE of the labels with the package's bandwidth ``1.06 std
    n^-1/5`` (population std); ``p'`` is ``p`` min-max scaled over the
    package's grid (``grid`` points over the labels' range widened by
    ``max(5 % of it, practical_support(bandwidth))``, KDEpy's autogrid),
    evaluated at the labels themselves (the package looks up the grid point
    left of each)."""
    y = np.asarray(labels, dtype=np.float64)
    h = 1.06 * y.std() * len(y) ** -0.2
    if not h > 0:  # all labels equal: all weights equal
        return np.ones(len(y), dtype=np.float32)
    width = max(0.05 * (y.max() - y.min()), practical_support(h))
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

def label_pdf(labels, bins: Bins, bw_factor: float) -> np.ndarray:
    """Dist Loss's label density as the official ``get_label_distribution``:
    the training labels inside [lo, hi], their Gaussian KDE with bandwidth
    ``bw_factor`` times their (sample) std (``scipy.stats.gaussian_kde(labels,
    bw_method=bw_factor)``), at the label grid (:func:`label_grid`),
    normalised to sum 1.  Where the KDE is degenerate (one label value)
    all the mass is on that value's grid point."""
    y = snap(np.asarray(labels, dtype=np.float64), (bins.lo, bins.hi))
    y = y[(y >= bins.lo) & (y <= bins.hi)]
    h = bw_factor * (y.std(ddof=1) if len(y) > 1 else 0.0)
    points = label_grid(bins)
    if not h > 0:
        dens = np.zeros(len(points))
        dens[grid_index(y[:1] if len(y) else [bins.lo], bins)[0]] = 1.0
    else:
        dens = kde_density(y, points, h)
    return dens / dens.sum()


def batch_counts(pdf: np.ndarray, n: int, region: float = 0.5) -> np.ndarray:
    """How many of ``n`` pseudo-labels fall on each grid point, as Dist
    Loss's ``get_batch_label_distribution`` counts them: each tail up to the
    first whole label lumped into its end point, the points between rounded,
    and the rounding residual spread over the points around the mode (within
    ``region`` of them).  Two departures, where the official rule goes
    wrong: a residual window that would reach past an end is moved inside
    (the official slice, with a negative start, is empty, or is cut short at
    the end, and its counts then miss ``n``); and where the rule cannot
    apply (a batch too small for two tails, counts below 0) the counts are
    the largest-remainder rounding of ``pdf * n``.  (The official branch for
    a residual wider than the region is not reached in practice: each
    rounded point is off by at most 1/2, so the residual is at most half the
    points.)"""
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
    """``n`` pseudo-labels, ascending: each grid point's value ``values[i]``
    repeated :func:`batch_counts` times (the official
    ``get_batch_theoretical_labels``)."""
    return np.repeat(values, batch_counts(pdf, n)).astype(np.float64)


def kernel_of(cfg: "TrainConfig") -> np.ndarray:
    """BNI's smoothing window: the LDS kernel and size of ``cfg`` with
    BNI's own sigma (``bni_sigma``; the official default 1)."""
    return kernel_window(cfg.lds.kernel, cfg.lds.ks, cfg.method.bni_sigma)

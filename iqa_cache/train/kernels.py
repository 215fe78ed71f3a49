"""Kernel windows and LDS loss weights: numpy only (scipy is imported when a
window is built), so that configs and the CLI stay light.

Semantics: :mod:`iqa_cache.train.imbalance` and ``docs/method.md``.
"""
from __future__ import annotations

import math
from enum import Enum

import numpy as np

from ..binning import Bins
from ..errors import ConfigError


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
        from scipy.ndimage import gaussian_filter1d

        impulse = np.zeros(ks)
        impulse[half] = 1.0
        w = gaussian_filter1d(impulse, sigma=sigma)
    elif kernel == "triang":
        from scipy.signal.windows import triang
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
    from scipy.ndimage import convolve1d
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


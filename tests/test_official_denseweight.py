"""DenseWeight against a transcription of the official package (SteiMi/
denseweight 0.1.2, ``DenseWeight.fit`` on KDEpy's ``FFTKDE``: its autogrid,
linear binning and convolution, the min-max scaling and the grid lookup);
and the deliberate deviation (docs/method.md, "DenseWeight: denseweight")."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.signal import convolve

from iqa_cache.train.priors import dense_weights, kde_density, practical_support

from .conftest import koniq_like_labels

SECTION = "docs/method.md#denseweight-denseweight"


# --------------------------------------------------- the official code, transcribed

def kdepy_practical_support(bw, atol=10e-5):
    """KDEpy Kernel.practical_support for the Gaussian kernel."""
    def f(x):
        return math.exp(-0.5 * (x / bw) ** 2) / (bw * math.sqrt(2 * math.pi)) - atol

    return brentq(f, a=0, b=8 * bw, xtol=1e-3, full_output=False) + 1e-3


def fftkde_evaluate(data, bw, grid_points):
    """FFTKDE(bw).fit(data).evaluate(grid_points): autogrid, linear binning, convolution."""
    support = kdepy_practical_support(bw)
    lo, hi = data.min(), data.max()
    outside = max(0.05 * (hi - lo), support)
    x = np.linspace(lo - outside, hi + outside, num=grid_points)
    dx = (x[-1] - x[0]) / (grid_points - 1)
    pos = (data - x[0]) / dx
    left = np.floor(pos).astype(int)
    frac = pos - left
    binned = (np.bincount(left, 1 - frac, minlength=grid_points)
              + np.bincount(left + 1, frac, minlength=grid_points))[:grid_points] / len(data)
    half = min(np.floor(support / dx), grid_points)
    kernel_grid = np.linspace(-dx * half, dx * half, int(half * 2 + 1))
    kernel = np.exp(-0.5 * (kernel_grid / bw) ** 2) / (bw * math.sqrt(2 * math.pi))
    return x, convolve(binned, kernel, mode="same")


def bisection(array, value):
    n = len(array)
    if value < array[0]:
        return -1
    if value > array[n - 1]:
        return n
    jl, ju = 0, n - 1
    while ju - jl > 1:
        jm = (ju + jl) >> 1
        if value >= array[jm]:
            jl = jm
        else:
            ju = jm
    if value == array[0]:
        return 0
    if value == array[n - 1]:
        return n - 1
    return jl


def official_dense_weights(y, alpha, eps=1e-6, grid_points=4096):
    """DenseWeight(alpha, eps=eps).fit(y, grid_points)."""
    bandwidth = 1.06 * np.std(y) * np.power(len(y), (-1.0 / 5.0))
    x, dens_grid = fftkde_evaluate(np.asarray(y, dtype=float), bandwidth, grid_points)
    scaled = (dens_grid - dens_grid.min()) / (dens_grid.max() - dens_grid.min())  # MinMaxScaler
    dens = np.array([scaled[min(max(bisection(x, v), 0), len(x) - 1)] for v in y])
    w_star = np.maximum(1 - alpha * dens, eps)
    return w_star / np.mean(w_star)


# ------------------------------------------------------------------- inputs

LABELS = {
    "continuous MOS 0-100": lambda rng: koniq_like_labels(1500, seed=6),
    "MOS 1-5 in steps of 0.1": lambda rng: np.clip(np.round(rng.normal(3.4, 0.6, 1500), 1), 1, 5),
    "integers 0-4": lambda rng: rng.choice(5, 1500, p=[0.05, 0.15, 0.45, 0.3, 0.05]).astype(np.float64),
    "0-1 continuous": lambda rng: rng.beta(5, 2, 1500),
}


@pytest.mark.parametrize("bw,kdepy", [(0.05, 0.23861698045448712), (1.0, 4.073159992998083),
                                      (2.0, 7.797312892034601), (5.0, 18.279299456301867)])
def test_the_grid_margin_is_kdepys_practical_support(bw, kdepy):
    """The numbers KDEpy 1.1.12 gives: not a fixed multiple of the bandwidth (4.77, 4.07, 3.90, 3.66)."""
    assert practical_support(bw) == pytest.approx(kdepy, abs=1e-9)
    assert kdepy_practical_support(bw) == pytest.approx(kdepy, abs=1e-9)


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_weights_equal_the_packages_up_to_its_grid_lookup(kind, alpha):
    """The same weights but for where the density is read: the package
    reads the grid point left of each label (a 4,096-point grid), the
    project the density at the label: they agree to a few hundredths."""
    y = LABELS[kind](np.random.default_rng(0))
    got = dense_weights(y, alpha, 1e-6)
    want = official_dense_weights(y, alpha)
    assert got.mean() == pytest.approx(1.0, abs=1e-6) and want.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(got, want, rtol=0.02, atol=0.03 * alpha)
    assert np.corrcoef(got, want)[0, 1] > 0.999


def test_deviation_the_density_is_read_at_each_label_not_at_the_grid_point_left_of_it():
    """With the same (exact) density on the grid, the package's lookup
    alone changes the weights; the project's equal the density at the
    labels."""
    y = koniq_like_labels(400, seed=7)
    h = 1.06 * y.std() * len(y) ** -0.2
    width = max(0.05 * (y.max() - y.min()), practical_support(h))
    x = np.linspace(y.min() - width, y.max() + width, 4096)
    on_grid = kde_density(y, x, h)
    lo, span = on_grid.min(), on_grid.max() - on_grid.min()
    at_labels = np.maximum(1 - (kde_density(y, y, h) - lo) / span, 1e-6)
    left = np.maximum(1 - (on_grid[[bisection(x, v) for v in y]] - lo) / span, 1e-6)
    np.testing.assert_allclose(dense_weights(y, 1.0, 1e-6), at_labels / at_labels.mean(), rtol=1e-5)
    assert np.abs(at_labels / at_labels.mean() - left / left.mean()).max() > 1e-4, SECTION

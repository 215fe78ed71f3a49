"""LDS weights and FDS against plain, loop-based re-implementations of the
reference formulas (docs/method.md, "Reference semantics"), written independently of the library."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from iqa_cache.errors import ConfigError
from iqa_cache.train.imbalance import (
    FDS,
    Bins,
    FDSConfig,
    LDSConfig,
    bin_statistics,
    calibrate,
    fds_window,
    kernel_window,
    label_density,
    lds_weights,
    smooth_statistics,
)
from tests.reference import calibrate_mean_var, ref_bin, ref_kernel_window, ref_lds_weights

from .conftest import koniq_like_labels

# The reference formulas, label by label, live in tests/reference.py (also
# benchmark variant (a)), written without iqa_cache.

def plain_window(kernel: str, ks: int, sigma: float) -> list[float]:
    return list(ref_kernel_window(kernel, ks, sigma))


def plain_lds_weights(labels, reweight, lds, kernel, ks, sigma, max_target=100):
    return ref_lds_weights(ref_bin(labels, 0, max_target, 1), max_target, reweight, lds, kernel, ks, sigma)


def plain_calibrate(matrix, m1, v1, m2, v2):
    return calibrate_mean_var(matrix.clone(), m1, v1, m2, v2)


# ------------------------------------------------------------------ LDS tests

LABELS = koniq_like_labels(7058, seed=0)


@pytest.mark.parametrize("reweight,lds", [("none", False), ("inverse", False), ("sqrt_inv", False),
                                          ("inverse", True), ("sqrt_inv", True)])
@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_lds_weights_match_plain_reference(reweight, kernel, lds):
    ks, sigma = (5, 2.0) if kernel != "laplace" else (7, 1.5)
    got = lds_weights(LABELS, bin_size=1, lo=0, hi=100, reweight=reweight, kernel=kernel, ks=ks, sigma=sigma,
                      lds=lds)
    want = np.asarray(plain_lds_weights(LABELS, reweight, lds, kernel, ks, sigma))
    assert got.dtype == np.float32 and got.shape == LABELS.shape
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert abs(got.mean() - 1.0) < 1e-5


def test_lds_paper_kernel_and_rare_labels_weigh_more():
    w = lds_weights(LABELS, bin_size=1, lo=0, hi=100, reweight="sqrt_inv", kernel="gaussian", ks=11, sigma=10)
    np.testing.assert_allclose(
        w, plain_lds_weights(LABELS, "sqrt_inv", True, "gaussian", 11, 10.0), rtol=2e-6)
    rare, common = w[LABELS < 20].mean(), w[(LABELS > 60) & (LABELS < 75)].mean()
    assert rare > 2 * common


def test_lds_other_bin_grid_equals_rescaled_labels():
    # the 0-5 view with bin 0.05 is the 0-100 view with bin 1
    a = lds_weights(LABELS / 20.0, bin_size=0.05, lo=0, hi=5, reweight="sqrt_inv", kernel="gaussian", ks=5, sigma=2)
    b = lds_weights(LABELS, bin_size=1, lo=0, hi=100, reweight="sqrt_inv", kernel="gaussian", ks=5, sigma=2)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_inverse_is_smoothed_in_float_not_integer():
    # the reference convolves integer counts for 'inverse' and truncates; we do not
    counts = np.clip(Bins(0, 100, 1).counts(LABELS), 5, 1000)
    window = kernel_window("gaussian", 5, 2)
    truncated = convolve1d(counts.astype(np.int64), weights=window, mode="constant")
    exact = convolve1d(counts.astype(np.float64), weights=window, mode="constant")
    _, smoothed = label_density(LABELS, reweight="inverse", kernel="gaussian", ks=5, sigma=2)
    np.testing.assert_allclose(smoothed, exact)
    assert np.abs(smoothed - truncated).max() > 0.1


@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_kernel_windows(kernel):
    w = kernel_window(kernel, 7, 1.5)
    np.testing.assert_allclose(w, plain_window(kernel, 7, 1.5), rtol=1e-12)
    assert w.max() == 1.0 and w[3] == 1.0 and np.allclose(w, w[::-1])
    f = fds_window(kernel, 7, 1.5)
    assert abs(float(f.sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("ks,sigma,match", [(12, 10, "even"), (0, 2, "positive odd"), (5, 0, "sigma"),
                                            (5, -1, "sigma")])
def test_bad_kernels_rejected(ks, sigma, match):
    with pytest.raises(ConfigError, match=match):
        lds_weights(LABELS, reweight="sqrt_inv", kernel="gaussian", ks=ks, sigma=sigma)


def test_even_kernel_message_names_reference_behaviour():
    with pytest.raises(ConfigError, match=r"ks-1 = 11"):
        LDSConfig(enabled=True, reweight="sqrt_inv", ks=12, sigma=10)
    # the reference's triang is scipy's triang(ks) as given: even, no centre bin, not ks-1
    with pytest.raises(ConfigError, match=r"triang\(4\)") as e:
        LDSConfig(enabled=True, reweight="sqrt_inv", kernel="triang", ks=4)
    assert "ks-1" not in str(e.value)
    assert len(ref_kernel_window("triang", 4, 1.0)) == 4 and len(ref_kernel_window("gaussian", 12, 10.0)) == 11


def test_paper_kernel_n12_10_is_the_reference_window_for_ks_12():
    np.testing.assert_allclose(kernel_window("gaussian", 11, 10.0), ref_kernel_window("gaussian", 12, 10.0),
                               rtol=1e-12)


def test_lds_without_reweight_is_refused():
    with pytest.raises(ConfigError, match="--reweight"):
        LDSConfig(enabled=True, reweight="none")


def test_bins_clip_out_of_range_labels_to_end_bins():
    b = Bins(0, 100, 1)
    assert b.n == 100
    np.testing.assert_array_equal(b.index([-3, 0, 0.999, 1, 57.3, 99.99, 100, 140]), [0, 0, 0, 1, 57, 99, 99, 99])
    assert b.out_of_range([-3, 50, 100, 140]) == 2
    b2 = Bins(0, 5, 0.1)
    assert b2.n == 50
    np.testing.assert_array_equal(b2.index([0.3, 0.7, 4.99]), [3, 7, 49])
    with pytest.raises(ConfigError, match="bin-size"):
        Bins(0, 100, 0)
    with pytest.raises(ConfigError, match="larger than the label range"):
        Bins(0, 4, 5)


# ------------------------------------------------------------------ FDS tests

def _features(n=300, d=6, n_bins=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    bins = torch.randint(0, n_bins, (n,), generator=g)
    z = torch.randn(n, d, generator=g) + bins[:, None].float() * 0.3
    return z, bins


def test_bin_statistics_match_per_label_loop():
    z, bins = _features()
    bins[bins == 4] = 3  # an empty bin
    bins[0] = 9
    bins[bins == 9] = 8
    bins[0] = 9  # a bin with one sample
    count, mean, var = bin_statistics(z, bins, 10)
    for b in range(10):
        sel = z[bins == b]
        assert int(count[b]) == len(sel)
        if len(sel) == 0:
            continue
        torch.testing.assert_close(mean[b], sel.mean(0), rtol=1e-5, atol=1e-6)
        want = torch.var(sel, 0, unbiased=len(sel) != 1)
        torch.testing.assert_close(var[b], want, rtol=1e-4, atol=1e-6)
    assert torch.all(var[9] == 0)


def test_smoothing_matches_reflect_padded_convolution():
    stats = torch.randn(12, 5, dtype=torch.float32)
    window = fds_window("gaussian", 5, 2.0)
    got = smooth_statistics(stats, window)
    w = window.numpy().astype(np.float64)
    for d in range(5):
        padded = np.pad(stats[:, d].numpy().astype(np.float64), 2, mode="reflect")
        want = np.array([np.dot(padded[i:i + 5], w) for i in range(12)])
        np.testing.assert_allclose(got[:, d].numpy(), want, rtol=1e-5, atol=1e-6)


def test_calibrate_matches_formula_and_reference_special_cases():
    z, bins = _features(n=200, d=5, n_bins=6, seed=1)
    g = torch.Generator().manual_seed(2)
    mean, sm = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    var, sv = torch.rand(6, 5, generator=g) + 0.05, torch.rand(6, 5, generator=g) * 3 + 0.01
    var[2, 1] = 0.0  # one zero-variance dimension: left as is
    var[4] = 0.0  # a bin whose variances sum to 0: left as is
    got = calibrate(z, bins, mean, var, sm, sv)
    for b in range(6):
        sel = bins == b
        want = plain_calibrate(z[sel], mean[b], var[b], sm[b], sv[b])
        torch.testing.assert_close(got[sel], want, rtol=1e-5, atol=1e-6)
    # the closed form, for an ordinary bin
    sel = bins == 0
    f = torch.sqrt(torch.clamp(sv[0] / var[0], 0.1, 10))
    torch.testing.assert_close(got[sel], (z[sel] - mean[0]) * f + sm[0])
    torch.testing.assert_close(got[bins == 4], z[bins == 4])


def test_calibrate_is_out_of_place_and_differentiable():
    z, bins = _features(n=50, d=4, n_bins=5)
    z = z.clone().requires_grad_(True)
    before = z.detach().clone()
    var = torch.rand(5, 4) + 0.1
    var[1, 0] = 0.0
    out = calibrate(z, bins, torch.zeros(5, 4), var, torch.ones(5, 4), torch.rand(5, 4) + 0.1)
    out.sum().backward()
    assert torch.equal(z.detach(), before)
    assert torch.isfinite(z.grad).all()


def test_fds_layer_momentum_schedule_and_identity_at_eval():
    cfg = FDSConfig(enabled=True, kernel="gaussian", ks=3, sigma=1.0, momentum=0.9, start_update=0,
                    start_smooth=1)
    fds = FDS(4, 6, cfg)
    z0, b = _features(n=120, d=4, n_bins=6, seed=3)
    z1 = z0 * 2 + 1
    fds.train()
    assert torch.equal(fds(z0, b, 0), z0)  # before start_smooth
    fds.update(z0, b, epoch=0)
    _, m0, v0 = bin_statistics(z0, b, 6)
    torch.testing.assert_close(fds.running_mean, m0)  # first update replaces
    fds.update(z1, b, epoch=1)
    _, m1, v1 = bin_statistics(z1, b, 6)
    torch.testing.assert_close(fds.running_mean, 0.9 * m0 + 0.1 * m1)
    torch.testing.assert_close(fds.running_var, 0.9 * v0 + 0.1 * v1)
    # calibration uses copies, not aliases, of the running statistics
    assert fds.mean.data_ptr() != fds.running_mean.data_ptr()
    torch.testing.assert_close(fds.smoothed_mean, smooth_statistics(fds.mean, fds.window))
    out = fds(z1, b, 2)
    torch.testing.assert_close(out, calibrate(z1, b, fds.mean, fds.var, fds.smoothed_mean, fds.smoothed_var))
    assert not torch.equal(out, z1)
    fds.eval()
    assert torch.equal(fds(z1, b, 2), z1)


def test_fds_config_checks():
    with pytest.raises(ConfigError, match="start-smooth"):
        FDSConfig(enabled=True, start_update=2, start_smooth=2)
    with pytest.raises(ConfigError, match="even"):
        FDSConfig(enabled=True, ks=4)
    with pytest.raises(ConfigError, match="more than 3 label bins"):
        FDS(4, 3, FDSConfig(enabled=True, ks=7, sigma=1.0))

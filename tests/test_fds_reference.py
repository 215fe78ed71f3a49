"""The vectorised FDS (the library layer, and the stacked one that trains
many configurations at once) against a reference-style FDS that loops over
labels in Python (bench/reference.py, written without the library), over
several epochs of updates and calibrations."""
from __future__ import annotations

import pytest
import torch

from bench.reference import RefFDS
from iqa_cache.imbalance import FDS, FDSConfig
from iqa_cache.stacked import StackedFDS, padded_windows, stacked_smooth
from iqa_cache.imbalance import fds_window, smooth_statistics

N_BINS, DIM, N = 14, 6, 500


def epoch_features(epoch: int, seed: int = 0):
    """Training features of one epoch: the same samples (so the same bins)
    every epoch, drifting as a head would.  Bin 4 is empty and bin 11 holds
    one sample; dimension 2 of bin 7 is constant (zero variance)."""
    g = torch.Generator().manual_seed(seed)
    bins = torch.randint(0, N_BINS, (N,), generator=g)
    bins[bins == 4] = 5
    bins[bins == 11] = 12
    bins[0] = 11
    base = torch.randn(N, DIM, generator=g) + bins[:, None].float() * 0.2
    drift = torch.randn(N, DIM, generator=torch.Generator().manual_seed(100 + epoch)) * 0.3
    z = base * (1 + 0.1 * epoch) + drift
    z[bins == 7, 2] = 1.5
    return z, bins


@pytest.mark.parametrize("kernel,ks,sigma,momentum,start_update,start_smooth", [
    ("gaussian", 5, 2.0, 0.9, 0, 1),
    ("triang", 3, 1.0, 0.5, 0, 2),
    ("laplace", 7, 1.5, 0.9, 1, 3),
])
def test_fds_layer_over_epochs_equals_reference_loop(kernel, ks, sigma, momentum, start_update, start_smooth):
    cfg = FDSConfig(enabled=True, kernel=kernel, ks=ks, sigma=sigma, momentum=momentum,
                    start_update=start_update, start_smooth=start_smooth)
    lib = FDS(DIM, N_BINS, cfg).train()
    ref = RefFDS(DIM, N_BINS, start_update, start_smooth, kernel, ks, sigma, momentum)
    calibrated_epochs = 0
    for epoch in range(6):
        z, bins = epoch_features(epoch)
        batch = torch.arange(0, N, 3)  # a training batch: calibrated with the last update's statistics
        got, want = lib(z[batch], bins[batch], epoch), ref.smooth(z[batch], bins[batch], epoch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        calibrated_epochs += int(not torch.equal(got, z[batch]))
        lib.update(z, bins, epoch)
        ref.update_running_stats(z, bins, epoch)
        torch.testing.assert_close(lib.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lib.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
        if epoch >= start_update:
            torch.testing.assert_close(lib.smoothed_mean, ref.smoothed_mean_last_epoch, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(lib.smoothed_var, ref.smoothed_var_last_epoch, rtol=1e-5, atol=1e-6)
    assert calibrated_epochs == 6 - start_smooth  # calibration really happened from start_smooth on
    # the special cases were exercised: an empty bin, a one-sample bin, a zero-variance dimension
    assert float(lib.running_var[11].abs().sum()) == 0.0 and float(lib.running_var[7, 2]) == 0.0


def test_stacked_fds_equals_one_reference_loop_per_configuration():
    """Three configurations with different windows (sizes 3, 5, 9: zero-padded
    to 9 in one grouped conv) and their own features, in one StackedFDS."""
    windows = [("triang", 3, 1.0), ("gaussian", 5, 2.0), ("laplace", 9, 1.5)]
    cfgs = [FDSConfig(enabled=True, kernel=k, ks=ks, sigma=s) for k, ks, s in windows]
    stacked = StackedFDS(cfgs, N_BINS, DIM, "cpu")
    refs = [RefFDS(DIM, N_BINS, 0, 1, k, ks, s, 0.9) for k, ks, s in windows]
    for epoch in range(4):
        feats = [epoch_features(epoch, seed=0)[0] * (1 + k) + k for k in range(3)]  # bins shared, features not
        bins = epoch_features(epoch, seed=0)[1]
        batch = torch.arange(1, N, 4)
        if stacked.updated and epoch >= stacked.start_smooth:
            got = stacked.calibrate(torch.stack([f[batch] for f in feats]), bins[batch])
        else:
            got = torch.stack([f[batch] for f in feats])
        for k, ref in enumerate(refs):
            torch.testing.assert_close(got[k], ref.smooth(feats[k][batch], bins[batch], epoch), rtol=1e-5,
                                       atol=1e-5)
        count = torch.bincount(bins, minlength=N_BINS).float()
        stacked.fold(slice(0, 2), torch.stack(feats[:2]), bins, count)  # in chunks of configurations
        stacked.fold(slice(2, 3), feats[2][None], bins, count)
        stacked.refresh(count)
        for k, ref in enumerate(refs):
            ref.update_running_stats(feats[k], bins, epoch)
            torch.testing.assert_close(stacked.running_mean[k], ref.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stacked.running_var[k], ref.running_var, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stacked.smoothed_var[k], ref.smoothed_var_last_epoch, rtol=1e-5, atol=1e-6)


def test_zero_padded_windows_smooth_like_their_own_size():
    stats = torch.randn(3, N_BINS, DIM)
    ws = [fds_window("gaussian", 1, 1.0), fds_window("triang", 5, 1.0), fds_window("laplace", 11, 3.0)]
    padded = padded_windows(ws)
    assert padded.shape == (3, 11) and float(padded[0].sum()) == pytest.approx(1.0)
    out = stacked_smooth(stats, padded)
    for k, w in enumerate(ws):
        torch.testing.assert_close(out[k], smooth_statistics(stats[k], w), rtol=1e-5, atol=1e-6)

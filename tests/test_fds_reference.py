"""The vectorised FDS (the library layer, and the stacked one that trains
many configurations at once) against a reference-style FDS that loops over
labels in Python (tests/reference.py, written without the library), over
several epochs of updates and calibrations; the schedule against the
reference's literal timing; empty bins against the reference's filling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iqa_cache.train.imbalance import FDS, FDSConfig, fds_window, smooth_statistics
from iqa_cache.train.stacked import StackedFDS, padded_windows, stacked_smooth
from tests.reference import RefFDS, ref_fill_empty_buckets

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


@pytest.mark.parametrize("empty_bins", ["fill", "keep"])
@pytest.mark.parametrize("kernel,ks,sigma,momentum,start_update,start_smooth", [
    ("gaussian", 5, 2.0, 0.9, 0, 1),
    ("triang", 3, 1.0, 0.5, 0, 2),
    ("laplace", 7, 1.5, 0.9, 1, 3),
])
def test_fds_layer_over_epochs_equals_reference_loop(kernel, ks, sigma, momentum, start_update, start_smooth,
                                                     empty_bins):
    """With the project's schedule (named, not implied): the vectorised layer
    equals the label-by-label loop, empty bin 4 filled (a lone empty bin:
    the reference's mean of its neighbours) or kept."""
    cfg = FDSConfig(enabled=True, kernel=kernel, ks=ks, sigma=sigma, momentum=momentum,
                    start_update=start_update, start_smooth=start_smooth, empty_bins=empty_bins)
    lib = FDS(DIM, N_BINS, cfg).train()
    ref = RefFDS(DIM, N_BINS, start_update, start_smooth, kernel, ks, sigma, momentum, schedule="project",
                 empty_bins=empty_bins)
    calibrated_epochs = 0
    for epoch in range(6):
        z, bins = epoch_features(epoch)
        batch = torch.arange(0, N, 3)  # a training batch: calibrated with the last update's statistics
        got, want = lib(z[batch], bins[batch], epoch), ref.smooth(z[batch], bins[batch], epoch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        calibrated_epochs += int(not torch.equal(got, z[batch]))
        lib.update(z, bins, epoch)
        ref.end_of_epoch(z, bins, epoch)
        torch.testing.assert_close(lib.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lib.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
        if epoch >= start_update:
            torch.testing.assert_close(lib.smoothed_mean, ref.smoothed_mean_last_epoch, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(lib.smoothed_var, ref.smoothed_var_last_epoch, rtol=1e-5, atol=1e-6)
    assert calibrated_epochs == 6 - start_smooth  # calibration really happened from start_smooth on
    # the special cases were exercised: an empty bin, a one-sample bin, a zero-variance dimension
    assert float(lib.running_var[11].abs().sum()) == 0.0 and float(lib.running_var[7, 2]) == 0.0
    if empty_bins == "keep":
        assert float(lib.running_mean[4].abs().sum()) == 0.0 and bool((lib.running_var[4] == 1).all())
    else:
        torch.testing.assert_close(lib.running_mean[4], (lib.running_mean[3] + lib.running_mean[5]) / 2)


def test_stacked_fds_equals_one_reference_loop_per_configuration():
    """Three configurations with different windows (sizes 3, 5, 9: zero-padded
    to 9 in one grouped conv) and their own features, in one StackedFDS."""
    windows = [("triang", 3, 1.0), ("gaussian", 5, 2.0), ("laplace", 9, 1.5)]
    cfgs = [FDSConfig(enabled=True, kernel=k, ks=ks, sigma=s) for k, ks, s in windows]
    stacked = StackedFDS(cfgs, N_BINS, DIM, "cpu")
    refs = [RefFDS(DIM, N_BINS, 0, 1, k, ks, s, 0.9, schedule="project", empty_bins="fill")
            for k, ks, s in windows]
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
            ref.end_of_epoch(feats[k], bins, epoch)
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


# ------------------------------------------------------------- schedule

@pytest.mark.parametrize("start_update,start_smooth", [(0, 1), (1, 3)])
def test_schedule_runs_one_epoch_ahead_of_the_reference_timing(start_update, start_smooth):
    """Pins the chosen schedule against the reference's literal timing
    (``update_last_epoch_stats`` then ``update_running_stats`` after each
    epoch, aliased buffers).  The library calibrates from start_smooth with
    the statistics of the epoch before, raw and smoothed from the same
    update.  The reference first calibrates for real at epoch
    max(start_smooth, start_update + 2) (before, its buffers are still the
    initial ones: the identity), i.e. with the paper's u = 0, s = 1 at epoch
    2, not 1; its smoothed statistics are always those the library used one
    epoch earlier, while its raw ones (the alias) are the library's current
    ones."""
    cfg = FDSConfig(enabled=True, start_update=start_update, start_smooth=start_smooth)
    lib = FDS(DIM, N_BINS, cfg).train()
    ref = RefFDS(DIM, N_BINS, start_update, start_smooth, empty_bins="fill")  # schedule="reference": literal
    first_lib = first_ref = None
    lib_smoothed = {}
    for epoch in range(7):
        z, bins = epoch_features(epoch)
        got, want = lib(z, bins, epoch), ref.smooth(z, bins, epoch)
        if first_lib is None and not torch.equal(got, z):
            first_lib = epoch
        if first_ref is None and not torch.equal(want, z):
            first_ref = epoch
        lib_smoothed[epoch] = lib.smoothed_mean.clone()
        if epoch > start_smooth:
            torch.testing.assert_close(ref.smoothed_mean_last_epoch, lib_smoothed[epoch - 1], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ref.running_mean_last_epoch, lib.mean, rtol=1e-5, atol=1e-6)
        lib.update(z, bins, epoch)
        ref.end_of_epoch(z, bins, epoch)
    assert first_lib == start_smooth
    assert first_ref == max(start_smooth, start_update + 2)  # (0, 1): epoch 2, one after the library


# ----------------------------------------------------------- empty bins

def tail_problem():
    """KonIQ-like training labels in 100 bins of 1 (empty: bins 3 and 7,
    lone, and 90-99, the rare high tail) and features that vary smoothly
    with the label, far from the (0, 1) an empty bin starts with."""
    from .conftest import koniq_like_labels

    y = torch.from_numpy(koniq_like_labels(7058)).float()
    bins = y.floor().clamp(0, 99).long()
    g = torch.Generator().manual_seed(0)
    z = 5.0 + torch.stack([y / 20, torch.sin(y / 15), (y / 50) ** 2], 1) + 0.3 * torch.randn(len(y), 3, generator=g)
    return z, bins


def plain_fill(stats: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The fill rule written plainly: between two non-empty bins, the line
    through them; before the first or after the last, a copy of it."""
    out = stats.copy()
    full = [i for i in range(len(present)) if present[i]]
    for b in range(len(present)):
        if present[b]:
            continue
        lefts, rights = [i for i in full if i < b], [i for i in full if i > b]
        if lefts and rights:
            a, c = lefts[-1], rights[0]
            out[b] = stats[a] + (stats[c] - stats[a]) * (b - a) / (c - a)
        else:
            out[b] = stats[lefts[-1] if lefts else rights[0]]
    return out


def test_empty_tail_bins_are_filled_from_their_neighbours():
    z, bins = tail_problem()
    count = torch.bincount(bins, minlength=100)
    present = (count > 0).numpy()
    assert list(np.flatnonzero(~present)) == [3, 7] + list(range(90, 100))
    fill = FDS(3, 100, FDSConfig(enabled=True, empty_bins="fill"))
    keep = FDS(3, 100, FDSConfig(enabled=True, empty_bins="keep"))
    fill.update(z, bins, 0)
    keep.update(z, bins, 0)
    torch.testing.assert_close(keep.running_mean[present], fill.running_mean[present])  # present bins: same
    # the empty bins against the plain rule, and the tail bins 90-99 copy bin 89
    np.testing.assert_allclose(fill.running_mean.numpy(), plain_fill(keep.running_mean.numpy(), present),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fill.running_var.numpy(), plain_fill(keep.running_var.numpy(), present),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(fill.running_mean[95], fill.running_mean[89])
    # the lone empty bins: exactly the reference's first sweep (mean of the neighbours)
    ref = RefFDS(3, 100, empty_bins="fill")
    ref.end_of_epoch(z, bins, 0)
    torch.testing.assert_close(fill.running_mean[[3, 7]], ref.running_mean[[3, 7]], rtol=1e-6, atol=1e-6)
    # what it is for: the smoothed statistics of the rare tail bins are not dragged towards (0, 1)
    local = torch.stack([z[bins == b].mean(0) for b in range(85, 90)])
    err_fill = (fill.smoothed_mean[85:90] - local).abs().max()
    err_keep = (keep.smoothed_mean[85:90] - local).abs().max()
    assert float(err_fill) < 0.5 and float(err_keep) > 3.0  # bins of 1-5 samples: noisy, but not dragged


def test_fill_is_the_state_the_reference_filling_converges_to():
    """Runs of empty bins (the tail 90-99): the reference refills bin by bin
    from last epoch's neighbours, which converges over epochs to the
    library's fill, its fixed point."""
    z, bins = tail_problem()
    present = (torch.bincount(bins, minlength=100) > 0).numpy()
    lib = FDS(3, 100, FDSConfig(enabled=True))
    lib.update(z, bins, 0)
    m, v = lib.running_mean.numpy().astype(np.float64), lib.running_var.numpy().astype(np.float64)
    m2, v2 = m.copy(), v.copy()
    ref_fill_empty_buckets(m2, v2, present)  # one more reference sweep leaves the fill unchanged
    np.testing.assert_allclose(m2, m, rtol=0, atol=1e-5)
    np.testing.assert_allclose(v2, v, rtol=0, atol=1e-5)
    # and from the reference's start (empty bins at 0 / 1), its sweeps approach it
    m3, v3 = m.copy(), v.copy()
    m3[~present], v3[~present] = 0.0, 1.0
    errs = []
    for sweep in range(600):
        ref_fill_empty_buckets(m3, v3, present)
        errs.append(np.abs(m3 - m).max())
    assert errs[0] > 1.0 and errs[-1] < 1e-2 and all(a >= b - 1e-12 for a, b in zip(errs, errs[1:]))

"""Balanced MSE (BMC, GAI, BNI) against a transcription of the official code
(jiawei-ren/BalancedMSE c6f2f33, imdb-wiki-dir: ``balanaced_mse.py``,
``preprocess_gmm.py``, ``datasets.py``'s ``get_bucket_info``): the losses
with their priors, through the project's :class:`StackLoss`; and each
deliberate deviation (docs/method.md, "Balanced MSE: bmc, gai, bni")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import convolve1d, gaussian_filter1d
from sklearn.mixture import GaussianMixture

from iqa_cache.binning import Bins
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.priors import bni_prior, fit_gmm
from iqa_cache.train.stacked.methods import StackLoss

from .conftest import koniq_like_labels

TOL = dict(rtol=1e-6, atol=1e-6)
SECTION = "docs/method.md#balanced-mse-bmc-gai-bni"


# --------------------------------------------------- the official code, transcribed
# pred and target are [B, 1] there.

def official_bmc(pred, target, noise_var):
    logits = -0.5 * (pred - target.T).pow(2) / noise_var
    return F.cross_entropy(logits, torch.arange(pred.shape[0])) * (2 * noise_var).detach()


def official_gai(pred, target, gmm, noise_var):
    gmm = {k: gmm[k].reshape(1, -1).expand(pred.shape[0], -1) for k in gmm}
    mse = F.mse_loss(pred, target, reduction="none") / 2 / noise_var + 0.5 * noise_var.log()
    sum_var = gmm["variances"] + noise_var
    balancing = -0.5 * sum_var.log() - 0.5 * (pred - gmm["means"]).pow(2) / sum_var + gmm["weights"].log()
    loss = mse + torch.logsumexp(balancing, dim=-1, keepdim=True)
    return (loss * (2 * noise_var).detach()).mean()


def official_bni(pred, target, noise_var, centers, weights):
    mse = F.mse_loss(pred, target, reduction="none") / 2 / noise_var
    n = centers.shape[0]
    balancing = -0.5 * (pred.expand(-1, n) - centers.unsqueeze(0).repeat(pred.shape[0], 1)).pow(2) / noise_var \
        + weights.unsqueeze(0).repeat(pred.shape[0], 1).log()
    loss = mse + torch.logsumexp(balancing, dim=-1, keepdim=True)
    return (loss * (2 * noise_var).detach()).mean()


def official_gmm(labels, k):
    """preprocess_gmm.py: the dict of means, weights, covariances."""
    gmm = GaussianMixture(n_components=k, random_state=0).fit(np.asarray(labels).reshape(-1, 1))
    return {"means": torch.tensor(gmm.means_), "weights": torch.tensor(gmm.weights_),
            "variances": torch.tensor(gmm.covariances_)}


def official_lds_window(ks, sigma):
    half = (ks - 1) // 2
    base = [0.0] * half + [1.0] + [0.0] * half
    return gaussian_filter1d(base, sigma=sigma) / max(gaussian_filter1d(base, sigma=sigma))


def official_buckets(labels, max_target, lds=False, ks=5, sigma=1):
    """get_bucket_info as written (integer buckets, smoothed integer counts)."""
    value_dict = {x: 0 for x in range(max_target)}
    for label in labels:
        if int(label) < max_target:
            value_dict[int(label)] += 1
    centers = np.asarray([k for k in value_dict])
    weights = np.asarray([v for v in value_dict.values()])
    if lds:
        weights = convolve1d(weights, weights=official_lds_window(ks, sigma), mode="constant")
    centers = np.asarray([centers[k] for k, v in enumerate(weights) if v > 0])
    weights = np.asarray([weights[k] for k, v in enumerate(weights) if v > 0])
    return centers, weights / weights.sum()


# ------------------------------------------------------------------- inputs

# integer labels (the official code's own case: ages), with the project's bins of 1
LABELS = {
    "integers 0-4": (lambda rng: rng.choice(5, 300, p=[0.05, 0.1, 0.5, 0.3, 0.05]).astype(np.float64), 4),
    "integer MOS 0-100": (lambda rng: np.round(koniq_like_labels(400, seed=1)), 100),
    "continuous MOS 0-100": (lambda rng: koniq_like_labels(400, seed=2), 100),
}


def batch(labels, seed, b=12):
    g = torch.Generator().manual_seed(seed)
    target = torch.tensor(labels[:b], dtype=torch.float64)  # repeated labels in the batch
    spread = float(labels.std())
    pred = (target + spread * torch.randn(b, generator=g, dtype=torch.float64)).requires_grad_(False)
    return pred, target


def stack_loss(cfg, labels, hi, pred, target):
    """The project's loss (float64) and its gradients in pred and sigma."""
    loss = StackLoss([cfg], labels, Bins(0, hi, 1.0), "cpu")
    for name in ("gai_means", "gai_vars", "gai_logw", "bni_centres", "bni_logw"):
        if hasattr(loss, name):
            setattr(loss, name, getattr(loss, name).double())
    loss.log_sigma = loss.log_sigma.detach().double().requires_grad_(True)
    p = pred.clone().view(1, -1).requires_grad_(True)
    w = torch.ones_like(p)
    got = loss(p, target.view(1, -1), w, torch.zeros(1, len(pred), 1, dtype=torch.float64), None)[0]
    g_pred, g_log_sigma = torch.autograd.grad(got, [p, loss.log_sigma])
    return got, g_pred[0], g_log_sigma[0]


def official(fn, pred, target, sigma, *args):
    """The official loss and its gradients in pred and in log sigma (sigma's chain rule: d/dlog = sigma d/dsigma)."""
    p = pred.clone().view(-1, 1).requires_grad_(True)
    s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    t = target.view(-1, 1)
    want = fn(p, t, *args, s ** 2) if fn is not official_bni else fn(p, t, s ** 2, *args)
    g_pred, g_sigma = torch.autograd.grad(want, [p, s])
    return want, g_pred.view(-1), g_sigma * sigma


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("sigma", [1.0, 10.0])
def test_bmc_equals_the_official_loss(kind, sigma):
    make, hi = LABELS[kind]
    labels = make(np.random.default_rng(0))
    pred, target = batch(labels, 0)
    got = stack_loss(TrainConfig.from_flat({"method": "bmc", "bmse_sigma": sigma}), labels, hi, pred, target)
    want = official(official_bmc, pred, target, sigma)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")  # 8 components on 5 label values
@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("k", [1, 3, 8])
def test_gai_with_the_official_mixture_equals_the_official_loss(kind, k):
    make, hi = LABELS[kind]
    labels = make(np.random.default_rng(1)).astype(np.float32)  # as a cache (and the official loader) holds them
    pred, target = batch(labels, 1)
    sigma = 2.0
    got = stack_loss(TrainConfig.from_flat({"method": "gai", "gai_components": k, "bmse_sigma": sigma}), labels, hi,
                     pred, target)
    want = official(official_gai, pred, target, sigma, official_gmm(labels, k))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32 mixture parameters in the stack


def test_the_mixture_is_scikit_learns():
    labels = koniq_like_labels(2000, seed=3)
    mine = fit_gmm(labels, 8)
    gmm = official_gmm(labels, 8)
    np.testing.assert_allclose(mine.means, gmm["means"].numpy().ravel(), rtol=1e-12)
    np.testing.assert_allclose(mine.variances, gmm["variances"].numpy().ravel(), rtol=1e-12)
    np.testing.assert_allclose(mine.weights, gmm["weights"].numpy().ravel(), rtol=1e-12)


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("lds", [False, True])
def test_bni_with_the_official_buckets_equals_the_official_loss(kind, lds):
    make, hi = LABELS[kind]
    labels = make(np.random.default_rng(2))
    pred, target = batch(labels, 2)
    sigma = 3.0
    cfg = TrainConfig.from_flat({"method": "bni", "bni_lds": lds, "bmse_sigma": sigma})
    got = stack_loss(cfg, labels, hi, pred, target)
    centers, weights = official_buckets(labels, hi + 1, lds=lds, ks=5, sigma=1)
    want = official(official_bni, pred, target, sigma, torch.tensor(centers, dtype=torch.float64),
                    torch.tensor(weights))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bni_truncates_the_smoothed_counts_and_smooths_with_sigma_1():
    """Item 5: the official smoothing keeps integer counts (truncated): on
    these labels 8 buckets, where smoothing in floating point keeps 16."""
    labels = np.array([10.0] * 3 + [20.0] * 1 + [30.0] * 5 + [31.0] * 2)
    bins = Bins(0, 100, 1.0)
    window = official_lds_window(5, 1.0)
    values, shares = bni_prior(labels, bins, window=window)
    centers, weights = official_buckets(labels, 101, lds=True, ks=5, sigma=1)
    np.testing.assert_array_equal(values[shares > 0], centers)
    np.testing.assert_allclose(shares[shares > 0], weights, rtol=1e-12)
    floating = convolve1d(np.bincount(labels.astype(int), minlength=101).astype(float), window, mode="constant")
    assert (shares > 0).sum() == 8 < (floating > 0).sum() == 16
    assert TrainConfig.from_flat({"method": "bni"}).method.bni_sigma == 1.0


# --------------------------------------------------------------- deviations

def test_deviation_sigma_is_learnt_in_log_space_and_stays_positive():
    """The official code learns sigma itself: one Adam step at sigma_lr can
    take a small sigma below 0.  Here log sigma is learnt."""
    labels = np.arange(5.0).repeat(20)
    target = 4.0 + torch.arange(8.0, dtype=torch.float64) / 100
    pred = target.clone()  # perfect predictions: a smaller sigma lowers the loss
    sigma, lr = 0.05, 0.1
    s = torch.nn.Parameter(torch.tensor(sigma, dtype=torch.float64))
    opt = torch.optim.Adam([s], lr=lr)
    official_bmc(pred.view(-1, 1), target.view(-1, 1), s ** 2).backward()
    opt.step()
    assert s.item() < 0  # the official update: sigma negative
    loss = StackLoss([TrainConfig.from_flat({"method": "bmc", "bmse_sigma": sigma})], labels, Bins(0, 4, 1.0), "cpu")
    opt = torch.optim.Adam([loss.log_sigma], lr=lr)
    out = loss(pred.float().view(1, -1), target.float().view(1, -1), torch.ones(1, 8), torch.zeros(1, 8, 1), None)
    loss.log_sigma.grad = torch.autograd.grad(out.sum(), loss.log_sigma)[0]
    opt.step()
    assert 0 < loss.sigma.item() == pytest.approx(sigma * math.exp(-lr), rel=1e-4), SECTION


def test_deviation_bucket_values_follow_the_label_grid_to_hi():
    """The official buckets are range(max_target) (200 for ages: beyond every
    label); here the label grid lo..hi, so a label at hi is its own bucket
    and smoothing stops at the ends (zeros beyond)."""
    labels = np.array([0.0, 2.0, 4.0, 4.0])
    values, shares = bni_prior(labels, Bins(0, 4, 1.0))
    assert values.tolist() == [0, 1, 2, 3, 4] and shares.tolist() == [0.25, 0, 0.25, 0, 0.5]
    centers, _ = official_buckets(labels, 200, lds=True)
    values, shares = bni_prior(labels, Bins(0, 4, 1.0), window=official_lds_window(5, 1.0))
    assert centers.max() == 5 and values.max() == 4, SECTION

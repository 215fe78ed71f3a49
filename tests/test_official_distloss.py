"""Dist Loss against a transcription of the official code (Ngk03/DIR-Dist-Loss
d487e68, agedb-dir: ``loss_utils.py``, ``dist_loss.py`` and the vendored
``fast_soft_sort`` with its PAV isotonic regression): the label density on
its grid, the batch's pseudo-labels, the loss and its gradient through the
project's :class:`StackLoss`; and each deliberate deviation (docs/method.md,
"Dist Loss: dist")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import gaussian_kde

from iqa_cache.binning import Bins
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.priors import batch_counts, label_grid, label_pdf, pseudo_labels
from iqa_cache.train.stacked.methods import StackLoss, dist_term

from .conftest import koniq_like_labels

SECTION = "docs/method.md#dist-loss-dist"


# --------------------------------------------------- the official code, transcribed

def official_label_distribution(labels, bw_method, min_label, max_label, step):
    labels = labels[(labels >= min_label) & (labels <= max_label)]
    kde = gaussian_kde(labels, bw_method=bw_method)
    x = np.arange(min_label, max_label + step, step)
    density = kde(x)
    return density / density.sum()


def official_batch_label_distribution(density, batch_size, region_adjustment=0.5):
    num_density = density * batch_size
    range_res = int(region_adjustment * len(density))
    out = np.zeros_like(num_density)
    forward_cumsum = num_density.cumsum()
    backward_cumsum = num_density[::-1].cumsum()[::-1]
    forward_index = np.searchsorted(forward_cumsum, 1)
    backward_index = len(backward_cumsum) - np.searchsorted(backward_cumsum[::-1], 1) - 1
    out[forward_index] = round(forward_cumsum[forward_index])
    out[forward_index + 1:backward_index] = np.round(num_density[forward_index + 1:backward_index])
    out[backward_index] = round(backward_cumsum[backward_index])
    res_sum = batch_size - int(out.sum())
    maximum_index = out.argmax()
    if abs(res_sum) <= range_res:
        left = maximum_index - abs(res_sum) // 2
        out[left:left + abs(res_sum)] += np.sign(res_sum)
    else:
        iters, remainder = res_sum // range_res, res_sum % range_res
        left = maximum_index - range_res // 2
        out[left:left + range_res] += iters * np.sign(res_sum)
        out[maximum_index] += remainder
    return out


def official_theoretical_labels(density, batch_size, min_label, step):
    cumulative = np.cumsum(official_batch_label_distribution(density, batch_size)).astype(int)
    labels = np.zeros(batch_size)
    current = min_label
    for i in range(len(density)):
        start = 0 if i == 0 else cumulative[i - 1]
        labels[start:cumulative[i]] = current
        current += step
    return labels


def official_pav(y):
    """fast_soft_sort's isotonic_l2: argmin over v_1 >= ... >= v_n of ||v - y||^2, by PAV."""
    n = y.shape[0]
    target, c, sums, sol = np.arange(n), np.ones(n), y.copy(), y.copy()
    i = 0
    while i < n:
        k = target[i] + 1
        if k == n:
            break
        if sol[i] > sol[k]:
            i = k
            continue
        sum_y, sum_c = sums[i], c[i]
        while True:
            prev_y = sol[k]
            sum_y += sums[k]
            sum_c += c[k]
            k = target[k] + 1
            if k == n or prev_y > sol[k]:
                sol[i], sums[i], c[i] = sum_y / sum_c, sum_y, sum_c
                target[i], target[k - 1] = k - 1, i
                if i > 0:
                    i = target[i - 1]
                break
    i = 0
    while i < n:
        k = target[i] + 1
        sol[i + 1:k] = sol[i]
        i = k
    return sol


def official_partition(solution, eps=1e-9):
    sizes = [1]
    for i in range(1, len(solution)):
        if abs(solution[i] - solution[i - 1]) > eps:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


class OfficialSoftSort(torch.autograd.Function):
    """numpy_ops.SoftSort, ASCENDING, l2, through pytorch_ops' wrapper (one row)."""

    @staticmethod
    def forward(ctx, values, strength):
        theta = values.detach().numpy()[0]
        n = len(theta)
        w = np.arange(1, n + 1)[::-1] / strength
        v = -theta
        perm = np.argsort(v)[::-1]
        s = v[perm]
        sol = official_pav(w - s)
        ctx.perm, ctx.sol = perm, sol
        return torch.from_numpy(-(w - sol)).view(1, -1)

    @staticmethod
    def backward(ctx, grad):
        g = grad.numpy()[0]
        out, start = np.zeros_like(ctx.sol), 0
        for size in official_partition(ctx.sol):
            out[start:start + size] = np.sum(g[start:start + size]) / size
            start += size
        inv = np.zeros(len(ctx.perm), dtype=int)
        inv[ctx.perm] = np.arange(len(ctx.perm))
        return torch.from_numpy(out[inv]).view(1, -1), None


def official_dist_loss(inp, tar, theoretical, loss_weight=1.0, weights=None, strength=0.1):
    """DistLoss.forward with loss_fn L1 (the official default), size_average."""
    l1 = nn.L1Loss(reduction="none")
    sorted_inp = OfficialSoftSort.apply(inp.reshape(1, -1), strength).reshape(-1, 1)
    dist = l1(sorted_inp, theoretical)
    if weights is not None:
        dist = dist * weights.expand_as(dist)
    plain = l1(inp, tar)
    if weights is not None:
        plain = plain * weights.expand_as(plain)
    return (loss_weight * dist + plain).mean()


# ------------------------------------------------------------------- inputs

LABELS = {  # (labels, lo, hi, step): continuous and discrete, ties everywhere in the discrete ones
    "continuous MOS 0-100": (lambda rng: koniq_like_labels(3000, seed=4), 0, 100, 1.0),
    "integers 0-4": (lambda rng: rng.choice(5, 800, p=[0.05, 0.15, 0.45, 0.3, 0.05]).astype(np.float64), 0, 4, 1.0),
    "0-5 in steps of 0.2": (lambda rng: np.clip(np.round(rng.normal(3, 0.8, 2000) * 5) / 5, 0, 5), 0, 5, 0.2),
    "0-1 in steps of 0.01": (lambda rng: np.clip(np.round(rng.beta(5, 3, 2000) * 100) / 100, 0, 1), 0, 1, 0.01),
}


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("n", [16, 64, 256])
def test_density_and_pseudo_labels_equal_the_official_ones(kind, n):
    make, lo, hi, step = LABELS[kind]
    labels = make(np.random.default_rng(0))
    bins = Bins(lo, hi, step)
    density = official_label_distribution(labels, 0.5, lo, hi, step)
    pdf = label_pdf(labels, bins, 0.5)
    np.testing.assert_allclose(pdf, density, rtol=1e-9, atol=1e-12)
    want = official_theoretical_labels(density, n, lo, step)
    got = pseudo_labels(pdf, label_grid(bins), n)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)  # on the grid lo..hi, not on bin centres


@pytest.mark.parametrize("kind", list(LABELS))
def test_loss_and_gradient_equal_the_official_soft_sorted_loss(kind):
    make, lo, hi, step = LABELS[kind]
    labels = make(np.random.default_rng(1)).astype(np.float32)
    bins = Bins(lo, hi, step)
    b = 24
    g = torch.Generator().manual_seed(1)
    target = torch.from_numpy(labels[:b]).double()
    # predictions spread over the scale, neighbours less than 1/0.1 = 10 apart once sorted
    pred = (target + 0.2 * (hi - lo) * torch.randn(b, generator=g, dtype=torch.float64))
    for weight in (1.0, 0.5):
        loss = StackLoss([TrainConfig.from_flat({"method": "dist", "dist_weight": weight})], labels, bins, "cpu")
        p = pred.clone().view(1, -1).requires_grad_(True)
        got = loss(p, target.view(1, -1), torch.ones(1, b, dtype=torch.float64), torch.zeros(1, b, 1), None)[0]
        (g_got,) = torch.autograd.grad(got, p)
        theoretical = official_theoretical_labels(official_label_distribution(labels, 0.5, lo, hi, step), b, lo,
                                                  step)
        q = pred.clone().view(-1, 1).requires_grad_(True)
        want = official_dist_loss(q, target.view(-1, 1), torch.from_numpy(theoretical).view(-1, 1), weight)
        (g_want,) = torch.autograd.grad(want, q)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_got[0], g_want.view(-1), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------- deviations

def hard_and_soft(pred, theoretical):
    p = pred.clone().view(1, -1).requires_grad_(True)
    hard = dist_term(p, theoretical.view(1, -1), "l1")[0]
    q = pred.clone().view(1, -1).requires_grad_(True)
    soft = (OfficialSoftSort.apply(q, 0.1) - theoretical.view(1, -1)).abs().mean()
    return hard, soft, torch.autograd.grad(hard, p)[0], torch.autograd.grad(soft, q)[0]


def test_deviation_the_hard_sort_equals_the_soft_sort_only_for_gaps_below_10():
    """The project sorts with torch.sort.  The official soft sort (strength
    0.1) equals it while sorted neighbours are less than 10 apart; at a gap
    of exactly 10 their gradients are averaged; beyond, values differ."""
    theoretical = torch.tensor([0.0, 20.0, 25.0, 60.0], dtype=torch.float64)
    below = torch.tensor([30.0, 5.0, 14.9, 22.0], dtype=torch.float64)  # sorted gaps 9.9, 7.1, 8
    hard, soft, gh, gs = hard_and_soft(below, theoretical)
    torch.testing.assert_close(hard, soft)
    torch.testing.assert_close(gh, gs)
    at = torch.tensor([30.0, 5.0, 15.0, 22.0], dtype=torch.float64)  # a gap of exactly 10
    hard, soft, gh, gs = hard_and_soft(at, theoretical)
    torch.testing.assert_close(hard, soft)
    assert not torch.allclose(gh, gs), SECTION
    above = torch.tensor([30.0, 5.0, 40.0, 22.0], dtype=torch.float64)  # a gap of 17
    hard, soft, gh, gs = hard_and_soft(above, theoretical)
    assert abs(hard.item() - soft.item()) > 0.1, SECTION


def test_deviation_a_residual_window_past_the_end_is_moved_inside():
    """Mode at the end of the grid: the official slice starts below 0, is
    empty, and the batch's counts miss the batch size (the official
    pseudo-labels then end in zeros); here the window is moved inside."""
    density = np.array([0.38, 0.22, 0.14, 0.05, 0.21])
    want = official_batch_label_distribution(density, 12)
    got = batch_counts(density, 12)
    assert want.sum() == 14 and got.sum() == 12, SECTION
    assert (np.abs(got - want) <= 1).all()


def test_deviation_loss_weights_multiply_the_plain_term_only():
    """The official code multiplies the distribution term too by the
    sample-order weights, which do not line up with the sorted slots."""
    labels = koniq_like_labels(500, seed=5).astype(np.float32)
    bins = Bins(0, 100, 1.0)
    b = 16
    target = torch.from_numpy(labels[:b]).double()
    pred = target + 3 * torch.randn(b, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = torch.linspace(0.5, 1.5, b, dtype=torch.float64)
    loss = StackLoss([TrainConfig.from_flat({"method": "dist"})], labels, bins, "cpu")
    got = loss(pred.view(1, -1), target.view(1, -1), w.view(1, -1), torch.zeros(1, b, 1), None)[0]
    theoretical = torch.from_numpy(official_theoretical_labels(official_label_distribution(labels, 0.5, 0, 100, 1.0),
                                                               b, 0, 1.0)).view(-1, 1)
    plain_only = official_dist_loss(pred.view(-1, 1), target.view(-1, 1), theoretical) \
        - (((pred - target).abs() * (1 - w)).mean())
    both = official_dist_loss(pred.view(-1, 1), target.view(-1, 1), theoretical, weights=w.view(-1, 1))
    torch.testing.assert_close(got, plain_only, rtol=1e-6, atol=1e-6)
    assert abs(float(got) - float(both)) > 1e-3, SECTION

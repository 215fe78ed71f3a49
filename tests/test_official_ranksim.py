"""RankSim against a transcription of the official code
(BorealisAI/ranksim-imbalanced-regression 9e1c862, ``ranking.py`` and
``ranksim.py``): its ``torch.unique`` rows, its random pick (made
injectable), its ``argsort`` ranks; and each deliberate deviation
(docs/method.md, "RankSim: ranksim")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iqa_cache.binning import Bins
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.stacked.methods import StackLoss, pick_rows, ranksim_loss

TOL = dict(rtol=1e-6, atol=1e-6, check_dtype=False)  # the official ranks are float32 (``.float()``)
SECTION = "docs/method.md#ranksim-ranksim"


# --------------------------------------------------- the official code, transcribed

def official_rank(seq):
    return torch.argsort(torch.argsort(seq).flip(1))  # torch.argsort: not stable


def official_rank_normalised(seq):
    return (official_rank(seq) + 1).float() / seq.size()[1]


class OfficialTrueRanker(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sequence, lambda_val):
        rank = official_rank_normalised(sequence)
        ctx.lambda_val = lambda_val
        ctx.save_for_backward(sequence, rank)
        return rank

    @staticmethod
    def backward(ctx, grad_output):
        sequence, rank = ctx.saved_tensors
        rank_prime = official_rank_normalised(sequence + ctx.lambda_val * grad_output)
        return -(rank - rank_prime) / (ctx.lambda_val + 1e-8), None


def official_regularizer(features, targets, lambda_val, choice):
    """batchwise_ranking_regularizer as written; ``choice`` stands for
    ``random.choice`` over the indices of one label."""
    loss = 0
    unique = torch.unique(targets)
    if len(unique) < len(targets):
        picked = [choice((targets == t).nonzero()[:, 0]).item() for t in unique]
        x, y = features[picked], targets[picked]
    else:
        x, y = features, targets
    xn = F.normalize(x.view(x.size(0), -1))
    xxt = torch.matmul(xn, xn.permute(1, 0))
    for i in range(len(y)):
        label_ranks = official_rank_normalised(-torch.abs(y[i] - y).transpose(0, 1))
        feature_ranks = OfficialTrueRanker.apply(xxt[i].unsqueeze(dim=0), lambda_val)
        loss += F.mse_loss(feature_ranks, label_ranks)
    return loss


def pick_by(keys):
    """The official ``random.choice`` made injectable: the index with the smallest key."""
    return lambda idx: idx[torch.argmin(keys[idx])]


# ------------------------------------------------------------------- inputs

LABEL_SETS = {
    # repeated discrete labels with ties in distance (3 and 1 are both 1 from 2)
    "integers 0-4": lambda g, b: torch.randint(0, 5, (b,), generator=g).double(),
    "0-5 in steps of 0.2": lambda g, b: torch.randint(0, 26, (b,), generator=g).double() * 0.2,
    "MOS 1-5, some repeated": lambda g, b: torch.round(1 + 4 * torch.rand(b, generator=g, dtype=torch.float64),
                                                       decimals=1),
    "continuous 0-100, all distinct": lambda g, b: 100 * torch.rand(b, generator=g, dtype=torch.float64),
}


def inputs(kind: str, seed: int, k: int = 3, b: int = 10, h: int = 5):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(k, b, h, generator=g, dtype=torch.float64) + 0.3).requires_grad_(True)
    target = torch.stack([LABEL_SETS[kind](g, b) for _ in range(k)])
    keys = torch.rand(k, b, generator=g, dtype=torch.float64)
    return z, target, keys


@pytest.mark.parametrize("kind", list(LABEL_SETS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_equal_the_official_regularizer(kind, seed):
    z, target, keys = inputs(kind, seed)
    lam = torch.tensor([2.0, 1.0, 5.0], dtype=torch.float64)
    got = ranksim_loss(z, target, target, lam, keys)
    (g,) = torch.autograd.grad(got.sum(), z)
    for k in range(3):
        zk = z.detach()[k].clone().requires_grad_(True)
        want = official_regularizer(zk, target[k].view(-1, 1), float(lam[k]), pick_by(keys[k]))
        torch.testing.assert_close(got[k], want, **TOL)
        torch.testing.assert_close(g[k], torch.autograd.grad(want, zk)[0], **TOL)
    assert g.abs().sum() > 0


def test_kept_rows_are_in_ascending_label_order_which_breaks_distance_ties_as_officially():
    """Item 1: 3 and 5 are equally far from 4; the kept rows' order decides
    which ranks first.  The rows in batch order (the old behaviour) give
    another loss."""
    target = torch.tensor([[5.0, 4.0, 3.0, 4.0, 1.0, 5.0, 2.0, 3.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 8, 4, generator=g, dtype=torch.float64)
    keys = torch.rand(1, 8, generator=g, dtype=torch.float64)
    perm, sel = pick_rows(target, keys)
    kept = target[0, perm[0]][sel[0]]
    assert kept.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    got = ranksim_loss(z, target, target, torch.tensor([2.0]), keys)
    want = official_regularizer(z[0], target[0].view(-1, 1), 2.0, pick_by(keys[0]))
    torch.testing.assert_close(got[0], want, **TOL)
    rows = perm[0][sel[0]]
    batch_order = rows.sort().values  # the same rows, kept in batch order
    unsorted = official_regularizer(z[0, batch_order], target[0, batch_order].view(-1, 1), 2.0, None)
    assert abs(float(unsorted) - float(want)) > 1e-3


def test_distinct_labels_keep_every_row_in_batch_order():
    target = torch.tensor([[3.0, 1.0, 2.0]])
    perm, sel = pick_rows(target, torch.rand(1, 3))
    assert perm.tolist() == [[0, 1, 2]] and sel.all()


def test_the_pick_is_drawn_anew_at_every_step_even_with_one_full_batch():
    """Item 2: the same batch (one full batch, never reshuffled) keeps other
    members of a repeated label at another step; a configuration draws the
    same picks alone as in a stack."""
    labels = np.repeat(np.arange(5.0), 4).astype(np.float32)  # 20 rows, each label 4 times
    cfg = TrainConfig.from_flat({"method": "ranksim", "seed": 7})
    other = TrainConfig.from_flat({"method": "ranksim", "seed": 8})
    target = torch.from_numpy(labels).view(1, -1)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 20, 6, generator=g)
    pred, w = torch.zeros(1, 20), torch.ones(1, 20)

    def steps(cfgs, n=4):
        loss = StackLoss(cfgs, labels, Bins(0, 4, 1.0), "cpu")
        k = len(cfgs)
        return [loss(pred.expand(k, -1), target.expand(k, -1), w.expand(k, -1), z.expand(k, -1, -1), None)[0].item()
                for _ in range(n)]

    alone = steps([cfg])
    assert len(set(alone)) > 1  # another pick, another loss
    assert steps([cfg, other]) == pytest.approx(alone, abs=1e-6)  # its own stream, in any stack
    assert steps([cfg]) == pytest.approx(alone, abs=1e-6)  # reproducible from the seed


# --------------------------------------------------------------- deviations

def test_deviation_ranksim_rows_bin_keeps_one_row_per_label_bin():
    """``--ranksim-rows bin`` (not the default): one row per label bin, so
    continuous labels are subsampled; the official code keeps one per
    distinct label, here every row."""
    g = torch.Generator().manual_seed(5)
    target = 100 * torch.rand(1, 12, generator=g, dtype=torch.float64)
    z = torch.randn(1, 12, 4, generator=g, dtype=torch.float64)
    keys = torch.rand(1, 12, generator=g, dtype=torch.float64)
    bins = (target // 25).to(target.dtype)
    _, sel_label = pick_rows(target, keys)
    _, sel_bin = pick_rows(bins, keys)
    assert int(sel_label.sum()) == 12 and int(sel_bin.sum()) == len(set(bins[0].tolist())) < 12
    official = official_regularizer(z[0], target[0].view(-1, 1), 2.0, pick_by(keys[0]))
    torch.testing.assert_close(ranksim_loss(z, target, target, torch.tensor([2.0]), keys)[0], official, **TOL)
    by_bin = ranksim_loss(z, target, bins, torch.tensor([2.0]), keys)[0]
    assert abs(float(by_bin) - float(official)) > 1e-3, SECTION


def test_deviation_ties_among_more_than_16_entries_rank_by_position_not_as_the_unstable_sort():
    """Ties rank by position (a stable sort).  The official unstable
    ``argsort`` does the same on the CPU up to 16 entries, and not beyond
    (on a GPU its order is the GPU sort's): there the two differ."""
    target = torch.arange(20, dtype=torch.float64).view(1, -1)
    g = torch.Generator().manual_seed(6)
    z = torch.randn(1, 20, 4, generator=g, dtype=torch.float64)
    keys = torch.rand(1, 20, generator=g, dtype=torch.float64)
    got = ranksim_loss(z, target, target, torch.tensor([2.0]), keys)[0]
    official = official_regularizer(z[0], target[0].view(-1, 1), 2.0, None)
    assert abs(float(got) - float(official)) > 1e-3, SECTION
    small = target[:, :16]
    got = ranksim_loss(z[:, :16], small, small, torch.tensor([2.0]), keys[:, :16])[0]
    torch.testing.assert_close(got, official_regularizer(z[0, :16], small[0].view(-1, 1), 2.0, None), **TOL)

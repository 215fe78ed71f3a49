"""The imbalance methods' losses with a configuration axis, and
:class:`StackLoss`, which gives each configuration of a stack its method's
loss (a stack may mix methods: each method's terms are computed for its
rows only).

Shapes: predictions and targets ``[K, B]``, hidden features ``[K, B, H]``,
per-configuration constants ``[K]`` or ``[K, M]``.  Each function returns
the per-configuration loss ``[K]``; ``tests/reference.py`` holds a literal
loop over the official formulas that each is tested against.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...binning import Bins
from ..config import TrainConfig
from ..priors import bni_prior, fit_gmm, kernel_of, label_grid, label_pdf, pseudo_labels
from .losses import loss_terms

# ---------------------------------------------------------- Balanced MSE


def bmc_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """BMC: cross-entropy of each prediction against the batch's targets,
    logits ``-(pred_i - target_j)^2 / (2 var)``, the true target ``j = i``;
    rescaled by the detached ``2 var``."""
    var = noise_var.view(-1, 1, 1)
    logits = -(pred.unsqueeze(2) - target.unsqueeze(1)) ** 2 / (2 * var)  # [K, B, B]
    ce = (torch.logsumexp(logits, dim=2) - logits.diagonal(dim1=1, dim2=2)).mean(dim=1)
    return ce * (2 * noise_var).detach()


def gai_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor, means: torch.Tensor,
             variances: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """GAI: the Gaussian NLL of the target plus the log of the prediction's
    likelihood under the label mixture convolved with the noise."""
    var = noise_var.view(-1, 1)
    mse = (pred - target) ** 2 / 2 / var + 0.5 * torch.log(var)
    total = variances.unsqueeze(1) + var.unsqueeze(2)  # [K, 1, M]
    terms = -0.5 * torch.log(total) - 0.5 * (pred.unsqueeze(2) - means.unsqueeze(1)) ** 2 / total \
        + log_weights.unsqueeze(1)
    return (mse + torch.logsumexp(terms, dim=2)).mean(dim=1) * (2 * noise_var).detach()


def bni_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor, centres: torch.Tensor,
             log_weights: torch.Tensor) -> torch.Tensor:
    """BNI: the Gaussian NLL of the target plus the log of the prediction's
    likelihood under the label histogram (bucket centres) with the noise."""
    var = noise_var.view(-1, 1)
    mse = (pred - target) ** 2 / 2 / var
    terms = -0.5 * (pred.unsqueeze(2) - centres.unsqueeze(1)) ** 2 / var.unsqueeze(2) + log_weights.unsqueeze(1)
    return (mse + torch.logsumexp(terms, dim=2)).mean(dim=1) * (2 * noise_var).detach()


# ------------------------------------------------------------- Dist Loss

def dist_term(pred: torch.Tensor, pseudo: torch.Tensor, kind: str) -> torch.Tensor:
    """The distribution term: the batch's predictions sorted (a hard sort:
    the gradient flows to each prediction through its sorted slot) against
    the ascending pseudo-labels ``pseudo`` [K, B], by the loss ``kind``."""
    return loss_terms(torch.sort(pred, dim=1).values, pseudo, kind).mean(dim=1)


# --------------------------------------------------------------- RankSim

def pick_rows(group: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RankSim's rows, as the official ``batchwise_ranking_regularizer``
    picks them, per configuration: when ``group`` [K, B] (the labels, or
    their bins) repeats, one row per distinct value, the row with the
    smallest ``keys`` [K, B] (uniform random numbers: a uniformly random
    member, as ``random.choice``), in ascending order of the value (as
    ``torch.unique``); when it does not repeat, every row in batch order.
    Returns the order ``perm`` [K, B] to gather the rows in and the mask of
    the kept ones ``sel`` [K, B] (in that order)."""
    by_key = torch.argsort(keys, dim=1)
    order = by_key.gather(1, torch.argsort(group.gather(1, by_key), dim=1, stable=True))
    ordered = group.gather(1, order)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    repeats = ~first.all(dim=1, keepdim=True)
    batch_order = torch.arange(group.shape[1], device=group.device).expand_as(order)
    return torch.where(repeats, order, batch_order), first | ~repeats


def normalised_rank(seq: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis, largest first, as ``(rank + 1) / n`` (``n``
    [K] the selected entries per configuration; unselected entries hold
    -inf and rank last).  Ties rank by position (a stable ascending sort,
    flipped: of two equal entries the later one ranks first), as the
    official unstable ``argsort`` does on the CPU for up to 16 entries
    (docs/method.md, RankSim)."""
    order = torch.argsort(seq, dim=-1, stable=True).flip(-1)
    rank = torch.argsort(order, dim=-1)
    return (rank + 1).to(seq.dtype) / n.view(-1, 1, 1).to(seq.dtype)


class BlackboxRanker(torch.autograd.Function):
    """Ranks forward; backward by the blackbox-differentiation rule of
    Vlastelica et al. as RankSim's ``TrueRanker``: the rank of the input
    moved by ``lambda`` times the incoming gradient, differenced."""

    @staticmethod
    def forward(ctx, seq: torch.Tensor, lam: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        rank = normalised_rank(seq, n)
        ctx.save_for_backward(seq, rank, lam, n)
        return rank

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        seq, rank, lam, n = ctx.saved_tensors
        lam = lam.view(-1, 1, 1).to(seq.dtype)
        moved = normalised_rank(seq + lam * grad, n)
        return -(rank - moved) / (lam + 1e-8), None, None


def ranksim_loss(z: torch.Tensor, target: torch.Tensor, group: torch.Tensor, lam: torch.Tensor,
                 keys: torch.Tensor) -> torch.Tensor:
    """RankSim: with the rows :func:`pick_rows` keeps (one per distinct
    ``group`` value, picked by ``keys``), for every anchor the squared
    difference between the ranks of its feature similarities (cosine,
    through the blackbox ranker) and of its label similarities ``-|y_i -
    y_j|``, averaged over the rows and summed over the anchors."""
    perm, sel = pick_rows(group, keys)
    if bool(sel.all()):  # no batch repeats a value (continuous labels): every row, in batch order
        return ranksim_kept(z, target, sel, lam)
    return ranksim_kept(z.gather(1, perm.unsqueeze(2).expand_as(z)), target.gather(1, perm), sel, lam)


def ranksim_kept(z: torch.Tensor, target: torch.Tensor, sel: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The RankSim regulariser over the rows ``sel`` [K, B] (the others are
    masked out), in the rows' order (which breaks ties)."""
    n = sel.sum(dim=1)
    pair = sel.unsqueeze(1) & sel.unsqueeze(2)
    col = sel.unsqueeze(1).expand_as(pair)
    zn = F.normalize(z, dim=2)
    sim = torch.where(col, zn @ zn.transpose(1, 2), -math.inf)
    lab = torch.where(col, -(target.unsqueeze(2) - target.unsqueeze(1)).abs(), -math.inf)
    feature_ranks = BlackboxRanker.apply(sim, lam, n)
    label_ranks = normalised_rank(lab, n)
    sq = torch.where(pair, (feature_ranks - label_ranks) ** 2, 0.0)
    return sq.sum(dim=(1, 2)) / n.to(z.dtype)


# ------------------------------------------------------------ the stack

def ranksim_seed(seed: int) -> int:
    """The seed of a configuration's RankSim pick: its own stream, apart
    from the one that shuffles its rows."""
    return int(np.random.SeedSequence([int(seed), 29]).generate_state(1)[0])


class StackLoss:
    """Each configuration's training loss: its method's loss (Balanced MSE),
    or the plain per-sample loss with its loss weights plus its method's
    terms (Dist Loss, RankSim), computed for the rows of each method only.

    ``log_sigma`` [K] is the log of the Balanced MSE noise sigma of every
    configuration (a leaf tensor trained by the optimiser, so sigma stays
    positive; rows of other methods never get a gradient), ``sigma_learnt``
    [K] which of them learn.  RankSim draws its random pick per step from
    one generator per configuration (seeded by the configuration's seed),
    so a configuration trains the same in any stack."""

    def __init__(self, cfgs: Sequence[TrainConfig], labels: np.ndarray, bins: Bins, device: str):
        self.kind = cfgs[0].loss
        self.k = len(cfgs)
        names = [c.method.name for c in cfgs]

        def rows(*methods: str) -> torch.Tensor | None:
            idx = [i for i, m in enumerate(names) if m in methods]
            return torch.tensor(idx, device=device) if idx else None

        def table(values: list, pad: float) -> torch.Tensor:
            width = max(len(v) for v in values)
            out = np.full((len(values), width), pad)
            for i, v in enumerate(values):
                out[i, :len(v)] = v
            return torch.tensor(out, dtype=torch.float32, device=device)

        sigmas = [c.resolved((bins.lo, bins.hi)).method.bmse_sigma for c in cfgs]  # None: from the label range
        self.log_sigma = torch.tensor([math.log(s) for s in sigmas], device=device, requires_grad=True)
        self.sigma_learnt = torch.tensor([c.method.bmse and not c.method.bmse_fix_sigma for c in cfgs],
                                         device=device)
        self.bmc, self.gai, self.bni = rows("bmc"), rows("gai"), rows("bni")
        self.dist, self.ranksim = rows("dist"), rows("ranksim")
        self.bmse = any(c.method.bmse for c in cfgs)
        if self.gai is not None:
            fits = {n: fit_gmm(labels, n) for n in {cfgs[i].method.gai_components for i in self.gai.tolist()}}
            mix = [fits[cfgs[i].method.gai_components] for i in self.gai.tolist()]
            self.gai_means = table([m.means for m in mix], 0.0)
            self.gai_vars = table([m.variances for m in mix], 1.0)
            self.gai_logw = table([np.log(m.weights) for m in mix], -math.inf)
        if self.bni is not None:
            priors = [bni_prior(labels, bins, window=kernel_of(cfgs[i]) if cfgs[i].method.bni_lds else None)
                      for i in self.bni.tolist()]
            self.bni_centres = table([p[0] for p in priors], 0.0)
            with np.errstate(divide="ignore"):
                self.bni_logw = table([np.log(p[1]) for p in priors], -math.inf)
        if self.dist is not None:
            self._values = label_grid(bins)
            self._pdfs = [label_pdf(labels, bins, cfgs[i].method.dist_bw) for i in self.dist.tolist()]
            self._pseudo: dict[int, torch.Tensor] = {}
            self.dist_weight = torch.tensor([cfgs[i].method.dist_weight for i in self.dist.tolist()], device=device)
        if self.ranksim is not None:
            self.gamma = torch.tensor([cfgs[i].method.ranksim_gamma for i in self.ranksim.tolist()], device=device)
            self.lam = torch.tensor([cfgs[i].method.ranksim_lambda for i in self.ranksim.tolist()], device=device)
            self.by_bin = torch.tensor([cfgs[i].method.ranksim_rows == "bin" for i in self.ranksim.tolist()],
                                       device=device)
            self._pickers = [torch.Generator(device=device).manual_seed(ranksim_seed(cfgs[i].seed))
                             for i in self.ranksim.tolist()]

    @property
    def needs_bins(self) -> bool:
        """RankSim with ``ranksim_rows`` bin takes one row per label bin: the
        batches carry their bins."""
        return self.ranksim is not None and bool(self.by_bin.any())

    @property
    def sigma(self) -> torch.Tensor:
        """The noise sigmas [K] (detached)."""
        return self.log_sigma.detach().exp()

    def pseudo(self, n: int) -> torch.Tensor:
        """The Dist Loss pseudo-labels of a batch of ``n`` rows, per dist row."""
        if n not in self._pseudo:
            self._pseudo[n] = torch.tensor(np.stack([pseudo_labels(p, self._values, n) for p in self._pdfs]),
                                           dtype=torch.float32, device=self.dist.device)
        return self._pseudo[n]

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                 z: torch.Tensor, bins: torch.Tensor | None) -> torch.Tensor:
        loss = (loss_terms(pred, target, self.kind) * weights).mean(dim=-1)
        var = torch.exp(2 * self.log_sigma)
        if self.bmc is not None:
            r = self.bmc
            loss = loss.index_copy(0, r, bmc_loss(pred[r], target[r], var[r]))
        if self.gai is not None:
            r = self.gai
            loss = loss.index_copy(0, r, gai_loss(pred[r], target[r], var[r], self.gai_means, self.gai_vars,
                                                  self.gai_logw))
        if self.bni is not None:
            r = self.bni
            loss = loss.index_copy(0, r, bni_loss(pred[r], target[r], var[r], self.bni_centres, self.bni_logw))
        if self.dist is not None:
            r = self.dist
            extra = self.dist_weight * dist_term(pred[r], self.pseudo(pred.shape[1]), self.kind)
            loss = loss.index_add(0, r, extra)
        if self.ranksim is not None:
            r = self.ranksim
            group = target[r] if bins is None else torch.where(self.by_bin.unsqueeze(1), bins[r].to(target.dtype),
                                                                 target[r])
            keys = torch.stack([torch.rand(target.shape[1], generator=g, device=target.device)
                                for g in self._pickers])
            loss = loss.index_add(0, r, self.gamma * ranksim_loss(z[r], target[r], group, self.lam, keys))
        return loss

    def sigma_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The log noise sigma's gradient with the fixed ones' zeroed."""
        return torch.where(self.sigma_learnt, grad, torch.zeros_like(grad))

"""The references the library is compared with (tests and benchmarks).

First, a reference-style implementation of the head, LDS and FDS: benchmark
variant (a), and the independent per-label FDS that the tests compare the
library with.

It follows the *structure* of the public DIR code (Yang et al. 2021,
github YyzHarry/imbalanced-regression): a ``Dataset`` and ``DataLoader`` over
the features (batch 256), an FDS layer that loops in Python over the labels
present in each batch (``torch.unique`` + boolean masks, per-bin
``calibrate_mean_var``), running statistics updated once per epoch from a
second pass over a ``DataLoader`` whose features are gathered row by row into
a list, and validation by another ``DataLoader`` pass.  Its FDS follows the
reference's *timing* literally by default (``RefFDS(schedule="reference")``:
the aliased buffers and the first effective calibration one epoch after
start_smooth); ``schedule="project"`` is this project's deliberate deviation
(copies of the last update's statistics, used from start_smooth on), named
as such.  Labels are binned first (DESIGN §6.3) and dropout, when used, acts
after FDS as in the reference.

None of that uses ``iqa_cache``: it is a second, plain implementation.

Last, :func:`train_head_simple`: the library's own training (its head,
configs, bins and result packaging) as one plain loop, the reference that
the stacked engine of :mod:`iqa_cache.train.stacked` must match.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import convolve1d, gaussian_filter1d
from scipy.signal.windows import triang
from torch import nn
from torch.utils.data import DataLoader, Dataset

# for the plain loop only (the last section)
from iqa_cache.cache import CacheData
from iqa_cache.device import resolve_device
from iqa_cache.errors import TrainingDiverged
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.fit import predict
from iqa_cache.train.head import ResidualMLPHead
from iqa_cache.train.results import (
    TrainResult,
    diverged_message,
    never_finite_message,
    nonfinite_predictions_message,
    package_result,
)
from iqa_cache.train.stacked import check_data, get_lr, loss_terms

# ----------------------------------------------------------------- windows

def ref_kernel_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
    """The reference ``get_lds_kernel_window`` (peak 1)."""
    half_ks = (ks - 1) // 2
    if kernel == "gaussian":
        base = [0.0] * half_ks + [1.0] + [0.0] * half_ks
        w = gaussian_filter1d(base, sigma=sigma)
        return w / max(w)
    if kernel == "triang":
        return triang(ks)
    w = np.array([math.exp(-abs(x) / sigma) / (2.0 * sigma) for x in range(-half_ks, half_ks + 1)])
    return w / max(w)


def ref_bin(labels, lo: float, hi: float, size: float) -> np.ndarray:
    """Bins of decimal labels, in exact decimal arithmetic: each label is read
    as the shortest decimal that its float32 value prints as (what the CSV
    said, for labels of up to 6 significant digits)."""
    lo_d, hi_d, size_d = (Decimal(repr(float(v))) for v in (lo, hi, size))
    n = int(((hi_d - lo_d) / size_d).to_integral_value(rounding=ROUND_CEILING))
    out = []
    for y in np.asarray(labels, dtype=np.float64).reshape(-1):
        d = Decimal(np.format_float_positional(np.float32(y), unique=True, trim="0"))
        out.append(int(((d - lo_d) / size_d).to_integral_value(rounding=ROUND_FLOOR)))
    return np.clip(np.array(out, dtype=np.int64), 0, n - 1)


def ref_lds_weights(bins: np.ndarray, n_bins: int, reweight: str, lds: bool, kernel: str, ks: int,
                    sigma: float) -> np.ndarray:
    """The reference ``_prepare_weights`` over bin indices (float smoothing)."""
    if reweight == "none":
        return np.ones(len(bins), dtype=np.float32)
    value = {b: 0 for b in range(n_bins)}
    for b in bins:
        value[int(b)] += 1
    if reweight == "sqrt_inv":
        value = {k: math.sqrt(v) for k, v in value.items()}
    else:
        value = {k: float(np.clip(v, 5, 1000)) for k, v in value.items()}
    per_label = [value[int(b)] for b in bins]
    if lds:
        smoothed = convolve1d(np.asarray([value[b] for b in range(n_bins)], dtype=np.float64),
                              weights=ref_kernel_window(kernel, ks, sigma), mode="constant")
        per_label = [smoothed[int(b)] for b in bins]
    w = [1.0 / x for x in per_label]
    scale = len(w) / sum(w)
    return np.asarray([scale * x for x in w], dtype=np.float32)


# --------------------------------------------------------------------- FDS

def calibrate_mean_var(matrix, m1, v1, m2, v2, clip_min=0.1, clip_max=10.0):
    """The reference ``calibrate_mean_var`` for one bin's samples."""
    if torch.sum(v1) < 1e-10:
        return matrix
    if (v1 == 0.0).any():
        valid = v1 != 0.0
        factor = torch.clamp(v2[valid] / v1[valid], clip_min, clip_max)
        matrix[:, valid] = (matrix[:, valid] - m1[valid]) * torch.sqrt(factor) + m2[valid]
        return matrix
    factor = torch.clamp(v2 / v1, clip_min, clip_max)
    return (matrix - m1) * torch.sqrt(factor) + m2


def ref_fill_empty_buckets(running_mean, running_var, present) -> None:
    """The continuous-label reference's (sts-b-dir ``update_running_stats``)
    "make up for zero training samples buckets", in place, bucket by bucket in
    increasing order: the first bucket copies the second, the last copies the
    one before it, any other takes the mean of its two neighbours (the left
    one already refilled in this sweep, the right one not yet).  Works on
    torch tensors and numpy arrays alike."""
    n = len(present)
    for b in range(n):
        if present[b]:
            continue
        if b == 0:
            running_mean[0] = running_mean[1]
            running_var[0] = running_var[1]
        elif b == n - 1:
            running_mean[b] = running_mean[b - 1]
            running_var[b] = running_var[b - 1]
        else:
            running_mean[b] = (running_mean[b - 1] + running_mean[b + 1]) / 2.0
            running_var[b] = (running_var[b - 1] + running_var[b + 1]) / 2.0


class RefFDS(nn.Module):
    """FDS as the reference class, label by label.  ``update_running_stats``
    loops over the bins present; ``smooth`` over the bins of a batch.

    ``schedule``:

    * ``"reference"`` (default): the reference's timing, literally.  At the
      end of each epoch >= start_update the training loop calls
      ``update_last_epoch_stats(epoch)`` and then ``update_running_stats``.
      The first only acts when ``epoch == self.epoch + 1`` (``self.epoch``
      starts at start_update): it *aliases* ``running_mean_last_epoch`` to
      ``running_mean`` and smooths it.  So calibration sees the initial
      buffers (mean 0, variance 1: the identity) until epoch
      max(start_smooth, start_update + 2), the first effective one (epoch 2
      for start_update 0, start_smooth 1), and from then on the smoothed
      statistics lag one epoch behind the raw ones (which the alias keeps
      current);
    * ``"project"``: this project's deliberate deviation (DESIGN §6.3): after
      every update, copies of the statistics and their smoothed versions,
      used from start_smooth on.

    ``empty_bins``: ``"keep"`` (the discrete-label reference: bins without
    samples keep their buffers) or ``"fill"`` (the continuous-label
    reference, :func:`ref_fill_empty_buckets` after each update)."""

    def __init__(self, feature_dim: int, bucket_num: int, start_update: int = 0, start_smooth: int = 1,
                 kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0, momentum: float = 0.9, *,
                 schedule: str = "reference", empty_bins: str = "keep"):
        super().__init__()
        if schedule not in ("reference", "project") or empty_bins not in ("keep", "fill"):
            raise ValueError(f"schedule {schedule!r} / empty_bins {empty_bins!r}")
        self.feature_dim, self.bucket_num = feature_dim, bucket_num
        self.start_update, self.start_smooth, self.momentum = start_update, start_smooth, momentum
        self.schedule, self.empty_bins = schedule, empty_bins
        w = ref_kernel_window(kernel, ks, sigma)
        self.register_buffer("kernel_window", torch.tensor(w / sum(w), dtype=torch.float32))
        self.half_ks = (ks - 1) // 2
        for name, fill in (("running_mean", 0.0), ("running_var", 1.0), ("running_mean_last_epoch", 0.0),
                           ("running_var_last_epoch", 1.0), ("smoothed_mean_last_epoch", 0.0),
                           ("smoothed_var_last_epoch", 1.0)):
            self.register_buffer(name, torch.full((bucket_num, feature_dim), fill))
        self.epoch = start_update  # the reference's ``epoch`` buffer
        self.updated = False

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(F.pad(x.unsqueeze(1).permute(2, 1, 0), pad=(self.half_ks, self.half_ks), mode="reflect"),
                        weight=self.kernel_window.view(1, 1, -1), padding=0).permute(2, 1, 0).squeeze(1)

    def update_last_epoch_stats(self, epoch: int) -> None:
        """The reference: only on the epoch after the last one it acted on;
        the raw statistics are an alias of the running ones."""
        if epoch == self.epoch + 1:
            self.epoch += 1
            self.running_mean_last_epoch = self.running_mean
            self.running_var_last_epoch = self.running_var
            self.smoothed_mean_last_epoch = self._smooth(self.running_mean_last_epoch)
            self.smoothed_var_last_epoch = self._smooth(self.running_var_last_epoch)

    @torch.no_grad()
    def end_of_epoch(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """What the reference training loop does after each epoch."""
        if epoch < self.start_update:
            return
        if self.schedule == "reference":
            self.update_last_epoch_stats(epoch)
        self.update_running_stats(features, labels, epoch)

    @torch.no_grad()
    def update_running_stats(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        if epoch < (self.epoch if self.schedule == "reference" else self.start_update):
            return
        present = [False] * self.bucket_num
        for label in torch.unique(labels):
            curr = features[labels == label]
            mean = torch.mean(curr, 0)
            var = torch.var(curr, 0, unbiased=curr.size(0) != 1)
            factor = 0 if epoch == self.start_update else self.momentum
            i = int(label)
            present[i] = True
            self.running_mean[i] = (1 - factor) * mean + factor * self.running_mean[i]
            self.running_var[i] = (1 - factor) * var + factor * self.running_var[i]
        if self.empty_bins == "fill":
            ref_fill_empty_buckets(self.running_mean, self.running_var, present)
        if self.schedule == "project":
            self.running_mean_last_epoch = self.running_mean.clone()
            self.running_var_last_epoch = self.running_var.clone()
            self.smoothed_mean_last_epoch = self._smooth(self.running_mean_last_epoch)
            self.smoothed_var_last_epoch = self._smooth(self.running_var_last_epoch)
            self.updated = True

    def smooth(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        if epoch < self.start_smooth or (self.schedule == "project" and not self.updated):
            return features
        features = features.clone()
        for label in torch.unique(labels):
            sel = labels == label
            i = int(label)
            features[sel] = calibrate_mean_var(features[sel], self.running_mean_last_epoch[i],
                                               self.running_var_last_epoch[i], self.smoothed_mean_last_epoch[i],
                                               self.smoothed_var_last_epoch[i])
        return features


# -------------------------------------------------------------------- head

class RefBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h):
        return F.relu(h + self.fc2(F.relu(self.fc1(h))))


class RefHead(nn.Module):
    """Linear → ReLU → residual blocks → FDS (training only) → dropout →
    Linear (the reference's ``encoding → FDS.smooth → dropout → linear``)."""

    def __init__(self, in_dim: int, hidden: int, blocks: int, fds: RefFDS | None, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(RefBlock(hidden) for _ in range(blocks))
        self.FDS = fds
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x, labels=None, epoch=None):
        h = F.relu(self.proj(x))
        for b in self.blocks:
            h = b(h)
        encoding = h
        if self.training and self.FDS is not None and epoch is not None:
            h = self.FDS.smooth(h, labels, epoch)
        return self.fc(self.dropout(h)).squeeze(-1), encoding


# ---------------------------------------------------------------- training

class FeatureDataset(Dataset):
    """One cached feature per item, with its label, LDS weight and bin, as
    numpy arrays (collated into tensors by the DataLoader)."""

    def __init__(self, x, y, w, b):
        self.x, self.y, self.w, self.b = x, y, w, b

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i], np.asarray([self.y[i]], dtype=np.float32), np.asarray([self.w[i]], dtype=np.float32),
                int(self.b[i]))


def ref_train(features: np.ndarray, labels: np.ndarray, split: np.ndarray, *, epochs: int = 200,
              lr: float = 1e-3, batch_size: int = 256, hidden: int = 512, blocks: int = 2,
              lds: bool = False, reweight: str = "none", lds_kernel: str = "gaussian", lds_ks: int = 5,
              lds_sigma: float = 2.0, fds: bool = False, fds_kernel: str = "gaussian", fds_ks: int = 5,
              fds_sigma: float = 2.0, label_range=(0.0, 100.0), bin_size: float = 1.0, seed: int = 0,
              device: str = "cpu", fds_schedule: str = "reference", fds_empty_bins: str = "fill") -> dict:
    """One configuration, reference style.  Returns the best validation MAE,
    its epoch, the test MAE and the seconds taken."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    lo, hi = label_range
    n_bins = int(math.ceil((hi - lo) / bin_size - 1e-9))
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    bins = ref_bin(labels, lo, hi, bin_size)
    w_tr = ref_lds_weights(bins[tr], n_bins, reweight, lds, lds_kernel, lds_ks, lds_sigma)
    ones = np.ones(len(labels), dtype=np.float32)
    ds_tr = FeatureDataset(features[tr], labels[tr], w_tr, bins[tr])
    ds_va = FeatureDataset(features[va], labels[va], ones[va], bins[va])
    ds_te = FeatureDataset(features[te], labels[te], ones[te], bins[te])
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(ds_tr, batch_size=batch_size, shuffle=True, generator=g)
    stats_loader = DataLoader(ds_tr, batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(ds_va, batch_size=batch_size, shuffle=False)
    test_loader = DataLoader(ds_te, batch_size=batch_size, shuffle=False)

    fds_layer = (RefFDS(hidden, n_bins, 0, 1, fds_kernel, fds_ks, fds_sigma, 0.9, schedule=fds_schedule,
                        empty_bins=fds_empty_bins) if fds else None)
    model = RefHead(features.shape[1], hidden, blocks, fds_layer).to(device)
    with torch.no_grad():
        model.fc.bias.fill_(float(labels[tr].mean()))
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def evaluate(loader):
        model.eval()
        preds, gts = [], []
        with torch.no_grad():
            for x, y, _, _ in loader:
                out, _ = model(x.to(device))
                preds.extend(out.cpu().numpy())
                gts.extend(y.squeeze(-1).numpy())
        return float(np.mean(np.abs(np.asarray(preds) - np.asarray(gts))))

    best, best_epoch, best_state = math.inf, -1, None
    for epoch in range(epochs):
        model.train()
        for x, y, w, b in train_loader:
            x, y, w, b = x.to(device), y.squeeze(-1).to(device), w.squeeze(-1).to(device), b.to(device)
            out, _ = model(x, b, epoch)
            loss = (F.l1_loss(out, y, reduction="none") * w).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if fds_layer is not None:
            model.eval()
            encodings, labs = [], []
            with torch.no_grad():
                for x, _, _, b in stats_loader:
                    _, feature = model(x.to(device))
                    encodings.extend(feature.cpu().numpy())
                    labs.extend(b.numpy())
            encodings = torch.from_numpy(np.vstack(encodings)).to(device)
            labs = torch.from_numpy(np.hstack(labs)).to(device)
            fds_layer.end_of_epoch(encodings, labs, epoch)
        val = evaluate(val_loader)
        if val < best:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"best_val_mae": best, "best_epoch": best_epoch, "test_mae": evaluate(test_loader),
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------ the plain loop
# The one part of this module that uses iqa_cache (its head, configs, bins and
# result packaging): the library's own training written as one readable loop,
# the reference that the stacked engine (iqa_cache.train.stacked) is tested against.

def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str) -> torch.Tensor:
    return (loss_terms(pred, target, kind) * weight).mean()


def train_head_simple(data: CacheData, cfg: TrainConfig, *, progress: bool = False) -> TrainResult:
    """:func:`iqa_cache.train.fit.train_head` as one plain loop over ``nn.Module``
    layers and ``torch.optim.Adam``: slower, easy to read, and the reference
    that the stacked engine must match."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg = replace(cfg.resolved(data.label_range, int(data.features.shape[1])), device=device)
    bins = cfg.bins(data.label_range)
    check_data(data, cfg, bins)
    tr, va = data.subset("train"), data.subset("val")

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(data.features).to(device)
    y_all = torch.from_numpy(data.label).to(device)
    tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
    x_tr, y_tr = x_all[tr_t], y_all[tr_t]
    b_tr = torch.from_numpy(bins.index(data.label[tr])).to(device) if cfg.fds.enabled else None
    w_tr = torch.from_numpy(cfg.lds.weights(data.label[tr], bins)).to(device)
    x_va, y_va = x_all[va_t], y_all[va_t]

    head = ResidualMLPHead(cfg.head, cfg.fds, bins.n).to(device)
    with torch.no_grad():
        head.fc.bias.fill_(float(y_tr.mean()))  # start from the mean label, not from 0
    opt = torch.optim.Adam(head.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                           weight_decay=cfg.optim.weight_decay)

    best_mae, best_epoch, best_state = math.inf, -1, None
    history: list[dict[str, float]] = []
    n_tr, bs = len(tr), cfg.batch_size
    epochs = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc="training", unit="epoch", leave=False, dynamic_ncols=True)
    for epoch in epochs:
        lr = get_lr(epoch, cfg.optim, cfg.epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        head.train()
        perm = torch.randperm(n_tr, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, n_tr, bs):
            idx = perm[i:i + bs]
            pred = head(x_tr[idx], b_tr[idx] if b_tr is not None else None, epoch)
            loss = weighted_loss(pred, y_tr[idx], w_tr[idx], cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
        train_loss = float(loss_sum) / n_tr
        if not math.isfinite(train_loss):
            raise TrainingDiverged(diverged_message(epoch, train_loss, lr, cfg))
        if head.fds is not None and epoch >= cfg.fds.start_update:
            with torch.no_grad():
                head.eval()
                head.fds.update(head.features(x_tr), b_tr, epoch)
        val_mae = float((predict(head, x_va) - y_va).abs().mean()) if len(va) else math.nan
        history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_mae": val_mae})
        improved = val_mae < best_mae if len(va) else True
        if improved:
            best_mae, best_epoch = (val_mae if len(va) else math.nan), epoch
            best_state = copy.deepcopy(head.state_dict())
    if best_state is None:
        raise TrainingDiverged(never_finite_message(cfg))
    head.load_state_dict(best_state)
    pred_all = predict(head, x_all).cpu().numpy().astype(np.float64)
    if not np.isfinite(pred_all).all():
        raise TrainingDiverged(nonfinite_predictions_message(best_epoch))
    return package_result(data, cfg, bins, head.cpu(), pred_all, best_epoch=best_epoch, best_val_mae=best_mae,
                          history=history, seconds=time.perf_counter() - t0, device=device)


# ------------------------------------------------- imbalance methods
# Literal, loop-based re-implementations of the formulas (Balanced MSE, Dist
# Loss, DenseWeight), one sample at a time, for a single configuration: the
# batched losses are tested against them.  pred and target are [B] tensors
# here.  The official code itself, as written, is transcribed in
# tests/test_official_*.py.

def ref_bmc(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """bmc_loss: row i's logits -(pred_i - target_j)^2 / (2 var) over j, the
    cross-entropy with class i, averaged over the rows, times 2 var (detached)."""
    rows = []
    for i in range(len(pred)):
        logits = torch.stack([-0.5 * (pred[i] - target[j]) ** 2 / noise_var for j in range(len(target))])
        rows.append(F.cross_entropy(logits.view(1, -1), torch.tensor([i])))
    return torch.stack(rows).mean() * (2 * noise_var).detach()


def ref_gai(pred, target, noise_var, means, variances, weights) -> torch.Tensor:
    """gai_loss: per sample the Gaussian NLL (with 0.5 log var) plus the
    logsumexp over the mixture components of the noisy component density."""
    out = []
    for i in range(len(pred)):
        mse = (pred[i] - target[i]) ** 2 / 2 / noise_var + 0.5 * torch.log(noise_var)
        terms = []
        for m in range(len(means)):
            s = variances[m] + noise_var
            terms.append(-0.5 * torch.log(s) - 0.5 * (pred[i] - means[m]) ** 2 / s + torch.log(weights[m]))
        out.append((mse + torch.logsumexp(torch.stack(terms), dim=0)) * (2 * noise_var).detach())
    return torch.stack(out).mean()


def ref_bni(pred, target, noise_var, centres, weights) -> torch.Tensor:
    """bni_loss over the non-empty buckets only (as the official code keeps them)."""
    keep = [b for b in range(len(centres)) if weights[b] > 0]
    out = []
    for i in range(len(pred)):
        mse = (pred[i] - target[i]) ** 2 / 2 / noise_var
        terms = [-0.5 * (pred[i] - centres[b]) ** 2 / noise_var + torch.log(weights[b]) for b in keep]
        out.append((mse + torch.logsumexp(torch.stack(terms), dim=0)) * (2 * noise_var).detach())
    return torch.stack(out).mean()


def ref_dist(pred, target, pseudo, weight: float) -> torch.Tensor:
    """DistLoss with loss_fn L1, no per-sample weights: mean of weight *
    |sorted_b - pseudo_b| + |pred_b - target_b| (the soft sort is the hard
    sort while neighbouring sorted predictions are less than 1/regularization_strength apart)."""
    sorted_pred = torch.sort(pred).values
    terms = [weight * (sorted_pred[b] - pseudo[b]).abs() + (pred[b] - target[b]).abs() for b in range(len(pred))]
    return torch.stack(terms).mean()


def ref_dense_weights(labels, alpha: float, eps: float, grid: int = 4096) -> np.ndarray:
    """DenseWeight: the Gaussian KDE with bandwidth 1.06 std n^-1/5 summed
    label by label, min-max scaled over the autogrid, 1 - alpha p' floored at
    eps, divided by the mean: one label at a time."""
    y = [float(v) for v in labels]
    n = len(y)
    mean = sum(y) / n
    h = 1.06 * math.sqrt(sum((v - mean) ** 2 for v in y) / n) * n ** -0.2

    def density(t: float) -> float:
        return sum(math.exp(-0.5 * ((t - v) / h) ** 2) for v in y) / (n * h * math.sqrt(2 * math.pi))

    # KDEpy's practical support: where the kernel's density falls to 1e-4, by brentq to 1e-3, plus 1e-3
    from scipy.optimize import brentq

    support = brentq(lambda x: math.exp(-0.5 * (x / h) ** 2) / (h * math.sqrt(2 * math.pi)) - 1e-4, 0, 8 * h,
                     xtol=1e-3) + 1e-3
    width = max(0.05 * (max(y) - min(y)), support)
    points = np.linspace(min(y) - width, max(y) + width, grid)
    on_grid = [density(float(t)) for t in points]
    lo, hi = min(on_grid), max(on_grid)
    w = [max(1.0 - alpha * (density(v) - lo) / (hi - lo), eps) for v in y]
    m = sum(w) / n
    return np.array([v / m for v in w])

"""The training loop of a stack and the planner that groups a grid's
configurations into stacks."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import torch

from ...binning import Bins
from ...cache import CacheData
from ...device import auto_precision, resolve_device, resolve_precision
from ...errors import ConfigError, TrainingDiverged
from ..config import LOG_EVERY, LDSConfig, MethodConfig, TrainConfig
from ..head import ResidualMLPHead
from ..methods import CLOSED_FORM_METHODS
from ..order import chunk_windows
from ..results import (
    TrainResult,
    diverged_message,
    never_finite_message,
    nonfinite_predictions_message,
    package_result,
)
from ..splits import split_data
from .data import DeviceData, TrainingRows, check_data, check_fds_bins, check_order, to_device
from .fds import StackedFDS
from .heads import AUTOCAST_DTYPES, EVAL_BUDGET, HeadStack, init_stack
from .methods import StackLoss
from .optim import GroupedAdam, LossScale

log = logging.getLogger(__name__)


# methods whose label priors are fitted once per stack on the training labels (StackLoss): one split per stack
_PRIOR_METHODS = ("gai", "bni", "dist")


def splits_share(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s stack may hold drawn splits of other seeds: each
    configuration then gathers its own training and validation rows (of
    equal counts: a drawn split's part sizes depend only on the labels and
    the ratios).  Not with FDS (its statistics run over one set of
    training rows), a chunked order, the methods whose priors are fitted
    on the stack's training labels, or a closed-form method."""
    return (not cfg.split.official and not cfg.fds.enabled and not cfg.order.chunked
            and cfg.method.name not in _PRIOR_METHODS + CLOSED_FORM_METHODS)


def stack_key(cfg: TrainConfig) -> TrainConfig:
    """Configurations with equal keys can share a stack: they may differ only
    in LDS settings, seed, learning rate, FDS window (kernel, size, sigma),
    patience and method (with its settings; all Balanced MSE ones of a stack
    share the noise sigma's learning rate), and in their drawn split where
    :func:`splits_share`.  Under ``--shuffle chunks`` the seed
    is the stack's one order of rows: equal seeds only."""
    fds = replace(cfg.fds, kernel="gaussian", ks=1, sigma=1.0) if cfg.fds.enabled else replace(cfg.fds, enabled=False)
    method = MethodConfig(bmse_sigma_lr=cfg.method.bmse_sigma_lr if cfg.method.bmse else MethodConfig.bmse_sigma_lr)
    if cfg.method.name in CLOSED_FORM_METHODS:  # solved, not trained: never in a stack of heads
        method = MethodConfig(name=cfg.method.name)
    seed = cfg.seed if cfg.order.chunked else 0
    split = replace(cfg.split, seed=0) if splits_share(cfg) else cfg.split
    return replace(cfg, lds=LDSConfig(), seed=seed, optim=replace(cfg.optim, lr=1.0), fds=fds, method=method,
                   split=split, patience=None)


def train_epoch(stack: HeadStack, opt: GroupedAdam, rows: TrainingRows, perm: torch.Tensor,
                fds: StackedFDS | None, loss: StackLoss, scaler: LossScale | None = None) -> list[float]:
    """One pass over the training rows, features calibrated by ``fds`` (None:
    not this epoch), each configuration with its method's ``loss``; returns
    each configuration's mean training loss.  ``scaler``: fp16's loss scale."""
    loss_sum = torch.zeros(stack.k, device=rows.weights.device)
    wrt = [*stack.params, loss.log_sigma] if loss.bmse else stack.params
    for xb, yb, wb, bb, n in rows.batches(perm):
        h = stack.features(xb)  # RankSim regularises these, before FDS (as the official code)
        z = fds.calibrate(h, bb) if fds is not None else h
        loss_k = loss(stack.output(z, train=True), yb, wb, h, bb)
        total = loss_k.sum() if scaler is None else loss_k.sum() * scaler.scale
        grads = list(torch.autograd.grad(total, wrt))
        if scaler is None or scaler.unscale(grads, loss_k):
            if loss.bmse:
                opt.step(grads[:-1], loss.sigma_grad(grads[-1]))
            else:
                opt.step(grads)
        loss_sum += loss_k.detach() * n
    return [s / len(rows) for s in loss_sum.tolist()]


def predict_rows(stack: HeadStack, dev: DeviceData, which: str, params=None) -> torch.Tensor:
    """Predictions ``[K, n]`` for the rows of ``which`` (train, val or all)."""
    parts = [stack.predict(x, params) for _, x in dev.blocks(which)]
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def validation_mae(stack: HeadStack, dev: DeviceData, own: "SplitRows | None" = None) -> list[float]:
    """Each configuration's validation MAE (``own``: each its own split's rows)."""
    if own is not None:
        return own.validation_mae(stack)
    if len(dev.va):
        return (predict_rows(stack, dev, "val") - dev.y_va).abs().mean(dim=1).tolist()
    return [math.nan] * stack.k


class SplitRows:
    """The validation rows of a stack whose configurations train on drawn
    splits of different seeds (:func:`splits_share`): each configuration's
    own rows ``[K, n_val]``, gathered once from the features on the device."""

    def __init__(self, parts: Sequence[CacheData], dev: DeviceData):
        va = [p.subset("val") for p in parts]
        if len({len(v) for v in va}) > 1:
            raise ValueError("drawn splits of one stack must have equal part sizes")
        idx = torch.from_numpy(np.stack(va)).to(dev.device)
        self.x = dev.x_all[idx]  # [K, n_val, D]
        self.y = dev.y_all[idx]  # [K, n_val]

    def validation_mae(self, stack: HeadStack) -> list[float]:
        if not self.y.shape[1]:
            return [math.nan] * stack.k
        with torch.no_grad():
            step = max(1, EVAL_BUDGET // (stack.k * max(stack.cfg.hidden_dim, stack.cfg.in_dim)))
            pred = torch.cat([stack.output(stack.features(self.x[:, a:a + step])) for a in
                              range(0, self.x.shape[1], step)], 1)
        return (pred - self.y).abs().mean(dim=1).tolist()


class BestEpochs:
    """Per configuration of a stack: its history, its best validation epoch
    so far with that epoch's parameters (and FDS state), and the divergence
    it ran into, if any (it is then never improved again)."""

    def __init__(self, stack: HeadStack, cfgs: Sequence[TrainConfig], has_val: bool):
        self.stack, self.cfgs, self.has_val = stack, cfgs, has_val
        self.params = [p.detach().clone() for p in stack.params]
        self.val = [math.inf] * stack.k
        self.epoch = [-1] * stack.k
        self.diverged: dict[int, str] = {}
        self.history: list[list[dict[str, float]]] = [[] for _ in range(stack.k)]
        self.stopped: dict[int, int] = {}  # configuration -> its last epoch, once its patience ran out

    @property
    def all_stopped(self) -> bool:
        """Every configuration has stopped early (--patience): the stack can stop."""
        return len(self.stopped) == self.stack.k

    def record(self, epoch: int, lrs: list[float], train_loss: list[float], val: list[float],
               fds: StackedFDS | None, sigma: list[float] | None = None) -> None:
        """One epoch's numbers; ``sigma``: the Balanced MSE noise sigmas after
        it (in the history of the Balanced MSE configurations)."""
        for k, tl in enumerate(train_loss):
            if k not in self.diverged and not math.isfinite(tl):
                self.diverged[k] = diverged_message(epoch, tl, lrs[k], self.cfgs[k])
        improved = []
        for k in range(self.stack.k):
            if k in self.stopped:  # trained on in the stack, but its run ended: as if trained alone
                improved.append(False)
                continue
            self.history[k].append({"epoch": epoch, "lr": lrs[k], "train_loss": train_loss[k], "val_mae": val[k]})
            if sigma is not None and self.cfgs[k].method.bmse:
                self.history[k][-1]["noise_sigma"] = sigma[k]
            better = (val[k] < self.val[k]) if self.has_val else True
            improved.append(better and k not in self.diverged)
            if improved[-1]:
                self.val[k], self.epoch[k] = (val[k] if self.has_val else math.nan), epoch
            patience = self.cfgs[k].patience
            if patience and (k in self.diverged or (self.epoch[k] >= 0 and epoch - self.epoch[k] >= patience)):
                self.stopped[k] = epoch
        if any(improved):
            mask = torch.tensor(improved, device=self.params[0].device)
            with torch.no_grad():
                for bp, p in zip(self.params, self.stack.params):
                    bp[mask] = p[mask]
            if fds is not None:
                fds.keep_best(mask)

    def outcome(self, k: int, data: CacheData, bins: Bins, fds: StackedFDS | None, pred: np.ndarray,
                seconds: float, device: str) -> TrainResult | TrainingDiverged:
        """Configuration ``k``'s head of its best epoch, packaged with its
        predictions ``pred`` for every cached image; or why there is none."""
        c, best_epoch = self.cfgs[k], self.epoch[k]
        if k in self.diverged:
            return TrainingDiverged(self.diverged[k])
        if best_epoch < 0:
            return TrainingDiverged(never_finite_message(c))
        if not np.isfinite(pred).all():
            return TrainingDiverged(nonfinite_predictions_message(best_epoch))
        head = ResidualMLPHead(c.head, c.fds, bins.n)
        state = self.stack.state_dict_of(k, self.params)
        if fds is not None:
            state.update({f"fds.{n}": t for n, t in fds.state_dict_of(k, c.fds, best_epoch).items()})
        head.load_state_dict(state)
        return package_result(data, c, bins, head.eval(), pred, best_epoch=best_epoch, best_val_mae=self.val[k],
                              history=self.history[k], seconds=seconds, device=device,
                              stopped_epoch=self.stopped.get(k))

    def summary(self) -> str:
        """The stack's best validation MAEs so far, and how many stopped, for a log line."""
        vals = [v for v in self.val if math.isfinite(v)]
        best = (f"best val MAE {min(vals):.4g}" + (f"-{max(vals):.4g}" if len(vals) > 1 else "")) if vals else \
            "no finite val MAE yet"
        return best + (f", {len(self.stopped)} of {self.stack.k} stopped early" if self.stopped else "")


def _epochs(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, unit="epoch", leave=False, dynamic_ncols=True)


def train_stack(data: CacheData, cfgs: Sequence[TrainConfig], *, dev: DeviceData | None = None,
                progress: bool = False, desc: str = "training", checked: bool = False, log_every: int = LOG_EVERY
                ) -> list[TrainResult | TrainingDiverged]:
    """Train the configurations ``cfgs`` (equal :func:`stack_key`) together.

    Returns, in the order given, each configuration's
    :class:`~iqa_cache.train.results.TrainResult` (best validation epoch, its
    predictions and metrics; ``seconds`` is its share of the stack's time)
    or the :class:`~iqa_cache.errors.TrainingDiverged` it ran into.  ``dev``
    is the data already on the device; ``checked`` skips the checks (and
    warnings) that :func:`train_many` made once for all stacks.  A cache
    loaded without features (``load(..., features=False)``) is streamed from
    its file (``--shuffle chunks`` only): the same training as in memory.

    Without ``progress`` (bars), an INFO log line every ``log_every`` epochs
    (0: none) and one when the stack is done, each with the elapsed time.
    A configuration with ``patience`` stops
    that many epochs after its best validation epoch (its history ends
    there); the stack stops when all of its configurations have."""
    if not cfgs:
        return []
    drawn = {c.split: split_data(data, c.split) for c in cfgs}  # the same parts for every configuration of a split
    data = drawn[cfgs[0].split]
    if dev is None:
        if not checked:
            check_order(data, cfgs[0])
        dev = to_device(data, resolve_device(cfgs[0].device), block_rows=_block_rows(cfgs[0]))
        try:
            return train_stack(data, cfgs, dev=dev, progress=progress, desc=desc, checked=checked,
                               log_every=log_every)
        finally:
            dev.close()
    t0 = time.perf_counter()
    cfgs = [c.resolved(data.label_range, data.feature_dim) for c in cfgs]  # settings left to the cache, as numbers
    if len({stack_key(c) for c in cfgs}) > 1:
        raise ValueError("train_stack needs configurations that differ only in LDS, seed, lr and FDS window")
    c0 = cfgs[0]
    device = dev.device
    if c0.precision == "auto":  # recorded as it ran, as the device
        precision, why = auto_precision(device)
        log.info("--precision auto: %s (%s)", precision, why)
    else:
        precision = resolve_precision(c0.precision, device)
    bins = c0.bins(data.label_range)
    if not checked:
        for part in drawn.values():
            check_data(part, c0, bins)
        check_order(data, c0)
        for c in cfgs:
            check_fds_bins(c, bins)
    if c0.method.name in CLOSED_FORM_METHODS:
        from ..ridge import fit_ridge

        return [fit_ridge(data, c, dev, bins) for c in cfgs]
    head_cfg = replace(c0.head, in_dim=data.feature_dim)
    order = sorted(range(len(cfgs)), key=lambda i: cfgs[i].optim.lr)  # equal learning rates side by side
    cfgs = [replace(cfgs[i], head=head_cfg, device=device, precision=precision) for i in order]
    parts = [drawn[c.split] for c in cfgs]
    own = SplitRows(parts, dev) if len(drawn) > 1 else None  # drawn splits of several seeds: rows per config

    y_means = [float(p.label[p.subset("train")].mean()) for p in parts] if own is not None else dev.y_mean
    stack = init_stack(cfgs, head_cfg, y_means, device, AUTOCAST_DTYPES[precision])
    gens = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    labels = data.label[dev.tr]  # the priors' labels: one split per stack (splits_share)
    loss = StackLoss(cfgs, labels, bins, device)
    opt = GroupedAdam(stack, cfgs, loss.log_sigma if loss.bmse else None)
    rows = TrainingRows.of(data, dev, cfgs, bins, need_bins=loss.needs_bins,
                           parts=parts if own is not None else None)
    fds = StackedFDS([c.fds for c in cfgs], bins.n, head_cfg.hidden_dim, device) if c0.fds.enabled else None
    best = BestEpochs(stack, cfgs, has_val=len(dev.va) > 0)
    scaler = LossScale() if precision == "fp16" else None
    for epoch in _epochs(c0.epochs, progress, desc):
        lrs = opt.schedule(epoch)
        if c0.order.chunked:  # one order for the stack, the same in memory and streamed
            perm = chunk_windows(len(rows), epoch, c0.seed, c0.order.chunk_rows, c0.order.buffer)
        else:
            perm = torch.stack([torch.randperm(len(rows), generator=g) for g in gens]).to(device)
        calibrating = fds is not None and fds.updated and epoch >= fds.start_smooth
        train_loss = train_epoch(stack, opt, rows, perm, fds if calibrating else None, loss, scaler)
        if fds is not None and epoch >= fds.start_update:
            if c0.order.chunked:  # in blocks, in memory as streamed: the same numbers
                fds.update_blocks(stack, dev.blocks("train"), rows.bins, rows.count)
            else:
                fds.update(stack, rows.x, rows.bins, rows.count)
        best.record(epoch, lrs, train_loss, validation_mae(stack, dev, own), fds,
                    loss.sigma.tolist() if loss.bmse else None)
        if best.all_stopped:
            break
        if not progress and log_every and (epoch + 1) % log_every == 0 and epoch + 1 < c0.epochs:
            log.info("%s: epoch %d/%d, %.1f s, %s", desc, epoch + 1, c0.epochs, time.perf_counter() - t0,
                     best.summary())

    if scaler is not None and scaler.skipped:
        log.info("fp16: %d step(s) skipped for gradients that overflowed; loss scale now %g", scaler.skipped,
                 scaler.scale)
    if not progress:
        log.info("%s: done, %d epoch(s) in %.1f s, %s", desc, epoch + 1, time.perf_counter() - t0, best.summary())
    pred_all = predict_rows(stack, dev, "all", best.params).cpu().numpy().astype(np.float64)
    share = (time.perf_counter() - t0) / len(cfgs)
    results = [best.outcome(k, parts[k], bins, fds, pred_all[k], share, device) for k in range(len(cfgs))]
    return [results[order.index(i)] for i in range(len(cfgs))]


def plan_stacks(cfgs: Sequence[TrainConfig], max_stack: int) -> list[list[int]]:
    """Indices of ``cfgs`` grouped into stacks: equal :func:`stack_key`, at
    most ``max_stack`` each, in order of first appearance."""
    if max_stack < 1:
        raise ConfigError(f"--max-stack must be at least 1, got {max_stack}")
    groups: dict = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(stack_key(c), []).append(i)
    return [g[a:a + max_stack] for g in groups.values() for a in range(0, len(g), max_stack)]


def train_many(data: CacheData, cfgs: Sequence[TrainConfig], *, max_stack: int = 64, progress: bool = False,
               stacks: Sequence[Sequence[int]] | None = None, log_every: int = LOG_EVERY
               ) -> Iterator[tuple[int, TrainResult | TrainingDiverged]]:
    """Train every configuration, those that share shapes together in
    stacks of at most ``max_stack`` (or the given ``stacks``: lists of
    indices into ``cfgs``, each of equal :func:`stack_key`; configurations in
    none of them are not trained); yield ``(index, result or
    TrainingDiverged)`` as each stack finishes.  Invalid settings raise
    before anything is trained."""
    cfgs = [c.resolved(data.label_range, data.feature_dim) for c in cfgs]
    stacks = plan_stacks(cfgs, max_stack) if stacks is None else [list(s) for s in stacks]
    checked = set()
    parts = {c.split: split_data(data, c.split) for c in cfgs}  # each split drawn once: a new split column
    for c in cfgs:
        bins = c.bins(data.label_range)
        if (bins, c.split) not in checked:  # warnings once per bin grid and split
            check_data(parts[c.split], c, bins)
            checked.add((bins, c.split))
        check_fds_bins(c, bins)
        check_order(data, c)
    devices: dict[tuple, DeviceData] = {}
    try:
        for s, members in enumerate(stacks):
            split = cfgs[members[0]].split
            device = resolve_device(cfgs[members[0]].device)
            where = (device, _block_rows(cfgs[members[0]]), split)
            if where not in devices:  # the features on the device once (views for other block sizes and splits)
                mine = next((d for (dv, _, sp), d in devices.items() if (dv, sp) == (device, split)
                             and d.reader is None), None)
                same = next((d for (dv, _, _), d in devices.items() if dv == device and d.reader is None), None)
                devices[where] = (replace(mine, block_rows=where[1]) if mine is not None
                                  else to_device(parts[split], device, block_rows=where[1], shared=same))
            desc = f"stack {s + 1}/{len(stacks)} ({len(members)} config{'s' if len(members) > 1 else ''})"
            results = train_stack(parts[split], [cfgs[i] for i in members], dev=devices[where], progress=progress,
                                  desc=desc, checked=True, log_every=log_every)
            yield from zip(members, results)
    finally:
        for d in devices.values():
            d.close()


def _block_rows(cfg: TrainConfig) -> int | None:
    """Rows per evaluation block under ``--shuffle chunks`` (a chunk's
    worth, in memory as streamed); None (one block) otherwise."""
    return cfg.order.chunk_rows if cfg.order.chunked else None

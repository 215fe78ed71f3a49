"""The learning-rate schedule and one Adam over a stack (a parameter group
per run of equal learning rates)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..config import OptimConfig, TrainConfig
from .heads import HeadStack


def get_lr(epoch: int, optim: OptimConfig, epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based); pure."""
    if optim.schedule == "cosine":
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if optim.schedule == "step":
        return optim.lr * 0.1 ** sum(epoch >= int(epochs * f) for f in (0.6, 0.8))
    return optim.lr


def make_adam(groups: list[dict], optim_cfg) -> torch.optim.Adam:
    """Adam over ``groups``: fused where this torch and device support it
    (CUDA, and CPU since torch 2.4), else foreach."""
    kw = dict(betas=optim_cfg.betas, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
    try:
        return torch.optim.Adam(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, foreach=True, **kw)


def lr_groups(lrs: Sequence[float]) -> list[tuple[int, int]]:
    """The slices ``(start, stop)`` of equal consecutive learning rates in
    ``lrs`` (sorted: one Adam parameter group each)."""
    groups: list[tuple[int, int]] = []
    for i, lr in enumerate(lrs):
        if groups and lrs[groups[-1][0]] == lr:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
    return groups


class GroupedAdam:
    """One Adam over a stack whose configurations are ordered by learning
    rate: a parameter group per run of equal rates, over row slices of the
    stacked tensors; each configuration follows its own schedule.

    ``sigma``: the logs of the Balanced MSE noise sigmas [K] of the stack,
    when it has any, in one more group at the constant ``bmse_sigma_lr`` and without
    weight decay (the official code leaves that group out of its schedule)."""

    def __init__(self, stack: HeadStack, cfgs: Sequence[TrainConfig], sigma: torch.Tensor | None = None):
        self.cfgs = cfgs
        self.groups = lr_groups([c.optim.lr for c in cfgs])
        with torch.no_grad():
            self.views = [[p[a:b] for p in stack.params] for a, b in self.groups]
        groups = [{"params": v, "lr": cfgs[a].optim.lr} for v, (a, _) in zip(self.views, self.groups)]
        self.sigma = sigma
        if sigma is not None:
            groups.append({"params": [sigma], "lr": cfgs[0].method.bmse_sigma_lr, "weight_decay": 0.0})
        self.opt = make_adam(groups, cfgs[0].optim)

    def schedule(self, epoch: int) -> list[float]:
        """Set the groups' learning rates for ``epoch``; returns each configuration's."""
        lrs = [get_lr(epoch, c.optim, c.epochs) for c in self.cfgs]
        for g, (a, _) in zip(self.opt.param_groups, self.groups):
            g["lr"] = lrs[a]
        return lrs

    def step(self, grads: Sequence[torch.Tensor], sigma_grad: torch.Tensor | None = None) -> None:
        """One step with the gradients of the stacked tensors (in stack order)
        and of the noise sigmas."""
        grads = [g.contiguous() for g in grads]  # fused Adam reads them as laid out as the parameters
        for v, (a, b) in zip(self.views, self.groups):
            for p, g in zip(v, grads):
                p.grad = g[a:b]
        if self.sigma is not None:
            self.sigma.grad = sigma_grad
        self.opt.step()


class LossScale:
    """fp16's dynamic loss scale for a stack (what ``torch.amp.GradScaler``
    does for one optimiser): the loss is multiplied by :attr:`scale` before
    the backward pass, so that small float16 gradients do not flush to zero;
    :meth:`unscale` divides the gradients back and says whether to step.  A
    step whose gradients overflow (non-finite in a configuration whose loss is
    finite) is skipped for the whole stack and the scale halved; after
    ``growth_interval`` good steps it doubles.  A configuration whose loss
    itself is non-finite has diverged: it steps as in float32 and is reported
    as diverged, without stopping the others."""

    def __init__(self, scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.scale, self.growth_interval, self.good = scale, growth_interval, 0
        self.skipped = 0

    def unscale(self, grads: Sequence[torch.Tensor], loss_k: torch.Tensor) -> bool:
        """Divide ``grads`` (stacked tensors ``[K, ...]``, and 1-D ones such
        as the noise sigmas) by the scale in place; False: skip this step."""
        torch._foreach_mul_(list(grads), 1.0 / self.scale)
        k = loss_k.shape[0]
        finite = torch.stack([g.reshape(k, -1).isfinite().all(1) for g in grads]).all(0)
        if bool((~finite & loss_k.detach().isfinite()).any()):
            self.scale, self.good = self.scale / 2, 0
            self.skipped += 1
            return False
        self.good += 1
        if self.good >= self.growth_interval:
            self.scale, self.good = self.scale * 2, 0
        return True

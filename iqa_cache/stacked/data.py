"""The data side of a stack: the cache's rows on the device, the checks made
before training, and the training rows with each configuration's loss
weights, batched in each configuration's own order."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..binning import Bins
from ..cache import CacheData
from ..config import TrainConfig
from ..errors import ConfigError
from ..priors import loss_weights

log = logging.getLogger(__name__)


@dataclass
class DeviceData:
    """A loaded cache on the device, shared by every stack of a grid."""

    device: str
    x_all: torch.Tensor
    y_all: torch.Tensor
    tr: np.ndarray
    va: np.ndarray
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    y_mean: float


def to_device(data: CacheData, device: str) -> DeviceData:
    x_all = torch.from_numpy(data.features).to(device)
    y_all = torch.from_numpy(data.label).to(device)
    tr, va = data.subset("train"), data.subset("val")
    tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
    y_tr = y_all[tr_t]
    return DeviceData(device=device, x_all=x_all, y_all=y_all, tr=tr, va=va, x_tr=x_all[tr_t], y_tr=y_tr,
                      x_va=x_all[va_t], y_va=y_all[va_t], y_mean=float(y_tr.mean()) if len(tr) else 0.0)


def check_data(data: CacheData, cfg: TrainConfig, bins: Bins) -> None:
    """What train_head refuses or warns about, before any training."""
    if bins.n < 2:
        raise ConfigError(f"--bin-size {cfg.bin_size:g} leaves a single label bin over {bins.lo:g}-{bins.hi:g}")
    tr, va = data.subset("train"), data.subset("val")
    if len(tr) == 0:
        raise ConfigError(f"cache {data.path} has no training images (split 'train'); nothing to train on")
    if len(va) == 0:
        log.warning("cache %s has no validation images: the last epoch is kept instead of the best one", data.path)
    n_out = bins.out_of_range(data.label[tr])
    if n_out:
        log.warning("%d training label(s) lie outside [%g, %g]: counted in the end bins", n_out, bins.lo, bins.hi)


def check_fds_bins(cfg: TrainConfig, bins: Bins) -> None:
    """FDS reflect-pads the bin axis by half its window: it needs more bins."""
    half = (cfg.fds.ks - 1) // 2
    if cfg.fds.enabled and bins.n <= half:
        raise ConfigError(f"FDS kernel size {cfg.fds.ks} needs more than {half} label bins, there are {bins.n}; "
                          "use a smaller --fds-ks or --bin-size")


@dataclass
class TrainingRows:
    """The training rows as a stack trains on them: the loss weights of each
    configuration ``[K, N]`` (LDS, --reweight or DenseWeight) and, only when
    FDS or RankSim needs them, the rows' label bins and the bins' counts."""

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    bins: torch.Tensor | None
    count: torch.Tensor | None
    batch_size: int

    @classmethod
    def of(cls, data: CacheData, dev: DeviceData, cfgs: Sequence[TrainConfig], bins: Bins, *,
           need_bins: bool = False) -> "TrainingRows":
        labels = data.label[dev.tr]
        computed: dict = {}  # equal weights once (a stack of seeds of one setting)
        for c in cfgs:
            key = (c.method.name, c.method.dw_alpha, c.method.dw_eps, c.lds)
            if key not in computed:
                computed[key] = loss_weights(c, labels, bins)
        weights = torch.from_numpy(np.stack([computed[(c.method.name, c.method.dw_alpha, c.method.dw_eps, c.lds)]
                                             for c in cfgs])).to(dev.device)
        b_tr = count = None  # no bins at all unless FDS or RankSim needs them (loss weights are per image)
        if cfgs[0].fds.enabled or need_bins:
            b_tr = torch.from_numpy(bins.index(labels)).to(dev.device)
            count = torch.bincount(b_tr, minlength=bins.n).float()
        return cls(dev.x_tr, dev.y_tr, weights, b_tr, count, cfgs[0].batch_size)

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, perm: torch.Tensor) -> Iterator[tuple]:
        """``(x, y, weights, bins, n_rows)`` per batch, each configuration's
        rows in its own order ``perm`` [K, N]."""
        n, bs = len(self), self.batch_size
        for i in range(0, n, bs):
            if bs >= n:  # the order of one full batch does not matter: no gather
                shared_bins = self.bins.expand(len(perm), -1) if self.bins is not None else None
                yield self.x, self.y.expand(len(perm), -1), self.weights, shared_bins, n
            else:
                idx = perm[:, i:i + bs]
                yield (self.x[idx], self.y[idx], self.weights.gather(1, idx),
                       self.bins[idx] if self.bins is not None else None, idx.shape[1])

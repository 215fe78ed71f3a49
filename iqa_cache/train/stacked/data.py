"""The data side of a stack: the cache's rows on the device (or, for a cache
loaded without its features, read from the file as needed), the checks made
before training, and the training rows with each configuration's loss
weights, batched in each configuration's own order (``--shuffle rows``) or
in the stack's one chunked order (``--shuffle chunks``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ...binning import Bins
from ...cache import CacheData, RowReader
from ...errors import ConfigError
from ..config import TrainConfig
from ..priors import loss_weights

log = logging.getLogger(__name__)


@dataclass
class DeviceData:
    """A loaded cache on the device, shared by every stack of a grid.  The
    ``x_*`` features are None for a streamed cache (``data.features`` None):
    ``reader`` then reads them from the file.  Evaluation passes
    (:meth:`blocks`) go ``block_rows`` rows at a time; None: in one block
    (in memory only).  In memory and streamed, equal blocks give equal
    numbers, bit for bit."""

    device: str
    x_all: torch.Tensor | None
    y_all: torch.Tensor
    tr: np.ndarray
    va: np.ndarray
    x_tr: torch.Tensor | None
    y_tr: torch.Tensor
    x_va: torch.Tensor | None
    y_va: torch.Tensor
    y_mean: float
    reader: RowReader | None = None
    block_rows: int | None = None

    def blocks(self, which: str) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, features)`` over the rows of ``which`` (train, val or
        all) in file order."""
        if self.reader is None:
            x = {"train": self.x_tr, "val": self.x_va, "all": self.x_all}[which]
            step = self.block_rows or max(1, len(x))
            for a in range(0, max(1, len(x)), step):
                yield a, x[a:a + step]
            return
        pos = {"train": self.tr, "val": self.va, "all": np.arange(len(self.y_all))}[which]
        for a, x in self.reader.blocks(pos, self.block_rows):
            yield a, torch.from_numpy(x).to(self.device)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.__exit__(None, None, None)


def to_device(data: CacheData, device: str, block_rows: int | None = None, *,
              shared: DeviceData | None = None) -> DeviceData:
    """``data``'s labels (and features, unless it is streamed: then a
    :class:`RowReader` opened on its file; :meth:`DeviceData.close` it) on
    ``device``; ``block_rows``: see :class:`DeviceData` (a streamed cache
    needs one).  ``shared``: the same cache's rows already on ``device``
    (in memory), whose features and labels are reused: only the split's
    row indices are new (another split of the same cache)."""
    if shared is not None and not data.streamed:
        tr, va = data.subset("train"), data.subset("val")
        tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
        y_tr = shared.y_all[tr_t]
        return DeviceData(device=device, x_all=shared.x_all, y_all=shared.y_all, tr=tr, va=va,
                          x_tr=shared.x_all[tr_t], y_tr=y_tr, x_va=shared.x_all[va_t], y_va=shared.y_all[va_t],
                          y_mean=float(y_tr.mean()) if len(tr) else 0.0, block_rows=block_rows)
    y_all = torch.from_numpy(data.label).to(device)
    tr, va = data.subset("train"), data.subset("val")
    tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
    y_tr = y_all[tr_t]
    y_mean = float(y_tr.mean()) if len(tr) else 0.0
    if data.streamed:
        if not block_rows:
            raise ValueError("a streamed cache is read in blocks: give block_rows")
        return DeviceData(device=device, x_all=None, y_all=y_all, tr=tr, va=va, x_tr=None, y_tr=y_tr, x_va=None,
                          y_va=y_all[va_t], y_mean=y_mean, reader=RowReader(data).__enter__(), block_rows=block_rows)
    x_all = torch.from_numpy(data.features).to(device)
    return DeviceData(device=device, x_all=x_all, y_all=y_all, tr=tr, va=va, x_tr=x_all[tr_t], y_tr=y_tr,
                      x_va=x_all[va_t], y_va=y_all[va_t], y_mean=y_mean, block_rows=block_rows)


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


def check_order(data: CacheData, cfg: TrainConfig) -> None:
    """A streamed cache is read chunk by chunk: only a chunked order can be read so."""
    if data.streamed and not cfg.order.chunked:
        raise ConfigError("--stream reads the cache chunk by chunk and needs --shuffle chunks (--shuffle rows "
                          "would read every row from another place in the file)")


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

    x: torch.Tensor | None
    y: torch.Tensor
    weights: torch.Tensor
    bins: torch.Tensor | None
    count: torch.Tensor | None
    batch_size: int
    dev: DeviceData | None = None  # where streamed features come from (x None)
    # drawn splits of several seeds in one stack: each configuration's training rows [K, N] (x, y, bins: all rows)
    rows_of: torch.Tensor | None = None

    @classmethod
    def of(cls, data: CacheData, dev: DeviceData, cfgs: Sequence[TrainConfig], bins: Bins, *,
           need_bins: bool = False, parts: Sequence[CacheData] | None = None) -> "TrainingRows":
        """``parts``: each configuration's drawn split, when they differ
        (their training rows are of equal counts)."""
        if parts is not None:
            return cls._of_parts(data, dev, cfgs, bins, need_bins, parts)
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
        return cls(dev.x_tr, dev.y_tr, weights, b_tr, count, cfgs[0].batch_size, dev)

    @classmethod
    def _of_parts(cls, data: CacheData, dev: DeviceData, cfgs: Sequence[TrainConfig], bins: Bins,
                  need_bins: bool, parts: Sequence[CacheData]) -> "TrainingRows":
        trs = [p.subset("train") for p in parts]
        if len({len(t) for t in trs}) > 1 or cfgs[0].fds.enabled or dev.x_all is None:
            raise ValueError("drawn splits share a stack only in memory, without FDS, with equal part sizes")
        computed: dict = {}
        weights = []
        for c, p, tr in zip(cfgs, parts, trs):
            key = (c.method.name, c.method.dw_alpha, c.method.dw_eps, c.lds, c.split)
            if key not in computed:
                computed[key] = loss_weights(c, p.label[tr], bins)
            weights.append(computed[key])
        b_all = torch.from_numpy(bins.index(data.label)).to(dev.device) if need_bins else None
        return cls(dev.x_all, dev.y_all, torch.from_numpy(np.stack(weights)).to(dev.device), b_all, None,
                   cfgs[0].batch_size, dev, rows_of=torch.from_numpy(np.stack(trs)).to(dev.device))

    def __len__(self) -> int:
        return int(self.rows_of.shape[1]) if self.rows_of is not None else len(self.y)

    def batches(self, perm: torch.Tensor | list[np.ndarray]) -> Iterator[tuple]:
        """``(x, y, weights, bins, n_rows)`` per batch, each configuration's
        rows in its own order ``perm`` [K, N], or all of them in one chunked
        order (``perm``: the windows of :func:`iqa_cache.train.order.chunk_windows`;
        ``x`` is then shared, ``[B, D]``)."""
        n, bs = len(self), self.batch_size
        if not isinstance(perm, torch.Tensor):
            yield from self._ordered_batches(perm)
            return
        if self.rows_of is not None:  # each configuration's own rows: positions → rows of the cache
            for i in range(0, n, bs):
                idx = perm[:, i:i + bs]
                rows = self.rows_of.gather(1, idx)
                yield (self.x[rows], self.y[rows], self.weights.gather(1, idx),
                       self.bins[rows] if self.bins is not None else None, idx.shape[1])
            return
        for i in range(0, n, bs):
            if bs >= n:  # the order of one full batch does not matter: no gather
                shared_bins = self.bins.expand(len(perm), -1) if self.bins is not None else None
                yield self.x, self.y.expand(len(perm), -1), self.weights, shared_bins, n
            else:
                idx = perm[:, i:i + bs]
                yield (self.x[idx], self.y[idx], self.weights.gather(1, idx),
                       self.bins[idx] if self.bins is not None else None, idx.shape[1])

    def _ordered_batches(self, windows: list[np.ndarray]) -> Iterator[tuple]:
        """The batches of one order for the whole stack, features gathered
        from memory or read window by window from the file (the same rows
        either way, so the same training)."""
        k, bs = self.weights.shape[0], self.batch_size
        device = self.weights.device
        order = torch.from_numpy(np.concatenate(windows)).to(device) if windows else torch.zeros(0, dtype=torch.long)
        xs = self._streamed_x(windows) if self.x is None else None
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            xb = next(xs) if xs is not None else self.x[idx]
            yield (xb, self.y[idx].expand(k, -1), self.weights[:, idx],
                   self.bins[idx].expand(k, -1) if self.bins is not None else None, len(idx))

    def _streamed_x(self, windows: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """Batch after batch of features in the order of ``windows``: each
        window's rows read from the file at once (in file order), then
        gathered batch by batch; a batch may span two windows."""
        dev, bs = self.dev, self.batch_size
        carry: list[torch.Tensor] = []  # the start of a batch that the previous window(s) began
        have = 0
        for w in windows:
            by_file = np.sort(w)
            buf = torch.from_numpy(dev.reader.read(dev.tr[by_file])).to(dev.device)
            local = torch.from_numpy(np.searchsorted(by_file, w)).to(dev.device)
            i = 0
            if carry:
                take = min(bs - have, len(w))
                carry.append(buf[local[:take]])
                have, i = have + take, take
                if have < bs:
                    continue
                yield torch.cat(carry)
                carry, have = [], 0
            while i + bs <= len(w):
                yield buf[local[i:i + bs]]
                i += bs
            if i < len(w):
                carry, have = [buf[local[i:]]], len(w) - i
            del buf, local  # one window in memory at a time
        if carry:
            yield torch.cat(carry)

"""Re-drawn splits (``--split-seed N``, grid key ``split``): train/val/test
drawn anew from a cache's labelled rows by ``--split-ratios``, stratified by
label range (the report's default ranges: :func:`~iqa_cache.metrics.default_edges`)
so that every range has rows in every part.

The draw depends only on the seed, the ratios and the cache's labels, never
on the method or its settings: every configuration with one split seed sees
the same parts (paired comparisons).  A split is a row selection: the
:class:`~iqa_cache.cache.CacheData` it returns shares the features array of
the one it was drawn from; only its ``split`` column is new.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..cache import CacheData
from ..metrics import bin_of, default_edges
from .config import SplitConfig

log = logging.getLogger(__name__)

__all__ = ["PARTS", "draw_split", "split_data", "part_sizes"]

PARTS = ("train", "val", "test")
UNLABELLED = "unlabelled"


def part_sizes(n: int, ratios: tuple[float, float, float]) -> np.ndarray:
    """How many of ``n`` rows go to train, val and test: the ratios' shares
    rounded by largest remainder, then every part with a positive ratio gets
    at least one row where ``n`` allows (taken from the largest part)."""
    r = np.asarray(ratios, np.float64) / sum(ratios)
    exact = r * n
    sizes = np.floor(exact).astype(np.int64)
    short = n - int(sizes.sum())
    if short:
        sizes[np.argsort(-(exact - sizes), kind="stable")[:short]] += 1
    want = (r > 0) & (sizes == 0)
    if want.any() and n >= int((r > 0).sum()):
        for i in np.flatnonzero(want):
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] += 1
    return sizes


def draw_split(labels: np.ndarray, label_range: tuple[float, float], seed: int,
               ratios: tuple[float, float, float]) -> np.ndarray:
    """The parts (``train``/``val``/``test``, ``unlabelled`` for rows
    without a finite label) of ``labels`` for ``seed``: within each label
    range the rows in a seeded random order, cut by :func:`part_sizes`."""
    labels = np.asarray(labels, np.float64)
    out = np.full(len(labels), UNLABELLED, dtype=object)
    rows = np.flatnonzero(np.isfinite(labels))
    if not len(rows):
        return out
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    edges = default_edges(label_range)
    rng_of = bin_of(labels[rows], edges)  # -1 outside the range: counted in the end ranges
    rng_of = np.where(rng_of >= 0, rng_of, np.where(labels[rows] < edges[0], 0, len(edges) - 2))
    order = np.argsort(rng_of, kind="stable")  # by range, each range's rows still in random order
    rows, rng_of = rows[order], rng_of[order]
    counts = np.bincount(rng_of, minlength=len(edges) - 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(rows)) - starts[rng_of]  # the row's place within its range
    cuts = np.stack([np.cumsum(part_sizes(int(c), ratios)) for c in counts])  # [ranges, 3]
    part = (pos[:, None] >= cuts[rng_of]).sum(1)
    out[rows] = np.asarray(PARTS, dtype=object)[part]
    thin = [i for i, c in enumerate(counts) if 0 < c < int((np.asarray(ratios) > 0).sum())]
    if thin:
        log.warning("split seed %d: label range(s) %s hold fewer rows than there are parts: not every part has "
                    "rows of them", seed, ", ".join(f"{edges[i]:g}-{edges[i + 1]:g}" for i in thin))
    return out


def split_data(data: CacheData, split: SplitConfig) -> CacheData:
    """``data`` with the split ``split`` asks for: itself for the cache's
    own (``seed`` None), else the same rows and features with a drawn
    ``split`` column."""
    if split.seed is None:
        return data
    parts = draw_split(data.label, data.label_range, split.seed, split.fractions)
    return replace(data, split=parts)

"""The order of the training rows in an epoch under ``--shuffle chunks``: a
pure function of (rows, epoch, seed, chunk size, buffer), so that training
from memory and training streamed from the file see the same batches.

The training rows (positions 0..n-1, in file order) are cut into chunks of
``chunk_rows`` consecutive rows.  Each epoch draws a permutation of the
chunks, groups it into windows of ``buffer`` chunks, and permutes the rows
within each window.  A window is what a streamed epoch holds in memory at a
time: ``buffer * chunk_rows`` rows, read chunk by chunk in file order.
"""
from __future__ import annotations

import numpy as np

__all__ = ["chunk_windows", "chunk_order"]


def chunk_windows(n: int, epoch: int, seed: int, chunk_rows: int, buffer: int) -> list[np.ndarray]:
    """The epoch's order of the positions ``0..n-1``, as one array per window
    (their concatenation is the order).  Each draw is seeded by ``(seed,
    epoch)`` alone: any epoch can be computed without the ones before."""
    if n <= 0:
        return []
    rng = np.random.default_rng([int(seed), int(epoch)])
    n_chunks = -(-n // chunk_rows)
    chunks = rng.permutation(n_chunks)
    out = []
    for w in range(0, n_chunks, buffer):
        starts = chunks[w:w + buffer] * chunk_rows
        sizes = np.minimum(starts + chunk_rows, n) - starts
        # the window's positions, chunk after chunk, without a Python loop over rows
        pos = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(sizes.sum())
        out.append(pos[rng.permutation(len(pos))])
    return out


def chunk_order(n: int, epoch: int, seed: int, chunk_rows: int, buffer: int) -> np.ndarray:
    """The epoch's order as one array (:func:`chunk_windows` concatenated)."""
    windows = chunk_windows(n, epoch, seed, chunk_rows, buffer)
    return np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)

"""Reading a cache's features a few rows at a time, for caches larger than
memory: :class:`RowReader` reads chosen rows of a cache loaded with
``load(..., features=False)`` as float32, in contiguous file spans."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import CacheError
from .files import _open
from .read import CacheData

# Rows closer than this in the file are read in one span (and the rows
# between them dropped): fewer, larger reads, never more than this many
# unwanted rows per gap.  A span is at most SPAN_ROWS file rows: the
# temporary copy a read makes stays small next to what it returns.
SPAN_GAP = 64
SPAN_ROWS = 4096


class RowReader:
    """The features of a cache's rows (positions into :class:`CacheData`,
    i.e. its embedded rows in file order), read from the file on demand as
    float32.  Rows whose features are not finite raise :class:`CacheError`
    naming the image, as :func:`~iqa_cache.cache.load` does for the whole
    array.  Use as a context manager (the file stays open in between)."""

    def __init__(self, data: CacheData, *, check_finite: bool = True):
        if data.rows is None:
            raise ValueError("RowReader needs a CacheData from load(), which records the file rows")
        self.data, self.check_finite = data, check_finite
        self.file_rows = np.asarray(data.rows, dtype=np.int64)
        self._f = None
        self.rows_read = 0  # rows taken from the file, dropped gap rows included

    def __enter__(self) -> "RowReader":
        self._f = _open(self.data.path)
        self._dset = self._f["embeddings"]
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    @property
    def dim(self) -> int:
        return self.data.feature_dim

    def read(self, positions: np.ndarray) -> np.ndarray:
        """float32 ``[len(positions), D]`` for increasing ``positions``."""
        if self._f is None:
            raise RuntimeError("RowReader is not open: use it as a context manager")
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        if len(positions) == 0:
            return out
        rows = self.file_rows[positions]
        gaps = np.flatnonzero(np.diff(rows) > SPAN_GAP) + 1
        starts = np.concatenate([[0], gaps])
        ends = np.concatenate([gaps, [len(rows)]])
        for a0, b0 in zip(starts, ends):
            a = int(a0)
            while a < b0:  # spans of at most SPAN_ROWS file rows
                b = int(np.searchsorted(rows, rows[a] + SPAN_ROWS, side="left", sorter=None))
                b = min(max(b, a + 1), int(b0))
                lo, hi = int(rows[a]), int(rows[b - 1]) + 1
                if hi - lo == b - a:
                    self._dset.read_direct(out, np.s_[lo:hi], np.s_[a:b])
                else:
                    out[a:b] = self._dset[lo:hi][rows[a:b] - lo]
                self.rows_read += hi - lo
                a = b
        if self.check_finite:
            bad = ~np.isfinite(out).all(axis=1)
            if bad.any():
                i = int(positions[np.flatnonzero(bad)[0]])
                raise CacheError(f"cache {self.data.path}: the embedding of image {self.data.image_id[i]} contains "
                                 "NaN or Inf; the cache is damaged, rebuild it with `iqa embed`")
        return out

    def blocks(self, positions: np.ndarray, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, features)`` for consecutive blocks of ``block_rows`` of
        the increasing ``positions`` (start: the block's offset in them)."""
        for a in range(0, len(positions), block_rows):
            yield a, self.read(positions[a:a + block_rows])

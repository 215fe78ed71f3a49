"""The one label-binning rule of the project.

Labels are decimals in a CSV (``1.4``, ``57.4286``) but reach the code as
binary floats, often float32 (``1.4`` is stored as 1.39999998): a plain
``floor((y - lo) / size)`` then puts a label that sits exactly on a bin edge
one bin low.  :func:`bin_index` gives every label the bin its *decimal* value
belongs to: a float within :data:`LABEL_RTOL` (relative) of an edge is taken
to be on that edge, anything else is binned as it is.

The guarantee: a decimal label with up to 6 significant digits, stored as
float32 or float64, lands in the bin of its exact decimal value, when the
edges are decimals of no more digits at the label's magnitude.  Float32 stores
such a label within 2**-24 (relative) of its value, while two different such
decimals are at least 1e-6 (relative) apart, so the tolerance, 2**-22, both
absorbs the storage error and keeps a genuine value just below an edge
(``1.3999`` with bins of 0.1) in its own bin.

Every bin computation (LDS, FDS, shot regions, the report's label ranges and
the plots) goes through :func:`bin_index`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

LABEL_RTOL = 2.0 ** -22  # 4 x float32's largest relative rounding error
MAX_BINS = 100_000  # more equal-width label bins than this is refused (a bad range or size)


def snap(values, edges: Sequence[float]) -> np.ndarray:
    """``values`` (float64, flat) with each value that lies within the
    tolerance of an edge replaced by that edge: the decimal value the float
    stands for.  ``edges``: at least two, increasing."""
    x = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    e = np.asarray(edges, dtype=np.float64)
    if not len(x):
        return x
    j = np.clip(np.searchsorted(e, x), 1, len(e) - 1)  # the two edges around each value
    for cand in (e[j - 1], e[j]):
        near = np.abs(x - cand) <= LABEL_RTOL * np.maximum(np.abs(x), np.abs(cand))
        x[near] = cand[near]
    return x


def bin_index(values, edges: Sequence[float], *, clip: bool = False) -> np.ndarray:
    """The bin (int64) of each value under increasing ``edges``: bin i holds
    ``edges[i] <= v < edges[i+1]``, the last bin also its upper edge.
    Values outside get -1, or with ``clip`` the end bins.  Values are first
    :func:`snap`-ped to the edges, so a float32 ``1.4`` is in the bin that
    starts at 1.4."""
    shape = np.shape(values)
    e = np.asarray(edges, dtype=np.float64)
    x = snap(values, e)
    idx = np.searchsorted(e, x, side="right") - 1
    idx[x == e[-1]] = len(e) - 2  # the last bin is closed
    if clip:
        idx = np.clip(idx, 0, len(e) - 2)
    else:
        idx[(x < e[0]) | (x > e[-1])] = -1
    return idx.astype(np.int64).reshape(shape)


def count_bins(lo: float, hi: float, size: float) -> int:
    """How many bins of ``size`` cover [lo, hi] (the last may be narrower);
    ``hi`` within the tolerance of an edge ends the bins there.  Computed
    without allocating anything per bin."""
    q = (hi - lo) / size
    k = round(q)
    edge = lo + k * size
    if abs(hi - edge) <= LABEL_RTOL * max(abs(hi), abs(edge)):
        return max(1, int(k))
    return max(1, int(np.ceil(q)))


def equal_edges(lo: float, hi: float, size: float, n: int) -> np.ndarray:
    """The n + 1 edges lo, lo + size, ..., hi (the last one is ``hi``)."""
    e = lo + size * np.arange(n + 1, dtype=np.float64)
    e[-1] = hi
    return np.minimum(e, hi)


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def parse_decimal(text: str, *, finite: bool = True) -> float:
    """A number written the plain way (ASCII digits, '.', an optional sign
    and exponent: '1.5', '-2', '3e2').  Python's ``float`` also takes '1_5'
    and full-width digits; those are refused here.  ValueError with the
    reason, to follow the text ("is not a number ..."); with ``finite``
    (the default) also for nan and inf."""
    t = str(text).strip()
    if _DECIMAL.fullmatch(t):
        x = float(t)
        if finite and not np.isfinite(x):
            raise ValueError("is not a finite number (too large)")
        return x
    if t.lower() in _NON_FINITE:
        if finite:
            raise ValueError("is not a finite number")
        return float(t)
    raise ValueError("is not a number (write it with the digits 0-9 and '.', e.g. 1.5)")


@dataclass(frozen=True)
class Bins:
    """Equal-width label bins over [lo, hi]: ``n`` bins of width ``size``
    (the last one may be narrower).  Labels below ``lo`` go to bin 0, labels
    at or above ``hi`` to the last bin.  A label is binned by its decimal
    value (:func:`bin_index`): a float32 1.4 is in the bin
    that starts at 1.4.  More than :data:`MAX_BINS` bins
    are refused."""

    lo: float = 0.0
    hi: float = 100.0
    size: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ConfigError(f"label range [{self.lo}, {self.hi}] is not a range (need lo < hi)")
        if not (math.isfinite(self.size) and self.size > 0):
            raise ConfigError(f"--bin-size must be a positive number, got {self.size}")
        if self.size > self.hi - self.lo:
            raise ConfigError(f"--bin-size {self.size:g} is larger than the label range "
                              f"[{self.lo:g}, {self.hi:g}]")
        q = (self.hi - self.lo) / self.size
        if not q <= MAX_BINS + 1:
            raise ConfigError(f"--bin-size {self.size:g} over the label range [{self.lo:g}, {self.hi:g}] makes "
                              f"{q:.4g} label bins, more than {MAX_BINS}: pass --label-range LO,HI (labels "
                              "outside go to the end bins) or a larger --bin-size")
        object.__setattr__(self, "_n", count_bins(self.lo, self.hi, self.size))
        if self._n > MAX_BINS:
            raise ConfigError(f"--bin-size {self.size:g} over the label range [{self.lo:g}, {self.hi:g}] makes "
                              f"{self._n} label bins, more than {MAX_BINS}: pass --label-range LO,HI (labels "
                              "outside go to the end bins) or a larger --bin-size")

    @property
    def n(self) -> int:
        return self._n

    def index(self, labels) -> np.ndarray:
        """Bin of each label (int64), clipped into [0, n-1]."""
        return bin_index(np.asarray(labels, dtype=np.float64), self.edges(), clip=True)

    def index_t(self, labels: "torch.Tensor") -> "torch.Tensor":
        """:meth:`index` of a tensor, as a long tensor on its device."""
        import torch
        idx = self.index(labels.detach().double().cpu().numpy())
        return torch.from_numpy(idx).to(labels.device)

    def out_of_range(self, labels) -> int:
        """How many labels lie outside [lo, hi] (by their decimal value)."""
        return int((bin_index(np.asarray(labels, dtype=np.float64), (self.lo, self.hi)) < 0).sum())

    def counts(self, labels) -> np.ndarray:
        return np.bincount(self.index(labels), minlength=self.n)

    def edges(self) -> np.ndarray:
        return equal_edges(self.lo, self.hi, self.size, self.n)



# ------------------------------------------------------------ label scales

# the scales labels come on (0-1 probabilities, 1-5 and 1-10 MOS, 0-4 and 0-5 ratings, 0-10, KonIQ's 0-100),
# tried in this order: the first that holds every label is the one a cache records when none is declared
COMMON_SCALES: tuple[tuple[float, float], ...] = (
    (0.0, 1.0), (1.0, 5.0), (0.0, 4.0), (0.0, 5.0), (1.0, 10.0), (0.0, 10.0), (0.0, 100.0))


def default_label_range(labels) -> tuple[float, float]:
    """The label range a cache records when the user declares none: the
    first of :data:`COMMON_SCALES` that holds every (finite) label, so that
    label ranges and bins fall on round numbers ([0,20) ... [80,100] for
    labels 4-98 on KonIQ's scale); else the whole numbers around them."""
    y = np.asarray(labels, dtype=np.float64)
    y = y[np.isfinite(y)]
    if len(y) == 0:
        return COMMON_SCALES[-1]
    lo, hi = float(y.min()), float(y.max())
    for a, b in COMMON_SCALES:
        if a <= lo and hi <= b:
            return a, b
    lo, hi = float(math.floor(lo)), float(math.ceil(hi))
    return lo, hi if hi > lo else lo + 1.0


def label_range_note(labels, label_range: Sequence[float], declared: str = "") -> str:
    """One line saying which scale a cache's labels were put on and why:
    ``declared`` names who chose it (``--label-range``, a dataset's own
    scale); else it was :func:`default_label_range`'s choice."""
    y = np.asarray(labels, dtype=np.float64)
    y = y[np.isfinite(y)]
    lo, hi = (float(x) for x in label_range)
    seen = f"labels {y.min():g}–{y.max():g}" if len(y) else "no labels"
    if declared:
        why = declared
    elif (lo, hi) in COMMON_SCALES:
        why = "the first common scale that holds them; --label-range LO,HI declares another"
    else:
        why = "no common scale holds them: the whole numbers around them; --label-range LO,HI declares the scale"
    return f"{seen} on the scale {lo:g}–{hi:g} ({why})"

"""Evaluation metrics on (label, prediction) pairs."""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_EDGES = (0.0, 20.0, 40.0, 60.0, 80.0, 100.0)


def mae(labels, preds) -> float:
    labels, preds = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    return float(np.mean(np.abs(labels - preds))) if len(labels) else float("nan")


def _fmt(x: float) -> str:
    return f"{x:g}"


def bin_names(edges: Sequence[float]) -> list[str]:
    """'[0,20)', ..., '[80,100]': half-open bins, the last one closed."""
    e = list(edges)
    names = [f"[{_fmt(a)},{_fmt(b)})" for a, b in zip(e[:-2], e[1:-1])]
    names.append(f"[{_fmt(e[-2])},{_fmt(e[-1])}]")
    return names


def bin_of(labels, edges: Sequence[float]) -> np.ndarray:
    """Index of each label's bin under ``edges`` (-1 outside [e0, e_last])."""
    labels = np.asarray(labels, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, labels, side="right") - 1
    idx[labels == e[-1]] = len(e) - 2  # the last bin is closed
    idx[(labels < e[0]) | (labels > e[-1])] = -1
    return idx


def per_bin_mae(labels, preds, edges: Sequence[float] = DEFAULT_EDGES) -> dict[str, tuple[float, int]]:
    """{bin name: (MAE, count)} for each bin, then 'All'.  Empty bins give
    NaN with count 0."""
    labels, preds = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    idx = bin_of(labels, edges)
    out: dict[str, tuple[float, int]] = {}
    err = np.abs(labels - preds)
    for i, name in enumerate(bin_names(edges)):
        m = idx == i
        out[name] = (float(err[m].mean()) if m.any() else float("nan"), int(m.sum()))
    out["All"] = (float(err.mean()) if len(err) else float("nan"), int(len(err)))
    return out


def parse_edges(text: str) -> list[float]:
    """'0,20,40,60,80,100' → increasing floats; ValueError naming the problem."""
    try:
        e = [float(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ValueError(f"--bins '{text}' is not a comma-separated list of numbers") from None
    if len(e) < 2:
        raise ValueError(f"--bins '{text}' needs at least two edges")
    if any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"--bins '{text}' must be strictly increasing")
    return e


def default_edges(label_range: tuple[float, float]) -> list[float]:
    """0,20,...,100 for 0-100 labels; five equal bins over other ranges."""
    lo, hi = label_range
    return list(np.linspace(lo, hi, 6))

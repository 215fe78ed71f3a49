"""PNG plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def per_bin_bars(table, path: str | os.PathLike) -> Path:
    """Grouped bars: MAE per label range, one colour per run (the table as a
    picture), with the number of images per range under each group."""
    plt = _plt()
    path = Path(path)
    names = table.columns
    n_runs = max(1, len(table.rows))
    x = np.arange(len(names))
    width = 0.8 / n_runs
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 1.5), 4.0), dpi=120)
    for i, (run, vals) in enumerate(table.rows):
        v = np.array([np.nan if val is None else val for val in vals], dtype=float)
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(v), width, label=run)
    labels = list(names)
    if table.counts:
        labels = [f"{n}\nn={c}" for n, c in zip(names, table.counts)]
    ax.set_xticks(x, labels)
    ax.set_ylabel("MAE (lower is better)")
    ax.set_title(table.title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(3, n_runs))
    if table.notes:
        fig.text(0.01, 0.01, "\n".join(table.notes)[:400], fontsize=6, color="darkred", va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.28)
    else:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

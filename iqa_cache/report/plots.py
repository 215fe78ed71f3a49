"""PNG plots (matplotlib, Agg backend: no display needed).

:func:`write_plots` writes every plot of a report: the label histogram per
split with the LDS bins (paper Fig. 3), the empirical vs LDS-smoothed label
density and the resulting weights (paper Fig. 4), MAE per label range as bars
(the Table 1 form as a picture) and predicted vs true scores, one panel per
run.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import WriteError
from ..train.config import LDSConfig, default_reweight
from ..train.kernels import INVERSE_CLIP

log = logging.getLogger(__name__)

SHOT_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52"}
BASELINE_COLOUR = "#9a9a9a"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, notes: Sequence[str] = ()) -> None:
    """Lay the figure out, keeping room at the bottom for the warnings
    (wrapped to the figure's width) so that nothing overlaps."""
    import textwrap

    w_in, h_in = fig.get_size_inches()
    lines = [ln for n in notes for ln in textwrap.wrap(n, width=max(40, int(w_in * 17)))]
    frac = min(0.4, (len(lines) * 7 * 1.35 / 72 + 0.25) / h_in) if lines else 0.0
    fig.tight_layout(rect=(0, frac, 1, 1))
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="darkred", va="bottom", ha="left")


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path``: into a temporary file next to it,
    renamed over ``path`` only once complete, so a full disk leaves no empty
    or truncated PNG behind (WriteError naming the path instead)."""
    plt = _plt()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(f"cannot write plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path


def per_bin_bars(table, path: str | os.PathLike) -> Path:
    """Grouped bars: MAE per label range, one colour per run or seed group
    (the table as a picture; seed groups with ± std error bars), the
    number of images per range under each group.  The train-mean baseline is
    a grey dashed line over each group, not a bar, so that it does not flatten
    the runs' bars; where it is off the scale an arrow gives its value.  An
    empty range has no bar and says so."""
    from . import Stat

    plt = _plt()
    path = Path(path)
    names = table.columns
    runs = [(n, v) for i, (n, v) in enumerate(table.rows) if table.kind(i) != "baseline"]
    bases = [(n, v) for i, (n, v) in enumerate(table.rows) if table.kind(i) == "baseline"]
    n_runs = max(1, len(runs))
    x = np.arange(len(names))
    width = 0.8 / n_runs
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(names) * max(1.0, n_runs / 3) + 2.5) + 2.5, 4.8), dpi=120)
    colours = iter(plt.get_cmap("tab10").colors)
    top, any_err = 0.0, False
    for i, (run, vals) in enumerate(runs):
        mean = np.array([np.nan if v is None else (v.mean if isinstance(v, Stat) else v) for v in vals], float)
        err = np.array([v.std if isinstance(v, Stat) and v.std is not None else 0.0 for v in vals], float)
        any_err |= bool(err.any())
        ok = np.isfinite(mean)
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs[ok], mean[ok], width, yerr=err[ok] if err.any() else None, capsize=3, label=run,
               color=next(colours))
        if ok.any():
            top = max(top, float(np.nanmax(mean + err)))
        for xi in xs[~ok]:
            ax.text(xi, 0, "empty", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
    if not runs:
        top = max([float(v) for _, vals in bases for v in vals if v is not None] + [1.0])
    ylim = top * 1.3 if top > 0 else 1.0
    for j, (name, vals) in enumerate(bases):
        for xi, v in zip(x, vals):
            if v is None:
                continue
            if v <= ylim:
                ax.hlines(v, xi - 0.42, xi + 0.42, colors=BASELINE_COLOUR, linestyles="--", lw=2,
                          label=name if xi == x[0] else None)
            else:
                ax.annotate(f"{v:.3g} ↑", (xi, ylim * (0.97 - 0.07 * j)), ha="center", va="top", fontsize=8,
                            color="dimgrey")
                if xi == x[0]:
                    ax.plot([], [], color=BASELINE_COLOUR, ls="--", lw=2, label=f"{name} (↑: off the scale)")
    labels = list(names)
    if table.counts:
        labels = [f"{n}\nn={c}" for n, c in zip(names, table.counts)]
    ax.set_xticks(x, labels)
    ax.set_xlabel("true label range" + (" (n: images in the range)" if table.counts else ""))
    ax.set_ylabel("MAE (lower is better)" + (", ± std over seeds" if any_err else ""))
    ax.set_ylim(0, ylim)
    ax.set_title(table.title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _finish(fig, table.notes)
    return _save(fig, path)


def label_histogram(run, path: str | os.PathLike, *, many: int = 100, few: int = 20,
                    edges: Sequence[float] | None = None, notes: Sequence[str] = ()) -> Path:
    """Label histogram per split over the run's LDS bins (paper Fig. 3):
    one panel per split; training bars coloured by shot region (how many
    training images the bin holds), the label ranges of the tables as dotted
    lines."""
    from ..metrics import shot_of_bins
    from . import run_bins

    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    bins = run_bins(run)
    be = bins.edges()
    p = run.predictions
    splits = [s for s in ("train", "val", "test") if (p["split"] == s).any()]
    fig, axes = plt.subplots(len(splits), 1, figsize=(9, 2.3 * len(splits) + 1.0), dpi=120, sharex=True,
                             squeeze=False)
    shot = shot_of_bins(bins.counts(p.loc[p["split"] == "train", "label"].dropna()), many, few)
    for ax, s in zip(axes[:, 0], splits):
        lab = p.loc[p["split"] == s, "label"].dropna().to_numpy(float)
        c = bins.counts(lab)
        if s == "train":
            for k in ("many", "medium", "few"):
                m = shot == k
                if not (c[m] > 0).any():  # no visible bar of this kind (e.g. only empty few-shot bins)
                    continue
                rule = {"many": f"> {many}", "medium": f"{few}–{many}", "few": f"< {few}"}[k]
                ax.bar(be[:-1][m], c[m], width=np.diff(be)[m], align="edge", color=SHOT_COLOURS[k],
                       label=f"{k}-shot bins ({rule} training images)")
        else:
            ax.bar(be[:-1], c, width=np.diff(be), align="edge", color="#55a868", label=f"{s} images")
        for j, e in enumerate(list(edges or [])[1:-1]):
            ax.axvline(e, color="black", ls=":", lw=0.8, label="label ranges of the MAE table" if j == 0 else None)
        ax.legend(fontsize="small", loc="best")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("images per bin")
        ax.set_title(f"{s}: {len(lab)} images", fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[-1, 0].set_xlabel(f"label ({run.cache.get('label_name') or 'score'}); bins of {bins.size:g} "
                           f"over [{bins.lo:g}, {bins.hi:g}] (the LDS/FDS bins)")
    axes[-1, 0].set_xlim(bins.lo, bins.hi)
    fig.suptitle(f"Label histogram per split ({run.cache.get('dataset') or run.name})")
    _finish(fig, notes)
    return _save(fig, Path(path))


def lds_density(run, path: str | os.PathLike, lds: dict | None = None, subtitle: str = "") -> Path:
    """Empirical vs LDS-smoothed label density, and the loss weight per bin
    that results (paper Fig. 4), from the run's training labels and LDS
    settings (or ``lds``)."""
    from . import lds_curves

    plt = _plt()
    cur = lds_curves(run, lds)
    e = cur["edges"]
    mid = (e[:-1] + e[1:]) / 2
    cfg = cur["config"]
    what = {"sqrt_inv": "sqrt(count)", "inverse": f"count clipped to [{INVERSE_CLIP[0]}, {INVERSE_CLIP[1]}]"}.get(
        cur["reweight"], "count")
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6.2), dpi=120, sharex=True)
    a1.bar(e[:-1], cur["empirical"], width=np.diff(e), align="edge", color="#c0c0c0",
           label=f"empirical: {what} per bin")
    smooth_label = (f"LDS-smoothed: {cfg.get('kernel')} kernel, ks {cfg.get('ks')}, σ {cfg.get('sigma')}"
                    if cfg.get("enabled") else "no smoothing (LDS off: the empirical values are inverted as they are)")
    a1.plot(mid, cur["smoothed"], color="#c44e52", lw=2, label=smooth_label)
    a1.set_ylabel("density (sums to 1)")
    a1.set_title("Training label density: empirical vs LDS-smoothed", fontsize=10, loc="left")
    a1.legend(fontsize="small", loc="upper left")
    a1.grid(alpha=0.3)
    w = cur["weight"]
    a2.step(mid, cur["weight_any"], where="mid", color="#4c72b0", lw=0.8, ls=":",
            label="weight a label there would get")
    a2.step(mid, w, where="mid", color="#4c72b0", lw=1.8, label="loss weight of the training images in the bin")
    a2.axhline(1.0, color="black", ls="--", lw=0.8, label="weight 1 (the mean over training images)")
    empty = ~np.isfinite(w)
    if empty.any():
        a2.plot(mid[empty], np.zeros(empty.sum()), "x", color="grey", ms=3, label="no training image in the bin")
    a2.set_ylabel("loss weight")
    a2.set_xlabel(f"label; bins of {cur['bins'].size:g} over [{cur['bins'].lo:g}, {cur['bins'].hi:g}]")
    a2.set_title(f"Resulting weight per bin: 1 / smoothed {what}, scaled to mean 1", fontsize=10, loc="left")
    a2.legend(fontsize="small", loc="upper center")
    a2.grid(alpha=0.3)
    a2.set_xlim(cur["bins"].lo, cur["bins"].hi)
    fig.suptitle("LDS re-weighting" + (f" — {subtitle}" if subtitle else ""))
    _finish(fig)
    return _save(fig, Path(path))


def pred_vs_true(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike, *,
                 label_range: tuple[float, float] | None = None, split: str = "test",
                 notes: Sequence[str] = ()) -> Path:
    """Predicted vs true score, one panel per (name, labels, predictions),
    with the identity line and the panel's MAE, SRCC and n."""
    from scipy.stats import spearmanr

    plt = _plt()
    n = max(1, len(panels))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.2 * nrows + 0.5), dpi=110, squeeze=False)
    if label_range is None:
        allv = np.concatenate([np.concatenate([y, p]) for _, y, p in panels]) if panels else np.array([0.0, 1.0])
        label_range = (float(np.min(allv)), float(np.max(allv)))
    lo, hi = label_range
    preds = np.concatenate([p for _, _, p in panels]) if panels else np.array([])
    ylo = min(lo, float(preds.min())) if len(preds) else lo
    yhi = max(hi, float(preds.max())) if len(preds) else hi
    pad = 0.03 * (hi - lo)
    for ax, (name, y, p) in zip(axes.flat, panels):
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="prediction = truth")
        ax.scatter(y, p, s=8 if len(y) < 2000 else 3, alpha=0.6 if len(y) < 2000 else 0.35, color="#4c72b0",
                   edgecolors="none")
        mae = float(np.mean(np.abs(y - p))) if len(y) else float("nan")
        defined = len(y) > 1 and np.std(y) > 0 and np.std(p) > 0
        srcc = f"{spearmanr(p, y)[0]:.3f}" if defined else "–"
        ax.text(0.03, 0.97, f"MAE {mae:.3f}\nSRCC {srcc}\nn = {len(y)}", transform=ax.transAxes, va="top",
                fontsize=9, bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(ylo - pad, yhi + pad)  # the same scale in every panel
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("true label")
        ax.set_ylabel("predicted")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Predicted vs true ({split} split)")
    _finish(fig, notes)
    return _save(fig, Path(path))


def _suffix(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def write_plots(report, out_dir: str | os.PathLike) -> list[Path]:
    """All plots of ``report`` into ``out_dir``: label_histogram.png,
    lds_density.png, per_bin_mae.png, pred_vs_true.png (with a run-name
    suffix where runs on different data, or with different LDS settings,
    need more than one)."""
    from dataclasses import asdict, replace

    from . import ReportConfig, build_report, data_key, range_edges, split_arrays

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot make the plot folder {out}: {e.strerror or e}") from None
    cfg = report.config
    runs = report.runs
    random_note = [n for n in report.notes if n.startswith("warning:")]  # warnings travel with the pictures
    written: list[Path] = []

    # 1. label histogram per split, one per distinct data set and bins
    data: dict[tuple, object] = {}
    for r in runs:
        data.setdefault((data_key(r, "train"), data_key(r, cfg.split), str(r.config.get("bins"))), r)
    ranges = next((t for t in report.tables if t.key == "ranges"), None)
    edges = range_edges(runs, cfg.edges)
    for r in data.values():
        name = "label_histogram.png" if len(data) == 1 else f"label_histogram_{_suffix(r.name)}.png"
        written.append(label_histogram(r, out / name, many=cfg.many, few=cfg.few, edges=edges, notes=random_note))

    # 2. LDS density and weights, one per distinct (data, LDS settings) among re-weighted runs
    lds_runs: dict[tuple, object] = {}
    for r in runs:
        lds = r.config.get("train", {}).get("lds", {})
        if lds.get("reweight", "none") != "none":
            lds_runs.setdefault((data_key(r, "train"), str(r.config.get("bins")), json_key(lds)), r)
    if lds_runs:
        for r in lds_runs.values():
            name = "lds_density.png" if len(lds_runs) == 1 else f"lds_density_{_suffix(r.name)}.png"
            written.append(lds_density(r, out / name, subtitle=f"as used by {r.name}"))
    else:
        default = asdict(LDSConfig(enabled=True, reweight=default_reweight(True)))  # LDS as --lds turns it on
        written.append(lds_density(runs[0], out / "lds_density.png", lds=default,
                                   subtitle="no run here uses it; DIR defaults shown"))

    # 3. MAE per label range (reuse the report's table, or build it)
    if ranges is None:
        ranges = build_report(runs, ReportConfig(split=cfg.split, edges=cfg.edges, tables=("ranges",),
                                                 group_seeds=cfg.group_seeds, baseline=cfg.baseline)).tables[0]
    written.append(per_bin_bars(replace(ranges, notes=random_note), out / "per_bin_mae.png"))

    # 4. predicted vs true, one panel per run
    panels = []
    names = {id(r): e.name if e.kind == "run" else f"{e.name.rsplit(' (', 1)[0]} seed {r.config['train'].get('seed')}"
             for e in report.entries for r in e.runs}
    for r in runs:
        _, y, p = split_arrays(r, cfg.split)
        panels.append((names[id(r)], y, p))
    lr = {r.label_range for r in runs}
    written.append(pred_vs_true(panels, out / "pred_vs_true.png", label_range=next(iter(lr)) if len(lr) == 1 else None,
                                split=cfg.split, notes=random_note))
    return written


def json_key(d: dict) -> str:
    import json

    return json.dumps(d, sort_keys=True, default=str)

"""``iqa report --compare``: a paired bootstrap of the MAE difference
between two runs or seed groups, overall and per label range; ``--versus``:
every row against one, on seed-averaged predictions, with the seeds'
agreement, per label range, overall, per shot region and for SRCC/PLCC."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RunError
from ..metrics import (
    CORRELATIONS,
    SHOTS,
    bin_names,
    bin_of,
    correlation,
    paired_bootstrap,
    paired_bootstrap_corr,
    shot_of_bins,
)
from .loading import range_edges, run_bins, run_seed, split_arrays, train_labels
from .types import Comparison, Entry, Versus, VersusCell


def find_entry(entries: list[Entry], path: str, option: str = "--compare") -> Entry:
    """The row (run or seed group) that holds the run directory ``path``."""
    target = Path(path).resolve()
    for e in entries:
        if any(r.path.resolve() == target for r in e.runs):
            return e
    raise RunError(f"{option} {path}: not among the finished runs of this report")


def predictions_matrix(entry: Entry, split: str, option: str = "--compare"
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids sorted, labels, predictions per seed × image) of an entry."""
    ids0, lab0 = None, None
    preds = []
    for r in entry.runs:
        ids, lab, pred = split_arrays(r, split)
        order = np.argsort(ids, kind="stable")
        ids, lab, pred = ids[order], lab[order], pred[order]
        if ids0 is None:
            ids0, lab0 = ids, lab
        elif len(ids) != len(ids0) or not np.array_equal(ids, ids0):
            raise RunError(f"{option}: runs of '{entry.name}' have different {split} images; cannot pair them")
        preds.append(pred)
    return ids0, lab0, np.stack(preds)


def errors_matrix(entry: Entry, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids sorted, labels, |error| per seed × image) of an entry."""
    ids, lab, pred = predictions_matrix(entry, split)
    return ids, lab, np.abs(lab - pred)


def compare_entries(entries: list[Entry], paths: tuple[str, str], *, split: str,
                    edges: Sequence[float] | None = None, n_boot: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> Comparison:
    """The paired bootstrap of MAE(A) − MAE(B), A and B the rows holding
    the two run directories ``paths``: over the images of ``split`` (the
    same for both) and, for seed groups, over their seeds; per label range
    (``edges``, default the tables' ranges) within the range."""
    a, b = find_entry(entries, paths[0]), find_entry(entries, paths[1])
    if a is b:
        raise RunError(f"--compare {paths[0]} {paths[1]}: both are in '{a.name}'; compare two "
                       "different runs or seed groups (or pass --no-group-seeds)")
    ids_a, lab_a, ea = errors_matrix(a, split)
    ids_b, _, eb = errors_matrix(b, split)
    if len(ids_a) != len(ids_b) or not np.array_equal(ids_a, ids_b):
        raise RunError(f"--compare: '{a.name}' and '{b.name}' have different {split} images "
                       f"({len(ids_a)} vs {len(ids_b)}); a paired comparison needs the same images")
    if not len(ids_a):
        raise RunError(f"--compare: no {split} images with labels to compare on")
    edges = range_edges([r for e in (a, b) for r in e.runs], edges)
    idx = bin_of(lab_a, edges)
    strata = {name: np.flatnonzero(idx == i) for i, name in enumerate(bin_names(edges))}
    diffs = paired_bootstrap(ea, eb, strata, n_boot=n_boot, seed=seed, confidence=confidence)
    return Comparison(a=a.name, b=b.name, n_seeds_a=len(a.runs), n_seeds_b=len(b.runs), n_images=len(ids_a),
                      n_boot=n_boot, seed=seed, confidence=confidence, split=split, diffs=diffs)


def _seed_pairs(a: Entry, b: Entry) -> list[tuple[int, int | None]]:
    """Run indices of A paired with B's run of the same seed; ``None``: B's
    seed average (B has no run of that seed)."""
    b_seed = {run_seed(r): j for j, r in enumerate(b.runs)}
    return [(i, b_seed.get(run_seed(r))) for i, r in enumerate(a.runs)]


def scale_decimals(label_range: tuple[float, float], base: int = 2) -> int:
    """Decimals for MAE-like numbers on a label scale: ``base`` on a span of
    100 (KonIQ's 0-100: 2), one more per factor of ten narrower (0-5, 1-5,
    0-4 and 0-1: 4)."""
    span = float(label_range[1]) - float(label_range[0])
    return base + max(0, math.ceil(math.log10(100.0 / span) - 1e-9)) if span > 0 else base


def versus_entries(entries: list[Entry], base_path: str, *, split: str, edges: Sequence[float] | None = None,
                   n_boot: int = 2000, seed: int = 0, confidence: float = 0.95, many: int = 100,
                   few: int = 20) -> Versus:
    """Every row against the row holding ``base_path``: per label range,
    overall and per many/medium/few-shot region (``many``/``few``: as the
    shots table, the regions of the base's first run), the paired bootstrap
    (over the images) of the MAE difference of the *seed-averaged*
    predictions (each image's prediction averaged over a row's seeds), and
    of the SRCC and PLCC differences; and in how many seeds the per-seed
    difference (A's seed s against B's seed s, else against B's seed
    average) has the same sign as that estimate."""
    base = find_entry(entries, base_path, option="--versus")
    ids_b, lab, pb = predictions_matrix(base, split, "--versus")
    if not len(ids_b):
        raise RunError(f"--versus: no {split} images with labels to compare on")
    runs = [r for e in entries for r in e.runs]
    edges = range_edges(runs, edges)
    idx = bin_of(lab, edges)
    names = bin_names(edges)
    strata = {name: np.flatnonzero(idx == i) for i, name in enumerate(names)}
    b0 = base.runs[0]
    shots = {}
    if "bins" in b0.config:  # every run iqa writes records its bins
        bins = run_bins(b0)
        shot = shot_of_bins(bins.counts(train_labels(b0)), many, few)[bins.index(lab)]
        shots = {f"{s}-shot": np.flatnonzero(shot == s) for s in SHOTS}
    columns = names + ["All"] + list(shots) + list(CORRELATIONS)
    rows = []
    for e in entries:
        if e is base:
            continue
        ids_a, _, pa = predictions_matrix(e, split, "--versus")
        if len(ids_a) != len(ids_b) or not np.array_equal(ids_a, ids_b):
            raise RunError(f"--versus: '{e.name}' and '{base.name}' have different {split} images "
                           f"({len(ids_a)} vs {len(ids_b)}); a paired comparison needs the same images")
        ma, mb = pa.mean(axis=0), pb.mean(axis=0)
        ea, eb = np.abs(lab - ma), np.abs(lab - mb)
        diffs = paired_bootstrap(ea[None], eb[None], {**strata, **shots}, n_boot=n_boot, seed=seed,
                                 confidence=confidence)
        by_name = {d.name: d for d in diffs}
        by_name.update({k: paired_bootstrap_corr(lab, ma, mb, k, n_boot=n_boot, seed=seed, confidence=confidence)
                        for k in CORRELATIONS})
        pairs = _seed_pairs(e, base)
        cells = []
        for name in columns:
            d = by_name[name]
            agree = 0
            for i, j in pairs:
                pb_s = pb[j] if j is not None else mb
                if name in CORRELATIONS:
                    ds = correlation(name, lab, pa[i])[0] - correlation(name, lab, pb_s)[0]
                else:
                    part = strata.get(name, shots.get(name, np.arange(len(lab))))
                    ds = (np.abs(lab - pa[i])[part].mean() - np.abs(lab - pb_s)[part].mean() if len(part)
                          else np.nan)
                agree += bool(d.estimate and np.sign(ds) == np.sign(d.estimate))  # no sign: none agrees
            cells.append(VersusCell(diff=d, agree=agree, seeds=len(pairs)))
        rows.append((e.name, cells))
    ranges = {r.label_range for r in runs}
    label_range = next(iter(ranges)) if len(ranges) == 1 else (edges[0], edges[-1])
    return Versus(base=base.name, columns=columns, rows=rows, n_seeds_base=len(base.runs),
                  n_images=len(ids_b), n_boot=n_boot, seed=seed, confidence=confidence, split=split,
                  decimals=scale_decimals(label_range))

"""``iqa report --format benchmark``: the field's table, in the form of
pyiqa's NR benchmark: a row per method, a column per dataset (the training
cache's, then each ``iqa evaluate`` target), cells ``PLCC/SRCC/KRCC`` as
mean ± std over the splits and seeds of the row; then the same layout for
MAE per label range, for the datasets whose label scale agrees with the
training scale (or was mapped with ``--label-map``).  PLCC is the raw
Pearson correlation, without the logistic fit (as pyiqa's).

Rows are the report's rows grouped by method (after ``--select val``, the
chosen runs)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..metrics import bin_names, iqa_metrics, per_bin_mae
from .loading import range_edges, split_arrays
from .select import run_method
from .tables import aggregate
from .types import Stat

if TYPE_CHECKING:
    from ..train.runs import Run
    from .build import Report

CORRELATIONS = ("plcc", "srcc", "krcc")


def run_dataset(run: "Run") -> str:
    """The dataset a run's predictions are on: the evaluated one, else its training cache's."""
    ev = run.config.get("evaluation") or {}
    return str(ev.get("dataset") or run.cache.get("dataset") or "?")


def scale_agrees(run: "Run") -> bool:
    return bool((run.config.get("evaluation") or {}).get("label_scale_agrees", True))


def _cell(values: list[float | None], digits: int) -> str:
    v = aggregate(values)
    if v is None:
        return "-"
    if isinstance(v, Stat):
        if v.mean is None or (isinstance(v.mean, float) and math.isnan(v.mean)):
            return "-"
        return f"{v.mean:.{digits}f}" + (f"±{v.std:.{digits}f}" if v.std is not None else "")
    return f"{v:.{digits}f}"


def benchmark_rows(runs: Sequence["Run"], split: str = "test", digits: int = 3,
                   edges: Sequence[float] | None = None) -> dict:
    """The two tables as plain data: ``datasets``, ``rows`` [(method, [cell
    per dataset])], ``counts`` {(method, dataset): runs}, and the MAE table's
    ``mae_columns`` / ``mae_rows``."""
    methods = list(dict.fromkeys(run_method(r) for r in runs))
    datasets = list(dict.fromkeys(run_dataset(r) for r in runs))
    by: dict[tuple[str, str], list] = {}
    for r in runs:
        by.setdefault((run_method(r), run_dataset(r)), []).append(r)
    edges = list(range_edges(runs, edges))
    names = bin_names(edges) + ["All"]
    mae_sets = [d for d in datasets if all(scale_agrees(r) for r in runs if run_dataset(r) == d)]
    rows, mae_rows, counts = [], [], {}
    for m in methods:
        cells, mae_cells = [], []
        for d in datasets:
            members = by.get((m, d), [])
            counts[(m, d)] = len(members)
            scores = {k: [] for k in CORRELATIONS}
            per_range: list[list[float | None]] = [[] for _ in names]
            for r in members:
                _, lab, pred = split_arrays(r, split)
                q = iqa_metrics(lab, pred)
                for k in CORRELATIONS:
                    scores[k].append(q[k])
                if d in mae_sets:
                    pb = per_bin_mae(lab, pred, edges)
                    for i, n in enumerate(names):
                        per_range[i].append(None if np.isnan(pb[n][0]) else pb[n][0])
            cells.append("/".join(_cell(scores[k], digits) for k in CORRELATIONS) if members else "-")
            if d in mae_sets:
                mae_cells += [_cell(v, digits) if members else "-" for v in per_range]
        rows.append((m, cells))
        mae_rows.append((m, mae_cells))
    mae_columns = [f"{d}: {n}" for d in mae_sets for n in names]
    return {"datasets": datasets, "rows": rows, "counts": counts, "mae_columns": mae_columns, "mae_rows": mae_rows,
            "split": split}


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_benchmark(report: "Report") -> str:
    """The benchmark tables of ``report`` (markdown), with the notes."""
    runs = report.runs
    b = benchmark_rows(runs, report.config.split, digits=min(report.config.digits, 3), edges=report.config.edges)
    n_of = {(m, d): b["counts"][(m, d)] for m, _ in b["rows"] for d in b["datasets"]}
    out = [f"## Benchmark: PLCC/SRCC/KRCC ({b['split']} split), mean±std over splits and seeds", "",
           _md(["method", *b["datasets"]], [[m, *cells] for m, cells in b["rows"]]), "",
           "Runs per cell: " + "; ".join(f"{m} on {d}: {k}" for (m, d), k in n_of.items() if k) + ".",
           "PLCC is the raw Pearson correlation (no logistic fit), as pyiqa's benchmark."]
    if b["mae_columns"]:
        out += ["", f"## Benchmark: MAE per label range ({b['split']} split), mean±std", "",
                _md(["method", *b["mae_columns"]], [[m, *cells] for m, cells in b["mae_rows"]])]
    skipped = [d for d in b["datasets"] if not any(c.startswith(f"{d}: ") for c in b["mae_columns"])]
    if skipped:
        out.append(f"\nNo MAE for {', '.join(skipped)}: its label scale differs from the training scale "
                   "(iqa evaluate --label-map A,B maps it).")
    if report.notes:
        out += [""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"

"""The tables of a report, one builder per table in :data:`TABLE_BUILDERS`
(the keys are ``iqa report --tables``' names, :data:`TABLES`), and
:func:`per_bin_table`, the paper's Table 1 form for a plain list of runs."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..metrics import bin_names, discrete_values, group_mae, group_name, iqa_metrics, per_bin_mae, shot_metrics
from ..train.provenance import run_warnings
from .loading import range_edges, run_bins, runs_noun, split_arrays, train_labels
from .types import Baseline, Entry, Stat, Table, TableInput, Value

if TYPE_CHECKING:
    from ..train.runs import Run


def per_bin_table(runs: Sequence[Run], edges: Sequence[float] | None = None, split: str = "test") -> Table:
    """The paper's Table 1 form: MAE per label range and overall, one row per
    run, plus the number of images per range."""
    edges = range_edges(runs, edges)
    names = bin_names(edges) + ["All"]
    rows, counts = [], None
    for r in runs:
        p = r.predictions[r.predictions["split"] == split]
        res = per_bin_mae(p["label"].to_numpy(), p["pred"].to_numpy(), edges)
        rows.append((r.name, [res[n][0] for n in names]))
        c = [res[n][1] for n in names]
        if counts is None:
            counts = c
        elif counts != c:
            counts = None  # runs disagree on the test set: no single count row
            break
    notes = run_warnings(runs)
    if counts is None and len(runs) > 1:
        counts = []
        notes.append(f"warning: the runs have different {split} sets; per-bin counts differ")
    return Table(title=f"MAE per label range ({split} split)", columns=names, rows=rows,
                 count_label=f"n ({split} {runs_noun(runs)})", counts=counts or [], notes=notes, key="ranges")


# ------------------------------------------------------------------ helpers

def aggregate(values: list[float | None]) -> Value:
    """One cell of a row: the value of a single run, or mean ± sample std
    (:class:`Stat`) over the seeds of a group that have a finite value."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    if len(values) == 1:
        return v[0]
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return Stat(float(np.mean(v)), std, len(v))


def nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def build_table(report_entries: list[Entry], baselines: list[Baseline], split: str, columns: list[str],
                per_run, *, title: str, caption: str, key: str, better: list[str] | None = None,
                count_label: str = "", digits: int = 4) -> tuple[Table, bool]:
    """Rows from ``per_run(run, labels, preds) -> (values, counts)``, seed
    groups aggregated; returns the table and whether counts disagreed."""
    rows, kinds, counts, disagree = [], [], None, False

    def take(c):
        nonlocal counts, disagree
        if c is None:
            return
        if counts is None:
            counts = c
        elif counts != c:
            disagree = True

    for e in report_entries:
        per = []
        for r in e.runs:
            _, lab, pred = split_arrays(r, split)
            vals, c = per_run(r, lab, pred)
            per.append(vals)
            take(c)
        rows.append((e.name, [aggregate([p[i] for p in per]) for i in range(len(columns))]))
        kinds.append(e.kind)
    for b in baselines:
        per = []
        for mean, run in b.parts:  # one part, or the drawn splits of one cache
            _, lab, _ = split_arrays(run, split)
            vals, c = per_run(run, lab, np.full(len(lab), mean))
            per.append(vals)
            take(c)
        rows.append((b.name, [nan_to_none(per[0][i]) if len(per) == 1 else aggregate([p[i] for p in per])
                              for i in range(len(columns))]))
        kinds.append("baseline")
    t = Table(title=title, columns=columns, rows=rows, count_label=count_label,
              counts=[] if disagree or counts is None else list(counts), digits=digits, caption=caption, key=key,
              row_kinds=kinds, better=better or [])
    return t, disagree


def _n_label(t: TableInput) -> str:
    return f"n ({t.split} {runs_noun(t.runs)})"


# ------------------------------------------------------------------- tables

def ranges_table(t: TableInput) -> Table:
    """The paper's Table 1 form: MAE per label range and overall."""
    split = t.split
    edges = range_edges(t.runs, t.edges)
    cols = bin_names(edges) + ["All"]

    def ranges(run, lab, pred):
        res = per_bin_mae(lab, pred, edges)
        return [nan_to_none(res[c][0]) for c in cols], [res[c][1] for c in cols]

    table, dis = build_table(t.entries, t.baselines, split, cols, ranges, title=f"MAE per label range ({split} split)",
                             caption=f"MAE per label range, {split} split (lower is better).", key="ranges",
                             count_label=_n_label(t), digits=t.digits)
    if dis:
        t.notes.append(f"warning: the runs have different {split} sets; per-range counts differ")
    return table


def values_table(t: TableInput) -> Table | None:
    """The paper's Table 2 form: MAE per label value (or group of values);
    None, with a note, when the labels are not discrete and no groups are
    given."""
    split = t.split
    groups = t.groups
    if groups is None:
        vals = discrete_values(np.concatenate([split_arrays(r, split)[1] for r in t.runs]))
        groups = tuple((v,) for v in vals) if vals else None
    if groups is None:
        t.notes.append("note: no per-value table: the labels are not discrete (whole numbers, at most 12 "
                       "values); pass --groups, e.g. --groups '3;4;3,4'")
        return None
    cols = [group_name(g) for g in groups] + ["All"]

    def values(run, lab, pred):
        res = group_mae(lab, pred, groups)
        return [res[c][0] for c in cols], [res[c][1] for c in cols]

    table, dis = build_table(t.entries, t.baselines, split, cols, values,
                             title=f"MAE per label value ({split} split)",
                             caption=f"MAE per label value, {split} split (the paper's Table 2 form): a label "
                                     "matches value v when v − 0.5 ≤ label < v + 0.5; a&b pools the values.",
                             key="values", count_label=_n_label(t), digits=t.digits)
    if dis:
        t.notes.append(f"warning: the runs have different {split} sets; per-value counts differ")
    return table


def shots_table(t: TableInput) -> Table:
    """The imbalanced-regression metrics: MAE, MSE and G-Mean over the
    many-, medium- and few-shot regions and overall."""
    split = t.split
    noun = runs_noun(t.runs)
    metrics = (("mae", "MAE"), ("mse", "MSE"), ("gmean", "G-Mean"))
    parts = ("many", "medium", "few", "all")
    cols = [f"{m} {'All' if p == 'all' else p}" for _, m in metrics for p in parts]
    shot_bins: dict[str, dict] = {}

    def shots(run, lab, pred):
        res = shot_metrics(train_labels(run), lab, pred, run_bins(run), t.many, t.few)
        b = run_bins(run)
        shot_bins[f"width {b.size:g} over [{b.lo:g}, {b.hi:g}]"] = res["bins"]
        return ([res[p][k] for k, _ in metrics for p in parts],
                [res[p]["n"] for _ in metrics for p in parts])

    table, dis = build_table(t.entries, t.baselines, split, cols, shots,
                             title=f"Imbalanced-regression metrics ({split} split)", caption="", key="shots",
                             count_label=_n_label(t), digits=t.digits)
    desc = "; ".join(f"bins of {k}: {v['many']} many-, {v['medium']} medium-, {v['few']} few-shot"
                     for k, v in shot_bins.items())
    table.caption = (f"Imbalanced-regression metrics, {split} split (lower is better): a {split} {noun[:-1]} is "
                     f"many-shot when its LDS bin holds more than {t.many} training {noun}, few-shot when it "
                     "holds fewer "
                     f"than {t.few}, medium otherwise ({desc}). G-Mean: geometric mean of the absolute errors. "
                     "An empty region is left blank.")
    if dis:
        t.notes.append("warning: the runs use different label bins or test sets; shot counts differ per run")
    return table


def iqa_table(t: TableInput) -> Table:
    """The IQA metrics: SRCC, KRCC, PLCC raw and after the 4-parameter
    logistic fit, RMSE."""
    split = t.split
    cols = ["SRCC", "KRCC", "PLCC", "PLCC (logistic)", "RMSE"]
    failed: list[str] = []

    def iqa(run, lab, pred):
        m = iqa_metrics(lab, pred)
        if m["fit_error"] and m["plcc"] is not None:
            failed.append(f"note: no logistic fit for {run.name}: {m['fit_error']}; PLCC (logistic) left "
                          "blank, raw PLCC shown")
        elif m["fit_note"]:
            failed.append(f"note: logistic fit for {run.name}: {m['fit_note']}")
        return [m["srcc"], m["krcc"], m["plcc"], m["plcc_logistic"], m["rmse"]], None

    table, _ = build_table(t.entries, [], split, cols, iqa, title=f"IQA metrics ({split} split)",
                           caption=f"IQA metrics, {split} split: SRCC, KRCC (Kendall tau-b), PLCC raw and after "
                                   "the VQEG 4-parameter logistic fit (higher is better); RMSE of the raw "
                                   "predictions (lower is better).", key="iqa",
                           better=["higher"] * 4 + ["lower"], digits=t.digits)
    for b in t.baselines:  # correlations of a constant are undefined: say so rather than show blanks
        rms = []
        for mean, run in b.parts:
            _, lab, _ = split_arrays(run, split)
            rms.append(math.sqrt(float(np.mean((lab - mean) ** 2))) if len(lab) else None)
        table.rows.append((b.name, [None, None, None, None, rms[0] if len(rms) == 1 else aggregate(rms)]))
        table.row_kinds.append("baseline")
    if t.baselines:
        table.caption += " The baseline's correlations are undefined (a constant prediction) and left blank."
    t.notes += failed
    return table


# A table's builder gets the rows and settings (TableInput) and returns the
# table, or None when there is nothing to show (a note in TableInput.notes
# says why).  The order is the order of the report.
TABLE_BUILDERS: dict[str, Callable[[TableInput], Table | None]] = {
    "ranges": ranges_table,
    "values": values_table,
    "shots": shots_table,
    "iqa": iqa_table,
}
TABLES = tuple(TABLE_BUILDERS)

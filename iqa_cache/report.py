"""Tables built from run directories.  Every number is recomputed from
``predictions.csv``; nothing is copied from training logs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .metrics import bin_names, default_edges, per_bin_mae
from .runs import Run

FORMATS = ("markdown", "csv", "latex")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[float]]]
    count_label: str = ""
    counts: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digits: int = 4


def run_warnings(runs: Sequence[Run]) -> list[str]:
    """Visible warnings: random-weight encoders, runs on different caches."""
    notes = []
    random = [r.name for r in runs if r.cache.get("pretrained_kind") == "none"]
    if random:
        who = f"run '{random[0]}' was" if len(random) == 1 else f"runs {', '.join(repr(n) for n in random)} were"
        notes.append(f"warning: {who} trained on features of a randomly initialised encoder "
                     "(--pretrained none): the numbers say nothing about CLIP")
    ident = {}
    for r in runs:
        key = tuple(str(r.cache.get(k)) for k in ("manifest_sha256", "model", "pretrained_sha256", "pretrained_kind",
                                                   "resize_mode", "image_size", "precision"))
        ident.setdefault(key, []).append(r.name)
    if len(ident) > 1:
        groups = "; ".join(", ".join(v) for v in ident.values())
        notes.append(f"warning: these runs were trained on different caches (groups: {groups}): "
                     "differences mix the method with the features or the data")
    return notes


def per_bin_table(runs: Sequence[Run], edges: Sequence[float] | None = None, split: str = "test") -> Table:
    """The paper's Table 1 form: MAE per label range and overall, one row per
    run, plus the number of images per range."""
    if edges is None:
        ranges = {r.label_range for r in runs}
        edges = default_edges(next(iter(ranges))) if len(ranges) == 1 else default_edges((0.0, 100.0))
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
                 count_label=f"n ({split} images)", counts=counts or [], notes=notes)


def _num(x: float, digits: int, empty: str = "") -> str:
    return empty if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_table(t: Table, fmt: str = "markdown") -> str:
    if fmt == "markdown":
        head = ["run"] + t.columns
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
        for name, vals in t.rows:
            lines.append("| " + " | ".join([name] + [_num(v, t.digits, "–") for v in vals]) + " |")
        if t.counts:
            lines.append("| " + " | ".join([f"*{t.count_label}*"] + [str(c) for c in t.counts]) + " |")
        out = "\n".join(lines)
        if t.notes:
            out += "\n\n" + "\n".join(f"> **{n.split(':', 1)[0]}**:{n.split(':', 1)[1]}" if ":" in n else f"> {n}"
                                        for n in t.notes)
        return out + "\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["run"] + t.columns)
        for name, vals in t.rows:
            w.writerow([name] + [_num(v, t.digits) for v in vals])
        if t.counts:
            w.writerow([t.count_label] + t.counts)
        for n in t.notes:
            buf.write(f"# {n}\n")
        return buf.getvalue()
    if fmt == "latex":
        def esc(s: str) -> str:
            return (s.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%")
                    .replace("_", r"\_").replace("#", r"\#").replace("$", r"\$"))
        ncol = len(t.columns) + 1
        lines = [r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule",
                 " & ".join(["Model"] + [f"${c}$" if c != "All" else c for c in t.columns]) + r" \\", r"\midrule"]
        best = [np.nanmin([v[i] for _, v in t.rows]) if t.rows and not all(
            math.isnan(v[i]) for _, v in t.rows) else math.nan for i in range(len(t.columns))]
        for name, vals in t.rows:
            cells = []
            for i, v in enumerate(vals):
                s = _num(v, t.digits)
                cells.append(rf"\textbf{{{s}}}" if s and len(t.rows) > 1 and v == best[i] else (s or "--"))
            lines.append(" & ".join([esc(name)] + cells) + r" \\")
        if t.counts:
            lines += [r"\midrule", " & ".join([esc(t.count_label)] + [str(c) for c in t.counts]) + r" \\"]
        lines.append(r"\bottomrule")
        for n in t.notes:
            lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\footnotesize {esc(n)}}} \\")
        lines.append(r"\end{tabular}")
        return "\n".join(lines) + "\n"
    raise ValueError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")

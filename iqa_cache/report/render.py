"""Reports and tables as text: markdown, csv, latex (booktabs) and json
(:func:`format_report`, :func:`format_table`), and their plain-dict forms
(:func:`report_to_dict`, :func:`table_to_dict`)."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..metrics import CORRELATIONS, MIN_VERDICT_ITEMS, BootstrapDiff
from .build import Report
from .loading import run_seed
from .tables import nan_to_none
from .types import FORMATS, Comparison, Stat, Table, Value, Versus

# -------------------------------------------------------------- formatting

def _f(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _num(x: Value, digits: int, empty: str = "", pm: str = " ± ") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return empty
    if isinstance(x, Stat):
        s = _f(x.mean, digits)
        if x.std is not None:
            s += f"{pm}{_f(x.std, digits)}"
        return s
    return _f(x, digits)


def _mean(x: Value) -> float:
    if x is None:
        return math.nan
    return x.mean if isinstance(x, Stat) else float(x)


def _best(t: Table) -> list[float]:
    """The best value of each column among runs and seed groups (not the
    baseline), for bold face in LaTeX."""
    out = []
    for i in range(len(t.columns)):
        vals = [_mean(v[i]) for j, (_, v) in enumerate(t.rows) if t.kind(j) != "baseline"]
        vals = [v for v in vals if not math.isnan(v)]
        hi = i < len(t.better) and t.better[i] == "higher"
        out.append((max(vals) if hi else min(vals)) if vals else math.nan)
    return out


def _esc(s: str) -> str:
    return (s.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_")
            .replace("#", r"\#").replace("$", r"\$").replace("±", r"$\pm$").replace("…", r"\ldots{}")
            .replace("−", "-").replace("≤", r"$\le$"))


def _md_notes(notes: Sequence[str]) -> str:
    return "\n>\n".join(f"> **{n.split(':', 1)[0]}**:{n.split(':', 1)[1]}" if ":" in n else f"> {n}" for n in notes)


def _markdown(t: Table, notes: bool = True) -> str:
    head = ["run"] + t.columns
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
    for name, vals in t.rows:
        lines.append("| " + " | ".join([name] + [_num(v, t.digits, "–") for v in vals]) + " |")
    if t.counts:
        lines.append("| " + " | ".join([f"*{t.count_label}*"] + [str(c) for c in t.counts]) + " |")
    out = "\n".join(lines)
    if t.caption:
        out += f"\n\n*{t.caption}*"
    if notes and t.notes:
        out += "\n\n" + _md_notes(t.notes)
    return out + "\n"


def _csv_rows(t: Table) -> list[list[str]]:
    rows = [["run"] + t.columns]
    for name, vals in t.rows:
        if any(isinstance(v, Stat) for v in vals):
            rows.append([f"{name} mean"] + [_num(v.mean if isinstance(v, Stat) else v, t.digits) for v in vals])
            rows.append([f"{name} std"] + [_num(v.std if isinstance(v, Stat) else None, t.digits) for v in vals])
        else:
            rows.append([name] + [_num(v, t.digits) for v in vals])
    if t.counts:
        rows.append([t.count_label] + [str(c) for c in t.counts])
    return rows


def _csv(t: Table, notes: bool = True) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows(_csv_rows(t))
    if notes:
        for n in t.notes:
            buf.write(f"# {n}\n")
    return buf.getvalue()


def _latex(t: Table, notes: bool = True) -> str:
    ncol = len(t.columns) + 1

    def col(c: str) -> str:
        return f"${c}$" if c[:1] in "[(" else _esc(c)

    lines = [r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule",
             " & ".join(["Model"] + [col(c) for c in t.columns]) + r" \\", r"\midrule"]
    best = _best(t)
    n_ranked = sum(1 for j in range(len(t.rows)) if t.kind(j) != "baseline")
    for j, (name, vals) in enumerate(t.rows):
        if t.kind(j) == "baseline" and j > 0 and t.kind(j - 1) != "baseline":
            lines.append(r"\midrule")
        cells = []
        for i, v in enumerate(vals):
            s = _num(v, t.digits, pm=r" \pm ")
            if s and isinstance(v, Stat):
                s = f"${s}$"
            bold = s and n_ranked > 1 and t.kind(j) != "baseline" and _mean(v) == best[i]
            if bold:  # \textbf does not reach into math mode; \boldmath does
                s = rf"{{\boldmath{s}}}" if isinstance(v, Stat) else rf"\textbf{{{s}}}"
            cells.append(s or "--")
        lines.append(" & ".join([_esc(name)] + cells) + r" \\")
    if t.counts:
        lines += [r"\midrule", " & ".join([_esc(t.count_label)] + [str(c) for c in t.counts]) + r" \\"]
    lines.append(r"\bottomrule")
    if notes:
        for n in t.notes:
            lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\footnotesize {_esc(n)}}} \\")
    lines.append(r"\end{tabular}")
    out = "\n".join(lines) + "\n"
    if t.caption:
        out = f"% {t.caption}\n" + out
    return out


def _json_value(v: Value) -> Any:
    if isinstance(v, Stat):
        return {"mean": v.mean, "std": v.std, "n_seeds": v.n}
    return nan_to_none(v)


def _jsonable(x: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def table_to_dict(t: Table) -> dict[str, Any]:
    return {"key": t.key, "title": t.title, "caption": t.caption, "columns": t.columns,
            "better": t.better or ["lower"] * len(t.columns),
            "rows": [{"name": name, "kind": t.kind(j), "values": {c: _json_value(v) for c, v in zip(t.columns, vals)}}
                     for j, (name, vals) in enumerate(t.rows)],
            "counts": dict(zip(t.columns, t.counts)) if t.counts else None, "notes": t.notes}


def format_table(t: Table, fmt: str = "markdown") -> str:
    """One table in markdown, csv (header starting ``run,``), latex
    (booktabs) or json."""
    if fmt == "markdown":
        return _markdown(t)
    if fmt == "csv":
        return _csv(t)
    if fmt == "latex":
        return _latex(t)
    if fmt == "json":
        return json.dumps(_jsonable(table_to_dict(t)), indent=2, allow_nan=False) + "\n"
    raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")


# ------------------------------------------------------------- comparisons

def _verdict(d: BootstrapDiff, a: str, b: str) -> str:
    if d.contains_zero is None:
        return ""
    if d.n < MIN_VERDICT_ITEMS:
        return f"too few images ({d.n}) for a verdict"
    if d.contains_zero:
        return "CI contains 0"
    return f"{a} lower" if d.estimate < 0 else f"{b} lower"


def _comparison_caption(c: Comparison) -> str:
    seeds = []
    for side, k in (("A", c.n_seeds_a), ("B", c.n_seeds_b)):
        if k > 1:
            seeds.append(f"{side}'s {k} seeds")
    over = f"the {c.n_images} {c.split} images (the same for A and B)"
    if seeds:
        over += " and " + " and ".join(seeds)
    pct = f"{100 * c.confidence:g} %"
    return (f"Paired bootstrap of the MAE difference A − B, A = {c.a}, B = {c.b}: {c.n_boot} resamples of {over}, "
            f"seed {c.seed}; per-range rows resample within the range; {pct} percentile intervals. Negative: A has "
            "the lower MAE; 'CI contains 0': the data do not show a difference.")


def comparison_rows(c: Comparison, digits: int = 4) -> tuple[list[str], list[list[str]]]:
    pct = f"{100 * c.confidence:g} % CI"
    head = ["MAE difference", "n", "A − B", pct, "verdict"]
    rows = []
    for d in c.diffs:
        ci = "" if d.low is None else f"[{_f(d.low, digits)}, {_f(d.high, digits)}]"
        rows.append([d.name, str(d.n), _num(d.estimate, digits, ""), ci, _verdict(d, c.a, c.b)])
    return head, rows


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    return {"a": c.a, "b": c.b, "n_seeds_a": c.n_seeds_a, "n_seeds_b": c.n_seeds_b, "n_images": c.n_images,
            "n_boot": c.n_boot, "seed": c.seed, "confidence": c.confidence, "split": c.split,
            "statistic": "MAE(A) - MAE(B)",
            "diffs": [{"name": d.name, "n": d.n, "estimate": d.estimate, "low": d.low, "high": d.high,
                       "contains_zero": d.contains_zero} for d in c.diffs]}


def _format_comparison(c: Comparison, fmt: str, digits: int) -> str:
    head, rows = comparison_rows(c, digits)
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---|"]
        for r in rows:
            r = list(r)
            if r[4] == "CI contains 0":
                r[4] = "*CI contains 0*"
            lines.append("| " + " | ".join(r) + " |")
        return "\n".join(lines) + f"\n\n*{_comparison_caption(c)}*\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["difference", "n", "estimate", "ci_low", "ci_high", "contains_zero", "a", "b"])
        for d in c.diffs:
            w.writerow([d.name, d.n, _num(d.estimate, digits), _num(d.low, digits), _num(d.high, digits),
                        "" if d.contains_zero is None else str(d.contains_zero).lower(), c.a, c.b])
        return buf.getvalue()
    if fmt == "latex":
        lines = [f"% {_comparison_caption(c)}", r"\begin{tabular}{lrrll}", r"\toprule",
                 r"MAE difference & $n$ & $A - B$ & " + _esc(head[3]) + r" & verdict \\", r"\midrule"]
        for r in rows:
            name = f"${r[0]}$" if r[0][:1] in "[(" else _esc(r[0])
            lines.append(" & ".join([name, r[1], r[2] or "--", r[3] or "--", _esc(r[4])]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")


def versus_caption(v: Versus) -> str:
    pct = f"{100 * v.confidence:g} %"
    return (f"Each row against {v.base}: MAE(row) − MAE({v.base}) of the seed-averaged predictions (each image's "
            f"prediction averaged over the row's seeds) per label range, overall and per many/medium/few-shot "
            f"region (the shots of {v.base}'s bins; negative: the row is better), then SRCC(row) − SRCC({v.base}) "
            f"and PLCC(row) − PLCC({v.base}) (positive: the row is better), with the {pct} interval of a paired "
            f"bootstrap over the {v.n_images} {v.split} images ({v.n_boot} resamples, seed {v.seed}; per range "
            "or region within it), and k/n: in how many of the row's n seeds the seed's own difference (against "
            "the base's run of the same seed, else its seed average) has the same sign. Bold: the interval "
            f"excludes 0, every seed agrees, there are at least 2 seeds and at least {MIN_VERDICT_ITEMS} images; "
            "'(n=K)' marks a cell over fewer images.")


CORR_DECIMALS = 3  # SRCC/PLCC differences, on every label scale


def column_decimals(v: Versus) -> list[int]:
    """Decimals of each --versus column: the label scale's for MAE
    differences (:attr:`Versus.decimals`), 3 for correlations."""
    return [CORR_DECIMALS if c in CORRELATIONS else v.decimals for c in v.columns]


def versus_cells(v: Versus) -> list[tuple[str, list[str]]]:
    out = []
    for name, cells in v.rows:
        texts = []
        for c, digits in zip(cells, column_decimals(v)):
            d = c.diff
            if d.estimate is None:
                texts.append("–")
                continue
            if d.low is None:
                texts.append(f"{_f(d.estimate, digits)} {c.agree}/{c.seeds}")
                continue
            t = f"{_f(d.estimate, digits)} [{_f(d.low, digits)}, {_f(d.high, digits)}] {c.agree}/{c.seeds}"
            if d.n < MIN_VERDICT_ITEMS:
                t += f" (n={d.n})"
            clear = not d.contains_zero and c.agree == c.seeds and c.seeds >= 2 and d.n >= MIN_VERDICT_ITEMS
            texts.append(f"**{t}**" if clear else t)
        out.append((name, texts))
    return out


def versus_to_dict(v: Versus) -> dict[str, Any]:
    return {"base": v.base, "n_seeds_base": v.n_seeds_base, "n_images": v.n_images, "n_boot": v.n_boot,
            "seed": v.seed, "confidence": v.confidence, "split": v.split,
            "statistic": "MAE(row) - MAE(base) per range, All and shot region; SRCC and PLCC: row - base; "
                         "seed-averaged predictions",
            "rows": [{"name": name, "diffs": [{"range": col, "estimate": c.diff.estimate, "low": c.diff.low,
                                                "high": c.diff.high, "seeds_agreeing": c.agree, "seeds": c.seeds}
                                               for col, c in zip(v.columns, cells)]} for name, cells in v.rows]}


def _format_versus(v: Versus, fmt: str) -> str:
    rows = versus_cells(v)
    if fmt == "markdown":
        head = [f"vs {v.base}"] + v.columns
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(v.columns)) + "|"]
        lines += ["| " + " | ".join([name] + cells) + " |" for name, cells in rows]
        return "\n".join(lines) + f"\n\n*{versus_caption(v)}*\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["run", "base", "range", "estimate", "ci_low", "ci_high", "seeds_agreeing", "seeds"])
        for name, cells in v.rows:
            for col, c, digits in zip(v.columns, cells, column_decimals(v)):
                k = digits + 2  # two more decimals than the table
                w.writerow([name, v.base, col, _num(c.diff.estimate, k), _num(c.diff.low, k), _num(c.diff.high, k),
                            c.agree, c.seeds])
        return f"# {versus_caption(v)}\n" + buf.getvalue()
    lines = [f"% {versus_caption(v)}", r"\begin{tabular}{l" + "r" * len(v.columns) + "}", r"\toprule",
             " & ".join([_esc(f"vs {v.base}")] + [f"${c}$" if c[:1] in "[(" else _esc(c) for c in v.columns])
             + r" \\", r"\midrule"]
    for name, cells in rows:
        lines.append(" & ".join([_esc(name)] + [_esc(c.replace("**", "")) for c in cells]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def report_to_dict(report: Report) -> dict[str, Any]:
    c = report.config
    return {
        "split": c.split,
        "entries": [{"name": e.name, "kind": e.kind,
                     "runs": [{"name": r.name, "path": str(r.path), "seed": run_seed(r)} for r in e.runs]}
                    for e in report.entries],
        "baselines": [{"name": b.name, "train_mean": b.mean} for b in report.baselines],
        "tables": [table_to_dict(t) for t in report.tables],
        "comparison": comparison_to_dict(report.comparison) if report.comparison else None,
        "versus": versus_to_dict(report.versus) if report.versus else None,
        "settings": {"many": c.many, "few": c.few, "group_seeds": c.group_seeds, "n_boot": c.n_boot,
                     "boot_seed": c.boot_seed, "confidence": c.confidence},
        "notes": report.notes,
    }


def format_report(report: Report, fmt: str = "markdown") -> str:
    """The whole report.  markdown: the tables (the first one, Table 1 form,
    starts the output), each with its caption below, then the comparison and
    the warnings.  csv: the first table exactly as :func:`format_table`, each
    further block after a blank line and a ``# caption`` line, warnings as
    ``# `` lines.  latex: one booktabs tabular per block.  json: one object.
    benchmark: :func:`iqa_cache.report.benchmark.format_benchmark`."""
    d = report.config.digits
    if fmt == "benchmark":  # the field's table (pyiqa's NR benchmark form)
        from .benchmark import format_benchmark

        return format_benchmark(report)
    if fmt == "json":
        return json.dumps(_jsonable(report_to_dict(report)), indent=2, allow_nan=False) + "\n"
    if fmt not in FORMATS:
        raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    blocks = []
    for t in report.tables:
        if fmt == "markdown":
            blocks.append(_markdown(t, notes=False))
        elif fmt == "csv":
            blocks.append(_csv(t, notes=False) if not blocks else f"# {t.caption}\n" + _csv(t, notes=False))
        else:
            blocks.append(_latex(t, notes=False))
    if report.comparison is not None:
        block = _format_comparison(report.comparison, fmt, d)
        if fmt == "csv":
            block = f"# {_comparison_caption(report.comparison)}\n" + block
        blocks.append(block)
    if report.versus is not None:
        blocks.append(_format_versus(report.versus, fmt))
    if fmt == "markdown":
        out = "\n".join(blocks)
        if report.notes:
            out += "\n" + _md_notes(report.notes) + "\n"
        return out
    if fmt == "csv":
        out = "\n".join(blocks)
        return out + "".join(f"# {n}\n" for n in report.notes)
    out = "\n".join(blocks)
    return out + "".join(f"% {n}\n" for n in report.notes)

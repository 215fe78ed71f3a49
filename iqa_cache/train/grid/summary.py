"""The summary of an ablation: one row per configuration, as a table and
as markdown."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ...cache import CacheData
from ...metrics import bin_names, default_edges, per_bin_mae
from ..provenance import run_warnings
from ..runs import CACHE_KEYS, Run
from .outcomes import Outcome
from .spec import GridSpec, format_value


def summary_frame(outcomes: Sequence[Outcome], label_range: tuple[float, float], spec: GridSpec) -> pd.DataFrame:
    """One row per configuration: validation MAE, best epoch, test MAE per
    label range and overall, status, and its grid values; trained
    configurations by validation MAE, then diverged, then skipped ones.
    ``attrs['bins']`` names the per-range columns, ``attrs['n_test']`` gives
    the test images per range."""
    edges = default_edges(label_range)
    names = bin_names(edges) + ["All"]
    rows, counts = [], []
    for o in outcomes:
        row: dict[str, Any] = {"run": o.point.name, "val_mae": math.nan, "best_epoch": pd.NA}
        row.update({n: math.nan for n in names})
        p = o.predictions
        if p is not None:
            test = p[p["split"] == "test"]
            per_bin = per_bin_mae(test["label"].to_numpy(), test["pred"].to_numpy(), edges)
            row.update({n: per_bin[n][0] for n in names})
            row["val_mae"], row["best_epoch"] = o.best
            counts = counts or [per_bin[n][1] for n in names]
        row["status"] = o.status if o.status == "ok" else f"{o.status}: {o.message}"
        for k, _ in spec.axes:
            row[k] = format_value(o.point.values[k]) if k in o.point.values else ""
        rows.append(row)
    df = pd.DataFrame(rows)
    rank = [0 if o.is_trained else 1 if o.status == "diverged" else 2 for o in outcomes]
    df = df.assign(_rank=rank).sort_values(["_rank", "val_mae"], kind="stable", na_position="last")
    df = df.drop(columns="_rank").reset_index(drop=True)
    df["best_epoch"] = df["best_epoch"].astype("Int64")
    df.attrs["bins"], df.attrs["n_test"] = names, counts
    return df


def notes_of(data: CacheData, outcomes: Sequence[Outcome]) -> list[str]:
    """The warnings that go under the summary (about the cache the runs share)."""
    runs = [Run(path=o.run_dir or Path(o.point.name), name=o.point.name,
                config={"cache": {k: data.attrs.get(k) for k in CACHE_KEYS}},
                predictions=o.predictions, metrics={})
            for o in outcomes if o.predictions is not None]
    notes = run_warnings(runs[:1]) if runs else []  # one cache for all: the first run says it
    return [n.replace(f"run '{runs[0].name}' was", "these runs were") for n in notes] if runs else notes


def format_summary(df: pd.DataFrame, notes: Sequence[str] = (), digits: int = 4) -> str:
    """The summary as markdown: a caption line, then the table (test MAE per
    label range), then any notes."""
    bins = df.attrs.get("bins", [])

    def num(x: Any) -> str:
        return "–" if pd.isna(x) else f"{x:.{digits}f}"

    head = ["run", "val MAE", "best epoch"] + list(bins) + ["status"]
    lines = [f"Test MAE per label range, {len(df)} configuration(s) sorted by validation MAE", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
    for _, r in df.iterrows():
        epoch = "–" if pd.isna(r["best_epoch"]) else str(int(r["best_epoch"]))
        lines.append("| " + " | ".join([r["run"], num(r["val_mae"]), epoch] + [num(r[b]) for b in bins]
                                       + [r["status"]]) + " |")
    counts = df.attrs.get("n_test") or []
    if counts:
        noun = df.attrs.get("noun", "images")
        lines.append("| " + " | ".join([f"*n (test {noun})*", "", ""] + [str(c) for c in counts] + [""]) + " |")
    out = "\n".join(lines) + "\n"
    if notes:
        out += "\n" + "\n".join(f"> **{n.split(':', 1)[0]}**:{n.split(':', 1)[1]}" if ":" in n else f"> {n}"
                                for n in notes) + "\n"
    return out

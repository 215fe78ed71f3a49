"""``iqa report --select val``: choose on validation, never on test.

Within each split and seed, per method (or per the grid keys named by
``--select-by``), the run with the best validation metric is chosen; the
report then shows only the chosen runs' numbers on the report's split, one
row per method over its splits and seeds.  Without ``--select``,
:func:`test_choice_note` says when the rows of one method differ in other
settings: picking among them by their test numbers is choosing on test.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError, RunError
from ..metrics import correlation, mae, shot_metrics
from .loading import _method, group_size, run_bins, run_seed, run_split, split_arrays, train_labels
from .types import Entry

if TYPE_CHECKING:
    from ..train.runs import Run

# --select-metric: name → (what it is called, higher is better)
SELECT_METRICS: dict[str, tuple[str, bool]] = {"mae": ("val MAE", False), "srcc": ("val SRCC", True),
                                               "plcc": ("val PLCC", True), "few_mae": ("val few-shot MAE", False)}
SELECT_SPLITS = ("val",)


def run_method(run: "Run") -> str:
    """What a run trained, by method name (vanilla, lds, bmc, ridge, ...)."""
    train = run.config.get("train", {})
    return _method(train, bool((train.get("lds") or {}).get("enabled")))


def _by_value(run: "Run", key: str) -> Any:
    if key == "method":
        return run_method(run)
    from ..train.config import FLAT_FIELDS

    if key not in FLAT_FIELDS:
        raise ConfigError(f"--select-by '{key}' is not a training option name (e.g. method, lr, lds_ks)")
    return run.train_config.to_flat()[key]


def validation_score(run: "Run", metric: str, many: int = 100, few: int = 20) -> float:
    """The run's ``metric`` on its validation rows (NaN when undefined)."""
    _, lab, pred = split_arrays(run, "val")
    if not len(lab):
        return math.nan
    if metric == "mae":
        return mae(lab, pred)
    if metric in ("srcc", "plcc"):
        if len(lab) < 2 or not (np.std(lab) > 0 and np.std(pred) > 0):
            return math.nan
        return float(correlation(metric.upper(), lab, pred)[0])
    few_mae = shot_metrics(train_labels(run), lab, pred, run_bins(run), many, few)["few"]["mae"]
    return math.nan if few_mae is None else float(few_mae)


def select_runs(runs: Sequence["Run"], metric: str = "mae", by: Sequence[str] = ("method",), *,
                many: int = 100, few: int = 20) -> tuple[list[Entry], list[str]]:
    """One entry per value of ``by`` holding, for each split and seed, its
    run with the best validation ``metric``; and the notes that name the
    choices."""
    if metric not in SELECT_METRICS:
        raise ConfigError(f"--select-metric '{metric}' is not one of {', '.join(SELECT_METRICS)}")
    what, higher = SELECT_METRICS[metric]
    cells: dict[tuple, dict[tuple, list["Run"]]] = {}
    for r in runs:
        key = tuple(_by_value(r, k) for k in by)
        cells.setdefault(key, {}).setdefault((str(run_split(r)), str(run_seed(r))), []).append(r)
    entries, notes = [], []
    for key, groups in cells.items():
        chosen = []
        for (split, seed), members in groups.items():
            scores = [validation_score(m, metric, many, few) for m in members]
            ok = [i for i, s in enumerate(scores) if math.isfinite(s)]
            if not ok:
                raise RunError(f"--select val: no run of {', '.join(m.name for m in members)} has a finite "
                               f"{what}; they have no validation rows with labels")
            best = max(ok, key=lambda i: scores[i]) if higher else min(ok, key=lambda i: scores[i])
            chosen.append(members[best])
            if len(members) > 1:
                notes.append(f"note: chosen on validation ({what} {scores[best]:.4g}) among {len(members)} runs of "
                             f"{_label(by, key)}, split {'official' if split == 'None' else split}, seed {seed}: "
                             f"{members[best].name}")
        name = _label(by, key)
        entries.append(Entry(f"{name} (best on val, {group_size(chosen)})" if len(chosen) > 1 else
                             f"{name} (best on val: {chosen[0].name})", chosen, kind="seeds" if len(chosen) > 1
                             else "run"))
    notes.append(f"note: --select val: per {', '.join(by)}, within each split and seed, the run with the best "
                 f"{what} was chosen; the rows show the chosen runs' numbers only; the choice was made on "
                 "validation, never on test")
    return entries, notes


def _label(by: Sequence[str], key: tuple) -> str:
    if tuple(by) == ("method",):
        return str(key[0])
    return ",".join(f"{k}={v}" for k, v in zip(by, key))


def test_choice_note(entries: Sequence[Entry], split: str) -> str | None:
    """A note when two rows train the same method with other settings (not
    only other seeds or splits): choosing among them by these rows is
    choosing on ``split``."""
    methods: dict[str, int] = {}
    for e in entries:
        m = run_method(e.runs[0])
        methods[m] = methods.get(m, 0) + 1
    many = sorted(m for m, k in methods.items() if k > 1)
    if not many or split != "test":
        return None
    return (f"note: rows of {', '.join(many)} differ in settings other than seed and split: choosing among them "
            "by these test numbers is choosing on test; use --select val to choose on validation")

"""What ``iqa report`` computes (:class:`ReportConfig`) and the report
itself (:class:`Report`, :func:`build_report`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import ConfigError, RunError
from ..metrics import bin_of
from ..seeds import check_seed
from ..train.provenance import run_warnings
from .compare import compare_entries, versus_entries
from .loading import group_entries, make_baselines, runs_noun, split_arrays
from .select import SELECT_METRICS, SELECT_SPLITS, select_runs, test_choice_note
from .tables import TABLE_BUILDERS, TABLES
from .types import SPLITS, Baseline, Comparison, Entry, Table, TableInput, Versus

if TYPE_CHECKING:
    from ..train.runs import Run

# Table 1's MAE per label range, then SRCC/PLCC (what IQA papers and pyiqa report): the default output
DEFAULT_TABLES = ("ranges", "iqa")
MIN_BOOT = 100  # fewer bootstrap resamples give no usable interval


@dataclass(frozen=True)
class ReportConfig:
    """What ``iqa report`` computes.  ``groups`` None means: one column per
    label value when the labels are discrete (whole numbers, at most 12
    values), else no Table 2 form.  ``compare`` holds two run directories;
    with ``group_seeds`` each stands for its whole seed group.  ``versus``:
    a run directory whose row every other row is compared with.  ``select``
    'val': per ``select_by`` (training option names; ``method`` by
    default), within each split and seed, only the run with the best
    validation ``select_metric`` (:mod:`iqa_cache.report.select`)."""

    split: str = "test"
    edges: tuple[float, ...] | None = None
    tables: tuple[str, ...] = DEFAULT_TABLES
    groups: tuple[tuple[float, ...], ...] | None = None
    many: int = 100
    few: int = 20
    group_seeds: bool = True
    baseline: bool = True
    compare: tuple[str, str] | None = None
    versus: str | None = None
    n_boot: int = 2000
    boot_seed: int = 0
    confidence: float = 0.95
    digits: int = 4
    select: str | None = None
    select_metric: str = "mae"
    select_by: tuple[str, ...] = ("method",)

    def __post_init__(self) -> None:
        check_seed(self.boot_seed, "--boot-seed")
        if self.select is not None and self.select not in SELECT_SPLITS:
            raise ConfigError(f"--select '{self.select}' is not one of {', '.join(SELECT_SPLITS)}")
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(f"--select-metric '{self.select_metric}' is not one of {', '.join(SELECT_METRICS)}")
        if not self.select_by:
            raise ConfigError("--select-by needs at least one training option name, e.g. method")
        if self.split not in SPLITS:
            raise ConfigError(f"--split '{self.split}' is not one of {', '.join(SPLITS)}")
        bad = [t for t in self.tables if t not in TABLES]
        if bad:
            raise ConfigError(f"--tables: '{bad[0]}' is not one of {', '.join(TABLES)}, all")
        if self.many < 0 or self.few < 0:
            raise ConfigError(f"--many and --few must be 0 or more (got {self.many}, {self.few})")
        if self.few > self.many:
            raise ConfigError(f"--few {self.few} is above --many {self.many}: a bin cannot be both few- and "
                              "many-shot")
        if self.n_boot < MIN_BOOT:
            raise ConfigError(f"--n-boot must be at least {MIN_BOOT}, got {self.n_boot}")
        if self.groups is not None and "values" not in self.tables:
            raise ConfigError("--groups applies to the values table; add 'values' to --tables")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence} must be between 0 and 1")


@dataclass
class Report:
    config: ReportConfig
    entries: list[Entry]
    baselines: list[Baseline]
    tables: list[Table]
    comparison: Comparison | None = None
    notes: list[str] = field(default_factory=list)
    versus: Versus | None = None

    @property
    def runs(self) -> list[Run]:
        return [r for e in self.entries for r in e.runs]


def outside_notes(runs: Sequence[Run], edges: Sequence[float] | None, split: str) -> list[str]:
    """A note when the ``--bins`` edges leave some of the split's items out of
    every label-range column (the ``All`` column still counts them), one per
    different set of items; none for the default edges (the label range)."""
    if edges is None:
        return []
    groups: dict[tuple, tuple[str, np.ndarray]] = {}  # runs on the same items: one note
    for r in runs:
        ids, lab, _ = split_arrays(r, split)
        groups.setdefault((len(ids), hash(tuple(ids))), (r.name, lab))
    notes = []
    lo, hi = edges[0], edges[-1]
    for name, lab in groups.values():
        out = int((bin_of(lab, edges) < 0).sum())
        if out:
            whose = f" of run '{name}'" if len(groups) > 1 else ""
            notes.append(f"note: --bins {','.join(f'{e:g}' for e in edges)} cover {len(lab) - out:,} of "
                         f"{len(lab):,} {split} {runs_noun(runs)}{whose}; {out:,} lie outside [{lo:g}, {hi:g}] "
                         f"({int((lab < lo).sum()):,} below, {int((lab > hi).sum()):,} above) and are in no "
                         "label-range column, only in All")
    return notes


def build_report(runs: Sequence[Run], cfg: ReportConfig = ReportConfig()) -> Report:
    """Everything ``iqa report`` shows, computed from the runs' predictions."""
    if not runs:
        raise RunError("no run to report")
    split = cfg.split
    if cfg.select is not None:
        entries, notes = select_runs(runs, cfg.select_metric, cfg.select_by, many=cfg.many, few=cfg.few)
    else:
        entries, notes = group_entries(runs, cfg.group_seeds)
        on_test = test_choice_note(entries, split)
        if on_test:
            notes.append(on_test)
    baselines = make_baselines(runs, split) if cfg.baseline else []
    all_runs = [r for e in entries for r in e.runs]
    if not any(len(split_arrays(r, split)[1]) for r in all_runs):
        labelled = [(r, int(np.isfinite(r.predictions.loc[r.predictions["split"] == split, "label"]
                                        .to_numpy(np.float64)).sum())) for r in all_runs]
        if any(n for _, n in labelled):  # labels there, but no prediction is a finite number
            r, n = next((r, n) for r, n in labelled if n)
            raise RunError(f"no run has a finite prediction for its {split} {runs_noun(all_runs)}: run {r.path} has "
                           f"{n} labelled, and every prediction is inf, NaN or beyond float32")
        raise RunError(f"none of the runs has {split} {runs_noun(all_runs)} with labels; try --split "
                       f"{'val' if split == 'test' else 'test'}")
    inp = TableInput(entries=entries, baselines=baselines, split=split, edges=cfg.edges, groups=cfg.groups,
                     many=cfg.many, few=cfg.few, digits=cfg.digits, notes=notes)
    tables: list[Table] = []
    for key, builder in TABLE_BUILDERS.items():
        if key in cfg.tables:
            t = builder(inp)
            if t is not None:
                tables.append(t)

    comparison = None
    if cfg.compare:
        comparison = compare_entries(entries, cfg.compare, split=split, edges=cfg.edges, n_boot=cfg.n_boot,
                                     seed=cfg.boot_seed, confidence=cfg.confidence)
    versus = None
    if cfg.versus:
        versus = versus_entries(entries, cfg.versus, split=split, edges=cfg.edges, n_boot=cfg.n_boot,
                                seed=cfg.boot_seed, confidence=cfg.confidence, many=cfg.many, few=cfg.few)
    notes = run_warnings(all_runs) + inp.notes + outside_notes(all_runs, cfg.edges, split)
    off_scale = [r.name for r in all_runs if (r.config.get("evaluation") or {}).get("label_scale_agrees") is False]
    if off_scale:
        notes.append(f"warning: {', '.join(off_scale)}: labels on another scale than the training labels; their "
                     "MAE compares nothing (iqa evaluate --label-map A,B maps them); the correlations do")
    if any(e.kind == "seeds" for e in entries):
        notes.append("note: rows marked '(k seeds)' (or '(k seeds × m splits)') are runs that differ only in seed "
                     "(and split): mean ± sample std "
                     "(ddof 1) over the seeds")
    return Report(config=cfg, entries=entries, baselines=baselines, tables=tables, comparison=comparison,
                  notes=notes, versus=versus)

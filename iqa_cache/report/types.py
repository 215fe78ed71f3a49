"""The plain types of a report: cells, tables, rows (runs, seed groups,
baselines) and the comparison.  No computation here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence, Union

if TYPE_CHECKING:  # iqa_cache.train.runs imports torch: not at run time
    from ..metrics import BootstrapDiff
    from ..train.runs import Run

FORMATS = ("markdown", "csv", "latex", "json", "benchmark")
SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class Stat:
    """A cell aggregated over the seeds of a group: mean, sample standard
    deviation (ddof 1; None for one value) and how many seeds had a value."""

    mean: float
    std: float | None
    n: int


Value = Union[float, Stat, None]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Value]]]
    count_label: str = ""
    counts: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digits: int = 4
    caption: str = ""
    key: str = ""
    # per row: 'run', 'seeds' (a seed group) or 'baseline'; empty: all runs
    row_kinds: list[str] = field(default_factory=list)
    # per column: 'lower' or 'higher' is better; empty: all lower
    better: list[str] = field(default_factory=list)

    def kind(self, i: int) -> str:
        return self.row_kinds[i] if i < len(self.row_kinds) else "run"


@dataclass
class Entry:
    """A table row: one run, or the runs of a seed group."""

    name: str
    runs: list[Run]
    kind: str = "run"  # 'run' | 'seeds'


@dataclass
class Baseline:
    """Predicting the training mean for every image of the split."""

    name: str
    mean: float
    run: Run  # whose data (predictions.csv) it is computed on
    # the same cache's other drawn splits (--split-seed): (train mean, run) each; the row is their mean ± std
    splits: list[tuple[float, Run]] = field(default_factory=list)

    @property
    def parts(self) -> list[tuple[float, Run]]:
        return [(self.mean, self.run), *self.splits]


@dataclass
class Comparison:
    a: str
    b: str
    n_seeds_a: int
    n_seeds_b: int
    n_images: int
    n_boot: int
    seed: int
    confidence: float
    split: str
    diffs: list[BootstrapDiff]


@dataclass
class VersusCell:
    """One row's difference to the base in one label range: the bootstrap
    of the seed-averaged predictions, and in how many of ``seeds`` seeds the
    per-seed difference has the estimate's sign."""

    diff: BootstrapDiff
    agree: int
    seeds: int


@dataclass
class Versus:
    """``--versus``: every row against the base row: MAE(row) − MAE(base) per
    label range, overall and per shot region, then SRCC and PLCC (row − base)."""

    base: str
    columns: list[str]
    rows: list[tuple[str, list[VersusCell]]]
    n_seeds_base: int
    n_images: int
    n_boot: int
    seed: int
    confidence: float
    split: str
    decimals: int = 2  # of the MAE columns, from the label scale (correlations: 3)


@dataclass
class TableInput:
    """What a table builder (:data:`iqa_cache.report.tables.TABLE_BUILDERS`)
    gets: the rows, the report's settings that tables use, and ``notes``,
    the report's notes, which a builder may append to."""

    entries: list[Entry]
    baselines: list[Baseline]
    split: str
    edges: Sequence[float] | None
    groups: tuple[tuple[float, ...], ...] | None
    many: int
    few: int
    digits: int
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [r for e in self.entries for r in e.runs]

"""Tables built from run directories.  Every number is recomputed from
``predictions.csv``; nothing is copied from training logs.

Two layers:

* :func:`per_bin_table` / :func:`format_table`: the paper's Table 1 form for
  a list of runs (used by ``train-head``, the demo and ``report``);
* :func:`build_report` / :func:`format_report`: the full report of
  ``iqa report``: runs that differ only in seed grouped as mean ± std, a
  train-mean baseline row, the Table 1 form (MAE per label range), the
  Table 2 form (MAE per label value and groups of values), the
  imbalanced-regression metrics (many/medium/few-shot MAE, MSE, G-Mean), the
  IQA metrics (SRCC, KRCC, PLCC raw and after a 4-parameter logistic fit,
  RMSE), and a paired bootstrap of the difference between two runs or seed
  groups; in markdown, csv, latex or json.

The modules: :mod:`.types` (plain types), :mod:`.loading` (runs, seed
groups, baselines, run and bin helpers), :mod:`.tables` (one builder per
table), :mod:`.compare` (the paired bootstrap), :mod:`.build`
(:class:`ReportConfig`, :func:`build_report`) and :mod:`.render` (the
formats).  Importing the package imports neither torch nor scipy.
"""
from __future__ import annotations

from .build import Report, ReportConfig, build_report
from .compare import compare_entries
from .loading import (
    data_key,
    group_entries,
    lds_curves,
    load_runs,
    make_baselines,
    range_edges,
    run_bins,
    run_seed,
    runs_noun,
    seed_group_name,
    seed_key,
    split_arrays,
    train_labels,
    training_label,
)
from .render import comparison_rows, comparison_to_dict, format_report, format_table, report_to_dict, table_to_dict
from .tables import TABLE_BUILDERS, TABLES, per_bin_table
from .types import FORMATS, SPLITS, Baseline, Comparison, Entry, Stat, Table, TableInput, Value

__all__ = [
    "FORMATS", "SPLITS", "TABLES", "TABLE_BUILDERS",
    "Baseline", "Comparison", "Entry", "Report", "ReportConfig", "Stat", "Table", "TableInput", "Value",
    "build_report", "compare_entries", "comparison_rows", "comparison_to_dict", "data_key", "format_report",
    "format_table", "group_entries", "lds_curves", "load_runs", "make_baselines", "per_bin_table", "range_edges",
    "report_to_dict", "run_bins", "run_seed", "runs_noun", "seed_group_name", "seed_key",
    "split_arrays", "table_to_dict", "train_labels", "training_label",
]

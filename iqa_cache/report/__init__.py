"""Tables built from run directories (see :mod:`iqa_cache.report.render`,
which is split into modules next)."""
from __future__ import annotations

from .render import (FORMATS, SPLITS, TABLES, Baseline, Comparison, Entry, Report, ReportConfig, Stat, Table, Value,
                     _data_key, _edges_for, _group_name, _split_arrays, build_report, comparison_rows,
                     comparison_to_dict, format_report, format_table, group_entries, lds_curves, load_runs,
                     make_baselines, per_bin_table, report_to_dict, run_bins, run_seed, run_warnings, runs_noun,
                     seed_key, table_to_dict, train_labels)

__all__ = ["FORMATS", "SPLITS", "TABLES", "Baseline", "Comparison", "Entry", "Report", "ReportConfig", "Stat",
           "Table", "Value", "_data_key", "_edges_for", "_group_name", "_split_arrays", "build_report",
           "comparison_rows", "comparison_to_dict", "format_report", "format_table", "group_entries", "lds_curves",
           "load_runs", "make_baselines", "per_bin_table", "report_to_dict", "run_bins", "run_seed", "run_warnings",
           "runs_noun", "seed_key", "table_to_dict", "train_labels"]

"""Ablation grids: many training configurations from one base, trained in
stacks (:mod:`iqa_cache.train.stacked`), each written as a normal run directory,
plus one summary table sorted by validation MAE.

A grid varies any of ``GRID_KEYS``; every other setting comes from the base
configuration (the ``train-head`` options).  Written inline::

    lds=on; lds_kernel=gaussian,triang,laplace; lds_sigma=1,2,5; fds=on,off

or as a TOML file of the same keys, each a value or a list::

    lds = true
    lds_kernel = ["gaussian", "triang", "laplace"]
    lds_sigma = [1, 2, 5]
    fds = ["on", "off"]

The grid is the product of the keys' values.  Settings that a configuration
does not use (an LDS kernel with LDS off, an FDS kernel with FDS off, the bin
size without LDS, reweighting or FDS) are dropped from it, and configurations
that become equal are trained once.  Combinations that cannot be trained
(LDS on with ``reweight=none``; an FDS window wider than the bins allow) are
skipped and listed in the summary.
"""
from ..config import GRID_KEYS
from .expand import GridPlan, GridPoint, apply_point, expand, point_name
from .outcomes import AblationResult, Outcome
from .outdir import AblationDir, expected_train_config, prepare_ablation_dir, same_run
from .ranks import assign_stacks, run_ablation_ranks
from .run import run_ablation
from .spec import GridSpec, format_value, load_grid_file, parse_grid, parse_value, read_grid
from .summary import format_summary, summary_frame

__all__ = ["GRID_KEYS", "GridPlan", "GridPoint", "apply_point", "expand", "point_name", "AblationResult", "Outcome",
           "AblationDir", "expected_train_config", "prepare_ablation_dir", "same_run", "run_ablation", "GridSpec",
           "format_value", "load_grid_file", "parse_grid", "parse_value", "read_grid", "format_summary",
           "summary_frame", "assign_stacks", "run_ablation_ranks"]

"""`iqa report`: tables (and plots) from run directories."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional, Tuple

import typer

from iqa_cache.report.build import DEFAULT_TABLES, ReportConfig  # light: the report package imports no engine
from iqa_cache.report.select import SELECT_METRICS, SELECT_SPLITS
from iqa_cache.report.types import FORMATS, SPLITS

from .app import app
from .common import Command, choices, echo_out, handle_errors

ReportFormat = choices("ReportFormat", FORMATS)
Split = choices("Split", SPLITS)
SelectSplit = choices("SelectSplit", SELECT_SPLITS)
SelectMetric = choices("SelectMetric", tuple(SELECT_METRICS))
_D = ReportConfig()  # the defaults, defined once in the library


def parse_tables(text: str) -> tuple[str, ...]:
    from iqa_cache.report import TABLES

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter("name at least one table", param_hint="--tables")
    if "all" in names:
        return TABLES
    bad = [t for t in names if t not in TABLES]
    if bad:
        raise typer.BadParameter(f"'{bad[0]}' is not one of {', '.join(TABLES)}, all", param_hint="--tables")
    return tuple(t for t in TABLES if t in names)


@app.command("report", cls=Command)
@handle_errors
def report_command(
    runs: Annotated[List[Path], typer.Argument(help="Run directories written by `iqa train-head` or `iqa "
                                                    "ablate` (unfinished ones are named on stderr and skipped).",
                                               metavar="RUN")],
    bins: Annotated[Optional[str], typer.Option(help="Label-range edges, e.g. 0,20,40,60,80,100 [default: five "
                                                     "equal ranges over the label range].", metavar="EDGES")] = None,
    tables: Annotated[Optional[str], typer.Option(
        help="Tables to show, comma-separated: ranges (MAE per label range, the paper's Table 1), values (MAE "
             "per label value, Table 2), shots (many/medium/few-shot MAE, MSE, G-Mean), iqa (SRCC, KRCC, PLCC, "
             "RMSE), or all [default: ranges and iqa, plus values with --groups].", metavar="TABLES")] = None,
    groups: Annotated[Optional[str], typer.Option(
        help="Label values for the per-value table: groups separated by ';', values by ',': '3;4;3,4' gives "
             "columns 3, 4, 3&4, All. A label matches v when v-0.5 <= label < v+0.5 [default with --tables "
             "values: each value, when the labels are discrete].", metavar="GROUPS")] = None,
    many: Annotated[int, typer.Option(help="Many-shot: bins with more training images than this.")] = _D.many,
    few: Annotated[int, typer.Option(help="Few-shot: bins with fewer training images than this.")] = _D.few,
    group_seeds: Annotated[bool, typer.Option(help="Show runs that differ only in seed as one row, mean ± std.")
                           ] = _D.group_seeds,
    baseline: Annotated[bool, typer.Option(help="Add a row that predicts the training mean.")] = _D.baseline,
    compare: Annotated[Optional[Tuple[Path, Path]], typer.Option(
        help="Paired bootstrap of the MAE difference RUN_A - RUN_B (each stands for its seed group), overall "
             "and per label range.", metavar="RUN_A RUN_B")] = None,
    versus: Annotated[Optional[Path], typer.Option(
        help="Compare every other row with the row (run or seed group) holding RUN: MAE difference of the "
             "seed-averaged predictions per label range, paired bootstrap interval, and how many seeds agree "
             "in sign.", metavar="RUN")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for --compare and --versus (at least 100).")
                      ] = _D.n_boot,
    boot_seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = _D.boot_seed,
    format: Annotated[ReportFormat, typer.Option("--format", help="Output format.")
                      ] = ReportFormat(FORMATS[0]),
    split: Annotated[Split, typer.Option(help="The split whose predictions are evaluated.")] = Split(_D.split),
    select: Annotated[Optional[SelectSplit], typer.Option(
        help="Choose on validation: per method (or --select-by), within each split and seed, keep only the run "
             "with the best --select-metric on the validation split, and show the chosen runs' numbers.",
        show_default=False)] = None,
    select_metric: Annotated[SelectMetric, typer.Option(help="--select: the validation metric (mae, srcc, plcc, "
                                                             "few_mae: few-shot MAE).")
                             ] = SelectMetric(_D.select_metric),
    select_by: Annotated[str, typer.Option(help="--select: the training options whose values each keep their own "
                                                "choice, comma-separated (e.g. method,lds).", metavar="KEYS")
                         ] = ",".join(_D.select_by),
    plots: Annotated[Optional[Path], typer.Option(help="Write PNG plots into this folder.", metavar="DIR")] = None,
) -> None:
    """Compare runs: MAE per label range (the paper's Table 1) and per label value (Table 2),
    imbalanced-regression and IQA metrics, seeds as mean ± std, a train-mean baseline, and a paired
    bootstrap.

    All numbers are recomputed from each run's predictions.csv.
    """
    from iqa_cache.metrics import parse_edges, parse_groups
    from iqa_cache.report import build_report, format_report, load_runs

    try:
        edges = tuple(parse_edges(bins)) if bins else None
    except ValueError as e:
        raise typer.BadParameter(str(e).replace("--bins ", ""), param_hint="--bins") from None
    try:
        value_groups = tuple(parse_groups(groups)) if groups else None
    except ValueError as e:
        raise typer.BadParameter(str(e).replace("--groups ", ""), param_hint="--groups") from None
    chosen = parse_tables(tables) if tables else (("ranges", "values", "iqa") if groups else DEFAULT_TABLES)
    cfg = ReportConfig(split=split.value, edges=edges, tables=chosen, groups=value_groups, many=many, few=few,
                       group_seeds=group_seeds, baseline=baseline,
                       compare=(str(compare[0]), str(compare[1])) if compare else None,
                       versus=str(versus) if versus else None, n_boot=n_boot,
                       boot_seed=boot_seed, select=select.value if select else None,
                       select_metric=select_metric.value,
                       select_by=tuple(k.strip().replace("-", "_") for k in select_by.split(",") if k.strip())
                       )  # checks the values (e.g. --few above --many) before runs are read
    paths = list(runs) + [p for p in (*(compare or ()), *((versus,) if versus else ())) if p not in runs]
    loaded, skipped = load_runs(paths)
    if compare:
        bad = {str(p) for p, _ in skipped} & {str(p) for p in compare}
        if bad:
            raise typer.BadParameter(f"{sorted(bad)[0]} is not a finished run", param_hint="--compare")
    if versus and str(versus) in {str(p) for p, _ in skipped}:
        raise typer.BadParameter(f"{versus} is not a finished run", param_hint="--versus")
    report = build_report(loaded, cfg)
    echo_out(format_report(report, format.value))
    if plots is not None:
        from iqa_cache.report.plots import write_plots

        for path in write_plots(report, plots):
            typer.echo(f"wrote {path}", err=True)

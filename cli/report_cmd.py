"""`iqa report`: tables (and plots) from run directories."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from iqa_cache.metrics import parse_edges
from iqa_cache.report import format_table, per_bin_table
from iqa_cache.runs import load_run

from .app import app
from .common import TableFormat, echo_out, handle_errors


@app.command("report")
@handle_errors
def report_command(
    runs: Annotated[List[Path], typer.Argument(help="Run directories written by `iqa train-head`.")],
    bins: Annotated[Optional[str], typer.Option(help="Label-range edges, e.g. 0,20,40,60,80,100 [default: five "
                                                     "equal ranges over the label range].")] = None,
    format: Annotated[TableFormat, typer.Option("--format", help="markdown, csv or latex.")] = TableFormat.markdown,
    split: Annotated[str, typer.Option(help="Which split to evaluate: test or val.")] = "test",
    plots: Annotated[Optional[Path], typer.Option(help="Write PNG plots into this folder.")] = None,
) -> None:
    """Per-bin MAE tables (the paper's Table 1 form) for several runs side by side.

    All numbers are recomputed from each run's predictions.csv.
    """
    if split not in ("test", "val", "train"):
        raise typer.BadParameter(f"'{split}' is not one of test, val, train", param_hint="--split")
    try:
        edges = parse_edges(bins) if bins else None
    except ValueError as e:
        raise typer.BadParameter(str(e).replace("--bins ", ""), param_hint="--bins") from None
    loaded = [load_run(r) for r in runs]
    table = per_bin_table(loaded, edges, split=split)
    echo_out(format_table(table, format.value))
    if plots is not None:
        from iqa_cache.plots import per_bin_bars

        plots.mkdir(parents=True, exist_ok=True)
        path = per_bin_bars(table, plots / "per_bin_mae.png")
        typer.echo(f"wrote {path}", err=True)

"""`iqa evaluate`: trained runs scored on another labelled cache; the work is
in :mod:`iqa_cache.evaluate`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from iqa_cache.device import Device
from iqa_cache.settings import EVALUATE_SPLITS, EvaluateConfig

from .app import app
from .common import CacheFile, Command, choices, echo_out, handle_errors

EvalSplit = choices("EvalSplit", EVALUATE_SPLITS)
_D = EvaluateConfig()


def parse_label_map(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        a, b = (float(x) for x in parts)
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not A,B (two numbers: label * A + B on the training scale)",
                                 param_hint="--label-map") from None
    return a, b


@app.command("evaluate", cls=Command)
@handle_errors
def evaluate_command(
    runs: Annotated[List[Path], typer.Argument(help="Run directories written by `iqa train-head` or `iqa ablate` "
                                                    "(an ablation folder stands for its runs).", metavar="RUN")],
    cache: CacheFile,
    out: Annotated[Path, typer.Option(help="Folder for the evaluations, one directory <run>_on_<dataset> each "
                                           "(`iqa report` reads them like runs).", metavar="DIR")],
    split: Annotated[EvalSplit, typer.Option(help="The other cache's items to score (all: every labelled item).")
                     ] = EvalSplit(_D.split),
    label_map: Annotated[Optional[str], typer.Option(
        help="Map the other cache's labels onto the training scale as A*label+B (recorded), so that MAE per "
             "range compares, e.g. 25,-25 for 1-5 MOS onto 0-100.", metavar="A,B")] = None,
    device: Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")] = Device(_D.device),
    overwrite: Annotated[bool, typer.Option(help="Replace existing evaluation directories written by iqa.")
                         ] = _D.overwrite,
) -> None:
    """Score trained runs on another labelled cache (cross-dataset evaluation).

    Refuses a cache whose features do not come from the same encoder and
    preprocessing as the run's training cache, naming the attribute.
    """
    from iqa_cache import cache as cache_mod
    from iqa_cache.evaluate import check_evaluable, evaluate_run
    from iqa_cache.report import ReportConfig, build_report, format_report, load_runs

    cfg = EvaluateConfig(split=split.value, label_map=parse_label_map(label_map), device=device.value,
                         overwrite=overwrite)
    trained, _ = load_runs(runs)  # an ablation folder stands for its runs; unfinished ones are named and skipped
    attrs = cache_mod.read_attrs(cache)
    for r in trained:  # every run refused or accepted before the features are read
        check_evaluable(r, attrs, cache)
    data = cache_mod.load(cache)
    written = [evaluate_run(r.path, cache, out, cfg, data=data) for r in trained]
    for w in written:
        echo_out(f"wrote {w}")
    loaded, _ = load_runs(written)
    echo_out(format_report(build_report(loaded, ReportConfig(tables=("iqa",), baseline=False))))

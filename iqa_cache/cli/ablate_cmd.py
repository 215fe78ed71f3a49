"""`iqa ablate`: a grid of training configurations, trained in stacks."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iqa_cache.errors import TrainingDiverged
from iqa_cache.train.config import GRID_KEYS, LOG_EVERY, PLAN_FILE, SUMMARY_FILE

from .app import app
from .common import (
    CacheFile,
    Command,
    Expect,
    LogEvery,
    Threads,
    echo_out,
    handle_errors,
    parse_expect,
    sigterm_interrupts,
)
from .train_cmd import TrainOptions, with_train_options


@app.command("ablate", cls=Command)
@handle_errors
@with_train_options
def ablate_command(
    ctx: typer.Context,
    cache: CacheFile,
    grid: Annotated[str, typer.Option(help="The grid, inline ('lds=on; lds_kernel=gaussian,triang; fds=on,off') "
                                           "or a TOML file of the same keys.  Keys: " + ", ".join(GRID_KEYS) + ".",
                                      metavar="GRID")],
    out: Annotated[Path, typer.Option(help=f"Output folder: a run directory per configuration, {SUMMARY_FILE} "
                                           f"and {PLAN_FILE}.", metavar="DIR")],
    opts: TrainOptions,
    max_stack: Annotated[int, typer.Option(min=1, help="Train at most this many configurations together (lower "
                                                       "it if memory runs short).")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace or remove runs in OUT of other configurations (another "
                                                 "grid or other settings); finished runs of the same ones are kept "
                                                 "either way.")] = False,
    expect: Expect = None,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr (--no-progress: log lines).")] = True,
    log_every: LogEvery = LOG_EVERY,
    threads: Threads = None,
) -> None:
    """Train every configuration of a grid on cached features, those that share shapes at once.

    The training options are the defaults of every configuration; the grid
    varies any of its keys.  Each configuration gets a run directory
    OUT/<name> (for `iqa report`); the summary (test MAE per label range,
    sorted by validation MAE) is printed and written to OUT/summary.csv.  A
    configuration that diverges gets no run directory and does not stop the
    others.  A rerun keeps the finished runs of the same configurations on
    the same cache and trains only the missing ones (after an interruption,
    or for values added to the grid).  Under torchrun (`torchrun
    --nproc-per-node N -m iqa_cache.cli ablate ...`) each rank trains whole
    stacks of the same plan and rank 0 writes the summary: OUT ends as one
    process would leave it.
    """
    from iqa_cache import cache as cache_mod
    from iqa_cache.device import set_threads
    from iqa_cache.embed import distributed as dist
    from iqa_cache.train.grid import expand, format_summary, read_grid, run_ablation
    from iqa_cache.train.runs import check_out_location

    expected = parse_expect(expect)
    base = opts.config(ctx)
    spec = read_grid(grid)
    check_out_location(out, {str(cache): "the cache being trained on"})
    data = cache_mod.load(cache, expect=expected, features=not opts.stream)
    plan = expand(spec, base, data.label_range, auto_reweight=opts.reweight is None)
    set_threads(threads)
    env = dist.from_env()
    if env is not None and env.world > 1:  # under torchrun: whole stacks per rank, rank 0 writes the summary
        from iqa_cache.train.grid import run_ablation_ranks

        with sigterm_interrupts(), dist.Session(env, base.device) as session:
            result = run_ablation_ranks(data, plan, out, session, overwrite=overwrite, max_stack=max_stack,
                                        progress=progress, log_every=log_every)
        if result is None:
            return
    else:
        with sigterm_interrupts():  # SIGTERM ends it like Ctrl-C: finished runs kept, exit 130
            result = run_ablation(data, plan, out, overwrite=overwrite, max_stack=max_stack, progress=progress,
                                  log_every=log_every)
    echo_out(format_summary(result.summary, result.notes))
    n = len(plan.points)
    trained = n - result.n_kept
    kept = f"kept {result.n_kept} finished, trained {trained}" if result.n_kept else f"{n} configuration(s)"
    each = f" ({result.seconds / trained:.2f} s each)" if trained else ""
    typer.echo(f"ablate: {kept} in {result.n_stacks} stack(s), {result.seconds:.1f} s on "
               f"{result.device or base.device}{each}; runs and {SUMMARY_FILE} in {out}/", err=True)
    if result.n_diverged:
        typer.echo(f"warning: {result.n_diverged} of {n} configuration(s) diverged and have no run directory "
                   "(see the summary)", err=True)
    for status, count in result.suspect().items():
        typer.echo(f"warning: {count} of {n} configuration(s) {status} (see the summary's status column)", err=True)
    if result.n_trained == 0:
        raise typer.Exit(TrainingDiverged.exit_code)

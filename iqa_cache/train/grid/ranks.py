"""An ablation over torchrun's ranks: every rank plans the same stacks,
trains the whole stacks assigned to it (:func:`assign_stacks`) and writes
each run as it finishes; rank 0 prepares the folder first and writes the
summary last.  A configuration is trained in the same stack as a single
process would train it, so with equal thread counts its predictions equal
the single process's bit for bit.  A killed rank is resumed by rerunning
the command, with any number of ranks: the finished runs are kept."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from ...cache import CacheData
from ...errors import ConfigError, IqaError, RunError
from ..config import LOG_EVERY
from ..stacked import plan_stacks
from ..status import RUN_STATUSES
from .expand import GridPlan
from .outcomes import AblationResult, Outcome
from .outdir import AblationDir
from .run import ablation_lock, finish_ablation, kept_outcomes, start_ablation, train_and_write

log = logging.getLogger(__name__)


def assign_stacks(sizes: Sequence[int], world: int) -> list[list[int]]:
    """The stacks (indices into ``sizes``, their numbers of configurations)
    of each of ``world`` ranks: largest first, each to the rank with the
    fewest configurations so far (ties: the lower rank); a rank's stacks in
    plan order.  Pure and deterministic: every rank computes the same."""
    if world < 1:
        raise ConfigError(f"the number of ranks must be at least 1, got {world}")
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for j in sorted(range(len(sizes)), key=lambda j: (-sizes[j], j)):
        r = min(range(world), key=lambda r: (load[r], r))
        out[r].append(j)
        load[r] += sizes[j]
    return [sorted(s) for s in out]


def run_ablation_ranks(data: CacheData, plan: GridPlan, out_dir: str | os.PathLike, session, *,
                       overwrite: bool = False, max_stack: int = 64, progress: bool = False,
                       log_every: int = LOG_EVERY
                       ) -> AblationResult | None:
    """:func:`~iqa_cache.train.grid.run.run_ablation` over the ranks of ``session``
    (:class:`iqa_cache.embed.distributed.Session`, entered); the result on rank 0,
    None on the others.  An error on any rank is raised on every rank after
    the others finished their stacks (no rank waits forever)."""
    with contextlib.ExitStack() as held:  # rank 0 holds OUT's lock from the check to the summary
        return _run_ranks(data, plan, Path(out_dir), session, held, overwrite=overwrite, max_stack=max_stack,
                          progress=progress, log_every=log_every)


def _run_ranks(data: CacheData, plan: GridPlan, out_dir: Path, session, held: contextlib.ExitStack, *,
               overwrite: bool, max_stack: int, progress: bool, log_every: int = LOG_EVERY
               ) -> AblationResult | None:
    t0 = time.perf_counter()
    existing: AblationDir | None = None
    error = None
    if session.rank == 0:
        try:
            held.enter_context(ablation_lock(out_dir))
            existing = start_ablation(data, plan, out_dir, overwrite=overwrite)
        except IqaError as e:
            error = str(e)
    error, todo = session.broadcast((error, existing.to_train(plan) if existing is not None else None))
    if error:
        raise RunError(error)
    stacks = plan_stacks([plan.points[i].config for i in todo], max_stack) if todo else []
    mine = [stacks[j] for j in assign_stacks([len(s) for s in stacks], session.world)[session.rank]]
    log.info("rank %d of %d: %d of %d stack(s), %d configuration(s)", session.rank, session.world, len(mine),
             len(stacks), sum(len(s) for s in mine))
    failure, outcomes = None, {}
    try:
        outcomes = train_and_write(data, plan, existing if existing is not None else AblationDir(out_dir), todo,
                                   mine, progress=progress and session.rank == 0, log_every=log_every)
    except Exception as e:  # reported by rank 0 once every rank is done
        failure = f"rank {session.rank}: {e}"
    done = {i: (o.status, o.message) for i, o in outcomes.items() if not o.kept}
    gathered = session.gather_to_root((done, failure))
    failures = session.broadcast([f for _, f in gathered if f] if gathered is not None else None)
    if failures:
        raise RunError("; ".join(failures) + "; the finished runs are kept: rerun the same command to train the rest")
    if session.rank != 0:
        return None
    merged = kept_outcomes(plan, existing)
    for part, _ in gathered:
        for i, (status, message) in part.items():
            point = plan.points[i]
            if status in RUN_STATUSES:
                merged[i] = Outcome.trained(point, out_dir / point.name)
            else:
                merged[i] = Outcome(point, status, message)
    return finish_ablation(data, plan, existing, merged, n_stacks=len(stacks), t0=t0)

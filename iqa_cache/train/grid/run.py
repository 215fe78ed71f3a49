"""Running an ablation: train what is missing, write each run as it
finishes, then the summary and the plan."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from ...cache import CacheData
from ...errors import RunError, TrainingDiverged
from ...schema import item_noun
from ..config import LOG_EVERY, PLAN_FILE, SUMMARY_FILE
from ..runs import json_bytes, output_lock, run_state, write_atomic, write_marker, write_run
from ..stacked import plan_stacks, train_many
from .expand import GridPlan
from .outcomes import AblationResult, Outcome
from .outdir import AblationDir, prepare_ablation_dir
from .summary import notes_of, summary_frame

log = logging.getLogger(__name__)


def run_ablation(data: CacheData, plan: GridPlan, out_dir: str | os.PathLike, *, overwrite: bool = False,
                 max_stack: int = 64, progress: bool = False, existing: AblationDir | None = None,
                 log_every: int = LOG_EVERY) -> AblationResult:
    """Train every configuration of ``plan`` on ``data`` (stacked where shapes
    allow), write each as a run directory ``out_dir/<name>`` and the summary
    as ``out_dir/summary.csv``.  Finished runs of the same configuration on
    the same cache are kept, not retrained (a rerun after an interruption
    trains only what is missing); ``existing`` is :func:`prepare_ablation_dir`'s
    answer when the caller already asked.  Afterwards ``out_dir`` holds the
    runs of this grid only: runs of another grid are removed (``overwrite``)
    once the new ones are complete.  A configuration that diverges gets no
    run directory and does not stop the others."""
    t0 = time.perf_counter()
    with ablation_lock(out_dir):
        existing = start_ablation(data, plan, out_dir, overwrite=overwrite, existing=existing)
        todo = existing.to_train(plan)
        stacks = plan_stacks([plan.points[i].config for i in todo], max_stack) if todo else []
        outcomes = train_and_write(data, plan, existing, todo, stacks, progress=progress,
                                   log_every=log_every)
        return finish_ablation(data, plan, existing, outcomes, n_stacks=len(stacks), t0=t0)


def ablation_lock(out_dir: str | os.PathLike):
    """OUT's writer lock, held from the check of what OUT holds to the
    summary: a second ablate into the same OUT is refused in one line
    naming the pid holding it, so one OUT never mixes two grids."""
    return output_lock(out_dir, "iqa ablate", "ablation folder")


def start_ablation(data: CacheData, plan: GridPlan, out_dir: str | os.PathLike, *, overwrite: bool = False,
                   existing: AblationDir | None = None) -> AblationDir:
    """Check ``out_dir`` (:func:`prepare_ablation_dir`), create it and mark it
    as an unfinished ablation of ``plan``."""
    out_dir = Path(out_dir)
    if existing is None:
        existing = prepare_ablation_dir(plan, out_dir, data, overwrite=overwrite)
    if existing.keep:
        log.info("ablate: kept %d finished, training %d (in %s/)", len(existing.keep),
                 len(existing.to_train(plan)), out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {out_dir}: {e.strerror or e}") from None
    write_marker(out_dir, "ablation", "partial", configurations=[p.name for p in plan.points])
    return existing


def train_and_write(data: CacheData, plan: GridPlan, existing: AblationDir, todo: list[int],
                    stacks: list[list[int]], *, progress: bool = False, log_every: int = LOG_EVERY
                    ) -> dict[int, Outcome]:
    """Train the stacks ``stacks`` (indices into ``todo``, the plan's points to
    train) and write each configuration's run directory as its stack
    finishes; the outcome of every point trained here or kept."""
    out_dir = existing.path
    cfgs = [plan.points[i].config for i in todo]
    outcomes = kept_outcomes(plan, existing)
    n = sum(len(s) for s in stacks)
    bar = None
    if progress and n:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc="ablation", unit="config", dynamic_ncols=True)
    try:
        for j, res in (train_many(data, cfgs, stacks=stacks, progress=progress, log_every=log_every) if n else ()):
            i = todo[j]
            point = plan.points[i]
            target = out_dir / point.name
            if isinstance(res, TrainingDiverged):
                outcomes[i] = Outcome(point, "diverged", str(res))
                if run_state(target) is not None:  # ours, allowed by prepare_ablation_dir: not a result of this
                    shutil.rmtree(target)
                    log.warning("removed the old run directory %s: this configuration diverged", target)
            else:
                write_run(target, res, data.attrs, data.path, overwrite=True, command="iqa ablate",
                          extra={"ablation": {"name": point.name, "grid": point.values,
                                              "grid_source": plan.spec.source}})
                outcomes[i] = Outcome.trained(point, target, result=res)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return outcomes


def kept_outcomes(plan: GridPlan, existing: AblationDir) -> dict[int, Outcome]:
    """The outcomes of the points whose finished runs are kept."""
    return {i: Outcome.trained(p, existing.path / p.name, run=existing.keep[p.name], kept=True)
            for i, p in enumerate(plan.points) if p.name in existing.keep}


def finish_ablation(data: CacheData, plan: GridPlan, existing: AblationDir, outcomes: dict[int, Outcome], *,
                    n_stacks: int, t0: float) -> AblationResult:
    """Once every configuration has its outcome: remove the runs of another
    grid, write the summary and the plan, mark the folder complete."""
    out_dir = existing.path
    for p in existing.stale:  # runs of another grid, removed now that this one's are complete
        if run_state(p) is not None:
            shutil.rmtree(p)
    if existing.stale:
        log.info("%s: removed %d run(s) of another grid or settings", out_dir, len(existing.stale))
    ordered = [outcomes[i] for i in range(len(plan.points))] + [Outcome(p, "skipped", p.skipped)
                                                                 for p in plan.skipped]
    summary = summary_frame(ordered, data.label_range, plan.spec)
    summary.attrs["noun"] = item_noun(data.attrs)
    notes = notes_of(data, ordered)
    csv_text = summary.to_csv(index=False, float_format="%.6f") + "".join(f"# {n}\n" for n in notes)
    plan_doc = {"grid": plan.spec.to_dict(), "grid_source": plan.spec.source,
                "base": plan.base.to_dict() if plan.base is not None else None,
                "configurations": [{"name": p.name, "grid": p.values} for p in plan.points],
                "skipped": [{"name": p.name, "reason": p.skipped} for p in plan.skipped],
                "duplicates": plan.duplicates, "cache": str(Path(data.path).resolve())}
    try:
        write_atomic(out_dir / SUMMARY_FILE, csv_text.encode("utf-8"))
        write_atomic(out_dir / PLAN_FILE, json_bytes(plan_doc))
        write_marker(out_dir, "ablation", "complete", configurations=[p.name for p in plan.points])
    except RunError as e:
        for f in (SUMMARY_FILE, PLAN_FILE):  # an old summary must not pass for this grid's
            with contextlib.suppress(OSError):
                (out_dir / f).unlink()
        raise RunError(f"{e}; the runs are saved: rerun the same command to write the summary") from None
    device = next((o.result.device for o in ordered if o.result is not None),
                  next((str(o.run.config.get("device", "")) for o in ordered if o.run is not None), ""))
    return AblationResult(outcomes=ordered, summary=summary, notes=notes, out_dir=out_dir,
                          seconds=time.perf_counter() - t0, n_stacks=n_stacks, device=device)

"""An ablation's output folder before training: what is kept, replaced or
removed, and the checks that protect what this tool did not write."""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...cache import CacheData
from ...device import resolve_device, resolve_precision
from ...errors import ConfigError, RunError
from ...schema import DEFAULT_FEATURE_DTYPE
from ..config import PLAN_FILE, SUMMARY_FILE, TrainConfig
from ..runs import (
    CACHE_KEYS,
    Run,
    as_json,
    check_out_location,
    clean_stale,
    describe,
    entries,
    load_run,
    read_marker,
    run_state,
    writer_alive,
)
from .expand import GridPlan

log = logging.getLogger(__name__)


@dataclass
class AblationDir:
    """What is in an ablation's output folder before training, by
    :func:`prepare_ablation_dir`: finished runs kept as they are, runs to be
    replaced (``--overwrite``), runs of other grids to be removed once the new
    ones are complete."""

    path: Path
    keep: dict[str, Run] = field(default_factory=dict)  # name -> finished run of the same configuration
    replace: list[str] = field(default_factory=list)    # names of this grid whose run differs
    stale: list[Path] = field(default_factory=list)     # runs of this tool not in this grid

    def to_train(self, plan: GridPlan) -> list[int]:
        return [i for i, p in enumerate(plan.points) if p.name not in self.keep]


def expected_train_config(cfg: TrainConfig, feature_dim: int, label_range: tuple[float, float]) -> dict[str, Any]:
    """``config.json``'s ``train`` section that training ``cfg`` writes."""
    device = resolve_device(cfg.device)
    full = replace(cfg.resolved(label_range, feature_dim), device=device,
                   precision=resolve_precision(cfg.precision, device))
    return as_json(full.to_dict())


def same_run(run_config: dict[str, Any], cfg: TrainConfig, data: CacheData) -> str:
    """'' when the run was trained with ``cfg`` on the same cache contents as
    ``data``; else what differs (settings or cache)."""
    try:  # read back through TrainConfig: a run written before a setting existed has its default
        have_train = as_json(TrainConfig.from_dict(run_config.get("train") or {}).to_dict())
    except (ConfigError, TypeError, ValueError):
        return "other settings"
    if have_train != expected_train_config(cfg, data.feature_dim, data.label_range):
        return "other settings"
    want = as_json({k: data.attrs.get(k) for k in CACHE_KEYS})
    have = {"feature_dtype": DEFAULT_FEATURE_DTYPE, **(run_config.get("cache") or {})}  # runs from before --dtype
    if any(have.get(k) != v for k, v in want.items()):
        return "another cache"
    return ""


def _legacy_ablation(path: Path) -> bool:
    """An ablation folder of a version before the marker: its ablation.json,
    and nothing but runs and the summary beside it."""
    try:
        doc = json.loads((path / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not (isinstance(doc, dict) and "configurations" in doc):
        return False
    return all(n in (SUMMARY_FILE, PLAN_FILE) or run_state(path / n.rstrip("/")) is not None
               for n in entries(path) if not n.startswith("."))


def _clean_stale_files(out_dir: Path) -> None:
    """Temporary summary files a killed ablate left (``.summary.csv.partial-PID``)."""
    for f in (SUMMARY_FILE, PLAN_FILE):
        for p in out_dir.glob(f".{f}.partial-*"):
            pid = p.name.rpartition("-")[2]
            if pid.isdigit() and p.is_file() and not p.is_symlink() and not writer_alive(int(pid)):
                p.unlink()


def prepare_ablation_dir(plan: GridPlan, out_dir: str | os.PathLike, data: CacheData, *,
                         overwrite: bool = False) -> AblationDir:
    """Check the output folder before training and say what happens to what
    is in it.  It must be missing, empty, or an ablation folder this tool
    wrote (marker ``.iqa-run`` of kind ablation, or an older one's layout);
    never the current directory or one holding the cache.  A finished run of
    the same configuration trained on the same cache is kept; runs of other
    configurations (another grid, other settings) are replaced or removed
    only with ``overwrite``, else RunError naming them.  Leftovers of an
    interrupted ablate (``.NAME.partial-PID``, unfinished runs) are removed."""
    out_dir = Path(out_dir)
    state = AblationDir(out_dir)
    check_out_location(out_dir, {str(data.path): "the cache being trained on"})
    if not os.path.lexists(out_dir):
        return state
    if not out_dir.is_dir():
        raise RunError(f"refusing --out {out_dir}: it is a file, not a folder")
    names = entries(out_dir)
    marker = read_marker(out_dir)
    if marker is not None and marker["kind"] == "run" or marker is None and run_state(out_dir) is not None:
        raise RunError(f"refusing to write an ablation into {out_dir}: it is a run directory (of train-head); "
                       "give another --out")
    if names and marker is None and not _legacy_ablation(out_dir):
        raise RunError(f"refusing to write an ablation into {out_dir}: it is not an ablation folder written by iqa "
                       f"(holds {describe(names)})")
    _clean_stale_files(out_dir)
    for n in entries(out_dir):  # what killed writers left: .NAME.partial-PID, .NAME.old-PID
        name, _, tail = n.rstrip("/")[1:].rpartition(".")
        if n.startswith(".") and n.endswith("/") and tail.startswith(("partial-", "old-")):
            clean_stale(out_dir / name)
    by_name = {p.name: p for p in plan.points}
    differ: list[str] = []
    for n in entries(out_dir):
        p = out_dir / n.rstrip("/")
        if not n.endswith("/") or n.startswith("."):
            continue  # summary, plan, marker, a file of the user's, a writer's temporary folder: left alone
        run = run_state(p)
        if run is None:
            raise RunError(f"refusing to write an ablation into {out_dir}: it holds {n}, which is not a run "
                           "written by iqa")
        point = by_name.get(p.name)
        if run == "partial":  # unfinished: replaced when in this grid, else removed now
            if point is None:
                shutil.rmtree(p)
                log.info("removed %s, an unfinished run", p)
            continue
        if point is None:
            state.stale.append(p)
            differ.append(f"{p.name} (not in this grid)")
            continue
        try:
            loaded = load_run(p)
        except RunError:
            state.replace.append(p.name)
            continue
        why = same_run(loaded.config, point.config, data)
        if why:
            state.replace.append(p.name)
            differ.append(f"{p.name} ({why})")
        else:
            state.keep[p.name] = loaded
    if differ and not overwrite:
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise RunError(f"{out_dir} holds finished runs of another grid or other settings: {', '.join(differ[:4])}"
                       f"{more}; pass --overwrite to replace them, or another --out")
    return state

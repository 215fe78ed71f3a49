"""Ablation grids: many training configurations from one base, trained in
stacks (:mod:`iqa_cache.stacked`), each written as a normal run directory,
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
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from .cache import CacheData
from .config import FLAT_FIELDS, GRID_KEYS, PLAN_FILE, SUMMARY_FILE, reweight_note
from .device import resolve_device
from .errors import ConfigError, RunError, TrainingDiverged
from .kernels import KERNELS, REWEIGHTS, even_kernel_message
from .metrics import bin_names, default_edges, per_bin_mae
from .report import run_warnings
from .runs import (
    CACHE_KEYS,
    Run,
    as_json,
    check_out_location,
    clean_stale,
    describe,
    entries,
    json_bytes,
    load_run,
    read_marker,
    run_state,
    write_atomic,
    write_marker,
    write_run,
    writer_alive,
)
from .schema import item_noun
from .seeds import SEED_MAX
from .stacked import check_fds_bins, plan_stacks, train_many
from .train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
# grid keys that act only with LDS (FDS) on: the kernel window's settings
_LDS_ONLY = tuple(k for k in GRID_KEYS if FLAT_FIELDS[k][0] == "lds" and k not in ("lds", "reweight"))
_FDS_ONLY = tuple(k for k in GRID_KEYS if FLAT_FIELDS[k][0] == "fds" and k != "fds")


# ------------------------------------------------------------------- values

def _bad(key: str, raw: Any, allowed: str) -> ConfigError:
    return ConfigError(f"grid {key}={raw!r} is not valid: {allowed}")


def parse_value(key: str, raw: Any) -> Any:
    """One grid value (a string from the inline form, or a TOML value),
    checked; ConfigError naming the key, the value and what is allowed."""
    if key not in GRID_KEYS:
        raise ConfigError(f"grid key '{key}' is not one of {', '.join(GRID_KEYS)}")
    text = str(raw).strip() if not isinstance(raw, bool) else ("on" if raw else "off")
    if key in ("lds", "fds"):
        if text.lower() in _ON:
            return True
        if text.lower() in _OFF:
            return False
        raise _bad(key, raw, "use on or off")
    if key == "reweight":
        if text not in REWEIGHTS:
            raise _bad(key, raw, f"use one of {', '.join(REWEIGHTS)}")
        return text
    if key in ("lds_kernel", "fds_kernel"):
        if text not in KERNELS:
            raise _bad(key, raw, f"use one of {', '.join(KERNELS)}")
        return text
    if key in ("lds_ks", "fds_ks", "seed"):
        try:
            number = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
        except ValueError:
            number = math.nan
        if isinstance(raw, float) and not raw.is_integer() or not float(number).is_integer():
            raise _bad(key, raw, "use a whole number" + (" (an odd kernel size)" if key != "seed" else ""))
        value = int(number)
        if key == "seed":
            if not 0 <= value <= SEED_MAX:
                raise _bad(key, raw, "use a seed from 0 to 2**63-1 (as --seed)")
            return value
        if value < 1:
            raise _bad(key, raw, "use a positive odd kernel size")
        if value % 2 == 0:
            raise _bad(key, raw, even_kernel_message(None, value))
        return value
    try:  # lds_sigma, fds_sigma, bin_size, lr
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _bad(key, raw, "use a positive number")
    return value


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


# --------------------------------------------------------------------- spec

@dataclass(frozen=True)
class GridSpec:
    """The keys of a grid and their values, in the order given."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    source: str = "inline"

    def __post_init__(self) -> None:
        if not self.axes:
            raise ConfigError("the grid is empty: give at least one key, e.g. 'lds=on,off'")

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.axes)

    def points(self) -> Iterator[dict[str, Any]]:
        keys = [k for k, _ in self.axes]
        for combo in itertools.product(*(v for _, v in self.axes)):
            yield dict(zip(keys, combo))

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.axes}


def _norm_key(key: str) -> str:
    return key.strip().replace("-", "_")


def _axes(items: Sequence[tuple[str, Sequence[Any]]]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    seen: dict[str, tuple[Any, ...]] = {}
    for key, raws in items:
        key = _norm_key(key)
        if key not in GRID_KEYS:
            raise ConfigError(f"grid key '{key}' is not one of {', '.join(GRID_KEYS)}")
        if key in seen:
            raise ConfigError(f"grid key '{key}' is given twice; list all its values once, e.g. {key}=a,b")
        if len(raws) == 0:
            raise ConfigError(f"grid key '{key}' has no values")
        values = tuple(parse_value(key, r) for r in raws)
        dup = [format_value(v) for i, v in enumerate(values) if v in values[:i]]
        if dup:
            raise ConfigError(f"grid {key}: value {dup[0]} is given twice")
        seen[key] = values
    return tuple(seen.items())


def parse_grid(text: str) -> GridSpec:
    """The inline form: ``key=v1,v2; key=v; ...`` (``;`` or newlines between
    keys, ``,`` between values)."""
    items = []
    for part in text.replace("\n", ";").split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"grid part '{part.strip()}' is not key=value[,value...]; keys: {', '.join(GRID_KEYS)}")
        key, _, values = part.partition("=")
        raws = [v.strip() for v in values.split(",")]
        if any(v == "" for v in raws):
            raise ConfigError(f"grid key '{key.strip()}' has an empty value in '{part.strip()}'")
        items.append((key, raws))
    return GridSpec(_axes(items), source="inline")


def load_grid_file(path: str | os.PathLike) -> GridSpec:
    """A TOML file whose top-level keys are grid keys, each a value or a
    list of values (an optional ``[grid]`` table holding them also works)."""
    path = Path(path)
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(f"reading the grid file {path} needs Python 3.11 or the 'tomli' package "
                              "(pip install tomli); or give the grid inline") from None
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {path} cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"grid file {path} is not valid TOML ({e})") from None
    if set(doc) == {"grid"} and isinstance(doc["grid"], dict):
        doc = doc["grid"]
    items = []
    for key, value in doc.items():
        if isinstance(value, dict):
            raise ConfigError(f"grid file {path}: '{key}' is a table; give grid keys as values or lists")
        items.append((key, value if isinstance(value, list) else [value]))
    return GridSpec(_axes(items), source=str(path))


def read_grid(arg: str) -> GridSpec:
    """``--grid``: a TOML file when ``arg`` names an existing file or ends in
    .toml, else the inline form."""
    p = Path(arg)
    if arg.strip().lower().endswith(".toml") or ("=" not in arg and p.is_file()):
        if not p.is_file():
            raise ConfigError(f"grid file {p} does not exist")
        return load_grid_file(p)
    return parse_grid(arg)


# ------------------------------------------------------------------ points

@dataclass(frozen=True)
class GridPoint:
    """One configuration of a grid: its run name, the grid values that take
    effect in it, and the full training configuration."""

    name: str
    values: dict[str, Any]
    config: TrainConfig | None = None
    skipped: str = ""


@dataclass
class GridPlan:
    spec: GridSpec
    points: list[GridPoint]
    skipped: list[GridPoint] = field(default_factory=list)
    duplicates: int = 0


def _effective(values: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The grid values that change what ``cfg`` trains."""
    uses_bins = cfg.lds.reweight != "none" or cfg.fds.enabled
    return {k: v for k, v in values.items()
            if not (k in _LDS_ONLY and not cfg.lds.enabled) and not (k in _FDS_ONLY and not cfg.fds.enabled)
            and not (k == "bin_size" and not uses_bins)}


def apply_point(base: TrainConfig, values: dict[str, Any], *, auto_reweight: bool) -> TrainConfig:
    """``base`` with the grid ``values`` set (:meth:`TrainConfig.from_flat`,
    as train-head builds its configuration).  ``auto_reweight``: no reweight
    was chosen, so it follows LDS (``sqrt_inv`` with LDS on, else ``none``),
    as in train-head."""
    flat = dict(values)
    if auto_reweight:
        flat.setdefault("reweight", None)
    return TrainConfig.from_flat(flat, base)


def point_name(eff: dict[str, Any], shown: Sequence[str], cfg: TrainConfig) -> str:
    """A configuration's run name: the grid values ``shown`` as key=value,
    plus the reweighting when the name would not say it (it is not what LDS
    on/off implies: ``lds=off,reweight=inverse`` rather than a plain
    ``lds=off`` that reads as no reweighting)."""
    parts = [f"{k}={format_value(eff[k])}" for k in shown]
    note = reweight_note(cfg)
    if note is not None and "reweight" not in shown:
        parts.append(f"reweight={note}")
    return ",".join(parts) or "base"


@contextlib.contextmanager
def _quiet_config_warnings() -> Iterator[None]:
    """TrainConfig warns when FDS would never smooth; say it once for the grid,
    not once per configuration."""
    loggers = [logging.getLogger(n) for n in ("iqa_cache.config", "iqa_cache.train")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def expand(spec: GridSpec, base: TrainConfig, label_range: tuple[float, float], *,
           auto_reweight: bool = False) -> GridPlan:
    """Every configuration of ``spec`` over ``base``: named, deduplicated,
    and with impossible combinations set aside (``GridPlan.skipped``)."""
    kept: list[tuple[dict[str, Any], TrainConfig]] = []
    skipped: list[tuple[dict[str, Any], str]] = []
    seen: set[tuple] = set()
    duplicates = 0
    with _quiet_config_warnings():
        for values in spec.points():
            try:
                cfg = apply_point(base, values, auto_reweight=auto_reweight)
                check_fds_bins(cfg, cfg.bins(label_range))
            except ConfigError as e:
                skipped.append((values, str(e)))
                continue
            eff = _effective(values, cfg)
            key = tuple(sorted(eff.items()))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            kept.append((eff, cfg))
    if base.fds.start_smooth >= base.epochs and any(c.fds.enabled for _, c in kept):
        log.warning("FDS starts smoothing at epoch %d but training stops after %d epochs: FDS will have no effect",
                    base.fds.start_smooth, base.epochs)
    if not kept:
        reason = skipped[0][1] if skipped else "no configuration"
        raise ConfigError(f"the grid leaves no configuration to train ({len(skipped)} skipped; first: {reason})")
    order = [k for k, _ in spec.axes]
    varying = {k for k in order if len({format_value(e[k]) if k in e else None for e, _ in kept}) > 1}
    points = []
    for eff, cfg in kept:
        shown = [k for k in order if k in eff and (k in varying or not varying)]
        name = point_name(eff, shown, cfg)
        points.append(GridPoint(name=name, values=eff, config=cfg))
    skipped_points = [GridPoint(name=",".join(f"{k}={format_value(v)}" for k, v in values.items()), values=values,
                                skipped=reason) for values, reason in skipped]
    if skipped:
        log.warning("skipping %d grid configuration(s) that cannot be trained (first: %s: %s)", len(skipped),
                    skipped_points[0].name, skipped[0][1])
    if duplicates:
        log.info("%d grid configuration(s) equal another one once unused settings are dropped: trained once",
                 duplicates)
    return GridPlan(spec=spec, points=points, skipped=skipped_points, duplicates=duplicates)


# ---------------------------------------------------------------------- run

@dataclass
class Outcome:
    """What became of one configuration.  ``run``: its run directory as
    written (read back, so the summary is computed from the files `iqa
    report` reads); ``kept``: that run was already there, finished, for the
    same configuration and cache, and was not retrained."""

    point: GridPoint
    status: str  # ok, diverged, skipped
    message: str = ""
    result: TrainResult | None = None
    run_dir: Path | None = None
    run: Run | None = None
    kept: bool = False

    @property
    def predictions(self) -> pd.DataFrame | None:
        if self.run is not None:
            return self.run.predictions
        return self.result.predictions if self.result is not None else None

    @property
    def best(self) -> tuple[float, int]:
        """(validation MAE, epoch) of the epoch kept."""
        if self.result is not None:
            return self.result.best_val_mae, self.result.best_epoch
        m = self.run.metrics if self.run is not None else {}
        val = m.get("best_val_mae")
        return (math.nan if val is None else float(val)), int(m.get("best_epoch", -1))


@dataclass
class AblationResult:
    outcomes: list[Outcome]
    summary: pd.DataFrame
    notes: list[str]
    out_dir: Path
    seconds: float
    n_stacks: int
    device: str

    @property
    def n_diverged(self) -> int:
        return sum(o.status == "diverged" for o in self.outcomes)

    @property
    def n_ok(self) -> int:
        return sum(o.status == "ok" for o in self.outcomes)

    @property
    def n_kept(self) -> int:
        return sum(o.kept for o in self.outcomes)


# -------------------------------------------------------- the output folder

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


def expected_train_config(cfg: TrainConfig, feature_dim: int) -> dict[str, Any]:
    """``config.json``'s ``train`` section that training ``cfg`` writes."""
    full = replace(cfg, head=replace(cfg.head, in_dim=feature_dim), device=resolve_device(cfg.device))
    return as_json(full.to_dict())


def same_run(run_config: dict[str, Any], cfg: TrainConfig, data: CacheData) -> str:
    """'' when the run was trained with ``cfg`` on the same cache contents as
    ``data``; else what differs (settings or cache)."""
    if run_config.get("train") != expected_train_config(cfg, int(data.features.shape[1])):
        return "other settings"
    want = as_json({k: data.attrs.get(k) for k in CACHE_KEYS})
    have = run_config.get("cache") or {}
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


def run_ablation(data: CacheData, plan: GridPlan, out_dir: str | os.PathLike, *, overwrite: bool = False,
                 max_stack: int = 64, progress: bool = False, existing: AblationDir | None = None) -> AblationResult:
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
    out_dir = Path(out_dir)
    if existing is None:
        existing = prepare_ablation_dir(plan, out_dir, data, overwrite=overwrite)
    todo = existing.to_train(plan)
    if existing.keep:
        log.info("ablate: kept %d finished, training %d (in %s/)", len(existing.keep), len(todo), out_dir)
    names = [p.name for p in plan.points]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {out_dir}: {e.strerror or e}") from None
    write_marker(out_dir, "ablation", "partial", configurations=names)
    cfgs = [plan.points[i].config for i in todo]
    n_stacks = len(plan_stacks(cfgs, max_stack)) if cfgs else 0
    outcomes: dict[int, Outcome] = {i: Outcome(p, "ok", run_dir=out_dir / p.name, run=existing.keep[p.name],
                                               kept=True) for i, p in enumerate(plan.points) if p.name in existing.keep}
    bar = None
    if progress and cfgs:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cfgs), desc="ablation", unit="config", dynamic_ncols=True)
    try:
        for j, res in (train_many(data, cfgs, max_stack=max_stack, progress=progress) if cfgs else ()):
            i = todo[j]
            point = plan.points[i]
            target = out_dir / point.name
            if isinstance(res, TrainingDiverged):
                outcomes[i] = Outcome(point, "diverged", str(res))
                if run_state(target) is not None:  # ours, allowed by prepare_ablation_dir: not a result of this
                    shutil.rmtree(target)
                    log.warning("removed the old run directory %s: this configuration diverged", target)
            else:
                write_run(target, res, data.attrs, data.path, overwrite=True,
                          extra={"ablation": {"name": point.name, "grid": point.values,
                                              "grid_source": plan.spec.source}})
                outcomes[i] = Outcome(point, "ok", result=res, run_dir=target, run=load_run(target))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for p in existing.stale:  # runs of another grid, removed now that this one's are complete
        if run_state(p) is not None:
            shutil.rmtree(p)
    if existing.stale:
        log.info("%s: removed %d run(s) of another grid or settings", out_dir, len(existing.stale))
    ordered = [outcomes[i] for i in range(len(plan.points))] + [Outcome(p, "skipped", p.skipped)
                                                                 for p in plan.skipped]
    summary = summary_frame(ordered, data.label_range, plan.spec)
    summary.attrs["noun"] = item_noun(data.attrs)
    notes = _notes(data, ordered)
    csv_text = summary.to_csv(index=False, float_format="%.6f") + "".join(f"# {n}\n" for n in notes)
    plan_doc = {"grid": plan.spec.to_dict(), "grid_source": plan.spec.source,
                "base": plan.points[0].config.to_dict() if plan.points else None,
                "configurations": [{"name": p.name, "grid": p.values} for p in plan.points],
                "skipped": [{"name": p.name, "reason": p.skipped} for p in plan.skipped],
                "duplicates": plan.duplicates, "cache": str(Path(data.path).resolve())}
    try:
        write_atomic(out_dir / SUMMARY_FILE, csv_text.encode("utf-8"))
        write_atomic(out_dir / PLAN_FILE, json_bytes(plan_doc))
        write_marker(out_dir, "ablation", "complete", configurations=names)
    except RunError as e:
        for f in (SUMMARY_FILE, PLAN_FILE):  # an old summary must not pass for this grid's
            with contextlib.suppress(OSError):
                (out_dir / f).unlink()
        raise RunError(f"{e}; the runs are saved: rerun the same command to write the summary") from None
    device = next((o.result.device for o in ordered if o.result is not None),
                  next((str(o.run.config.get("device", "")) for o in ordered if o.run is not None), ""))
    return AblationResult(outcomes=ordered, summary=summary, notes=notes, out_dir=out_dir,
                          seconds=time.perf_counter() - t0, n_stacks=n_stacks, device=device)


# ------------------------------------------------------------------ summary

def summary_frame(outcomes: Sequence[Outcome], label_range: tuple[float, float], spec: GridSpec) -> pd.DataFrame:
    """One row per configuration: validation MAE, best epoch, test MAE per
    label range and overall, status, and its grid values; trained
    configurations by validation MAE, then diverged, then skipped ones.
    ``attrs['bins']`` names the per-range columns, ``attrs['n_test']`` gives
    the test images per range."""
    edges = default_edges(label_range)
    names = bin_names(edges) + ["All"]
    rows, counts = [], []
    for o in outcomes:
        row: dict[str, Any] = {"run": o.point.name, "val_mae": math.nan, "best_epoch": pd.NA}
        row.update({n: math.nan for n in names})
        p = o.predictions
        if p is not None:
            test = p[p["split"] == "test"]
            per_bin = per_bin_mae(test["label"].to_numpy(), test["pred"].to_numpy(), edges)
            row.update({n: per_bin[n][0] for n in names})
            row["val_mae"], row["best_epoch"] = o.best
            counts = counts or [per_bin[n][1] for n in names]
        row["status"] = o.status if o.status == "ok" else f"{o.status}: {o.message}"
        for k, _ in spec.axes:
            row[k] = format_value(o.point.values[k]) if k in o.point.values else ""
        rows.append(row)
    df = pd.DataFrame(rows)
    rank = [0 if o.status == "ok" else 1 if o.status == "diverged" else 2 for o in outcomes]
    df = df.assign(_rank=rank).sort_values(["_rank", "val_mae"], kind="stable", na_position="last")
    df = df.drop(columns="_rank").reset_index(drop=True)
    df["best_epoch"] = df["best_epoch"].astype("Int64")
    df.attrs["bins"], df.attrs["n_test"] = names, counts
    return df


def _notes(data: CacheData, outcomes: Sequence[Outcome]) -> list[str]:
    runs = [Run(path=o.run_dir or Path(o.point.name), name=o.point.name,
                config={"cache": {k: data.attrs.get(k) for k in CACHE_KEYS}},
                predictions=o.predictions, metrics={})
            for o in outcomes if o.predictions is not None]
    notes = run_warnings(runs[:1]) if runs else []  # one cache for all: the first run says it
    return [n.replace(f"run '{runs[0].name}' was", "these runs were") for n in notes] if runs else notes


def format_summary(df: pd.DataFrame, notes: Sequence[str] = (), digits: int = 4) -> str:
    """The summary as markdown: a caption line, then the table (test MAE per
    label range), then any notes."""
    bins = df.attrs.get("bins", [])

    def num(x: Any) -> str:
        return "–" if pd.isna(x) else f"{x:.{digits}f}"

    head = ["run", "val MAE", "best epoch"] + list(bins) + ["status"]
    lines = [f"Test MAE per label range, {len(df)} configuration(s) sorted by validation MAE", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
    for _, r in df.iterrows():
        epoch = "–" if pd.isna(r["best_epoch"]) else str(int(r["best_epoch"]))
        lines.append("| " + " | ".join([r["run"], num(r["val_mae"]), epoch] + [num(r[b]) for b in bins]
                                       + [r["status"]]) + " |")
    counts = df.attrs.get("n_test") or []
    if counts:
        noun = df.attrs.get("noun", "images")
        lines.append("| " + " | ".join([f"*n (test {noun})*", "", ""] + [str(c) for c in counts] + [""]) + " |")
    out = "\n".join(lines) + "\n"
    if notes:
        out += "\n" + "\n".join(f"> **{n.split(':', 1)[0]}**:{n.split(':', 1)[1]}" if ":" in n else f"> {n}"
                                for n in notes) + "\n"
    return out

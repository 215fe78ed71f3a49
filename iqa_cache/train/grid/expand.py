"""A grid expanded over a base configuration: one named configuration per
point, unused settings dropped, duplicates merged, impossible ones set aside."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ...errors import ConfigError
from ..config import FLAT_FIELDS, GRID_KEYS, TrainConfig, reweight_note
from ..methods import CLOSED_FORM_METHODS, PARAMETER_METHODS, uses
from ..stacked import check_fds_bins
from .spec import GridSpec, format_value

log = logging.getLogger(__name__)

# grid keys that act only with LDS (FDS) on: the kernel window's settings
_LDS_ONLY = tuple(k for k in GRID_KEYS if FLAT_FIELDS[k][0] == "lds" and k not in ("lds", "reweight"))
_FDS_ONLY = tuple(k for k in GRID_KEYS if FLAT_FIELDS[k][0] == "fds" and k != "fds")
# grid keys a closed-form method (ridge) does not read: no optimiser, no initialisation or batch order
_NOT_SOLVED = ("lr", "seed")

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
    base: TrainConfig | None = None  # the settings every point starts from (options and preset, no grid value)


def _effective(values: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The grid values that change what ``cfg`` trains."""
    m = cfg.method.name
    uses_bins = cfg.lds.reweight != "none" or cfg.fds.enabled or m in ("bni", "dist", "ranksim")
    lds_kernel = cfg.lds.enabled or (m == "bni" and cfg.method.bni_lds)  # BNI may smooth with the LDS kernel ...
    unused = {"lds_sigma"} if not cfg.lds.enabled else set()  # ... and size, with its own sigma
    if not (m == "bni" and cfg.method.bni_lds):
        unused.add("bni_sigma")
    return {k: v for k, v in values.items()
            if not (k in _LDS_ONLY and not lds_kernel) and not (k in _FDS_ONLY and not cfg.fds.enabled)
            and k not in unused
            and not (k == "bin_size" and not uses_bins) and not (k in PARAMETER_METHODS and not uses(m, k))
            and not (k in _NOT_SOLVED and m in CLOSED_FORM_METHODS)}


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
    loggers = [logging.getLogger(n) for n in ("iqa_cache.train.config", "iqa_cache.train.fit")]
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
                cfg = apply_point(base, values, auto_reweight=auto_reweight).resolved(label_range)
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
    points = []
    for eff, cfg in kept:  # every key the grid spells out, constants too: two grids' runs never share a name
        name = point_name(eff, [k for k in order if k in eff], cfg)
        points.append(GridPoint(name=name, values=eff, config=cfg))
    skipped_points = [GridPoint(name=",".join(f"{k}={format_value(v)}" for k, v in values.items()), values=values,
                                skipped=reason) for values, reason in skipped]
    if skipped:
        log.warning("skipping %d grid configuration(s) that cannot be trained (first: %s: %s)", len(skipped),
                    skipped_points[0].name, skipped[0][1])
    if duplicates:
        log.info("%d grid configuration(s) equal another one once unused settings are dropped: trained once",
                 duplicates)
    try:
        resolved_base = base.resolved(label_range)
    except ConfigError:  # a base that only the grid's values make trainable (e.g. its bin size)
        resolved_base = base
    return GridPlan(spec=spec, points=points, skipped=skipped_points, duplicates=duplicates, base=resolved_base)

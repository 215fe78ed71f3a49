"""Runs into report rows: loading run directories (their warnings are
:mod:`iqa_cache.train.provenance`), the data of a split, grouping runs that differ only in seed (and naming
the groups), the train-mean baselines, and the run and bin helpers that
tables and plots share.

Kept light at import time (``iqa report`` starts fast): no torch or
scipy, and :mod:`iqa_cache.train.runs` (pandas) is imported inside the
functions that need it."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..binning import Bins
from ..errors import ConfigError, RunError
from ..metrics import default_edges
from ..schema import DATA_KEYS, FEATURE_KEYS, item_noun
from ..train.config import FDSConfig, LDSConfig, default_reweight
from ..train.kernels import label_density
from ..train.methods import uses
from .types import Baseline, Entry

if TYPE_CHECKING:
    from ..train.runs import Run

log = logging.getLogger(__name__.rpartition(".")[0])  # the package's logger, as before the split


def load_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[str, str]]]:
    """Load the finished runs among ``paths``; the others (missing files, a
    killed run, not a run directory) are returned as (path, reason) and
    logged.  An ablation folder (``iqa ablate``'s OUT) stands for its
    finished runs, and its ``summary.csv`` and ``ablation.json`` are passed
    over (``runs/grid/*``).  RunError, naming them all, when none is finished; a single
    path fails with its own reason."""
    from ..train.runs import ablation_runs, grid_file, load_run

    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    expanded: list[str | os.PathLike] = []
    for p in paths:  # an ablation folder stands for its runs; its summary files (from a glob) are no runs
        inside = ablation_runs(p)
        if inside:
            expanded.extend(inside)
        elif inside is not None:
            skipped.append((str(p), f"ablation folder {p} holds no finished run yet"))
        elif not grid_file(p):
            expanded.append(p)
    for p in expanded:
        key = Path(p).resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            runs.append(load_run(p))
        except RunError as e:
            skipped.append((str(p), str(e)))
    if not runs:
        if len(skipped) == 1:
            raise RunError(skipped[0][1])
        raise RunError(f"none of the {len(skipped)} run directories is finished: "
                       + "; ".join(why for _, why in skipped))
    for p, why in skipped:
        log.warning("skipping %s: %s", p, why)
    return runs, skipped


def runs_noun(runs: Sequence[Run]) -> str:
    """What the rows are called in tables: ``images``, or ``items`` when any
    run was trained on imported features (``iqa import``)."""
    return "items" if any(item_noun(r.cache) == "items" for r in runs) else "images"


# -------------------------------------------------------------- run and bins

def range_edges(runs: Sequence[Run], edges: Sequence[float] | None = None) -> list[float]:
    """The label-range edges of the tables: ``edges`` when given, else the
    default ranges of the runs' label range (0-100 when they disagree)."""
    if edges is not None:
        return list(edges)
    ranges = {r.label_range for r in runs}
    return default_edges(next(iter(ranges))) if len(ranges) == 1 else default_edges((0.0, 100.0))


def split_arrays(run: Run, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, labels, predictions) of one split, images with a known
    label and a finite prediction only."""
    p = run.predictions
    p = p[p["split"] == split]
    lab, pred = p["label"].to_numpy(np.float64), p["pred"].to_numpy(np.float64)
    ok = np.isfinite(lab) & np.isfinite(pred)
    return p["image_id"].to_numpy(object)[ok], lab[ok], pred[ok]


def train_labels(run: Run) -> np.ndarray:
    lab = run.predictions.loc[run.predictions["split"] == "train", "label"].to_numpy(np.float64)
    return lab[np.isfinite(lab)]


def run_bins(run: Run) -> Bins:
    b = run.config["bins"]
    return Bins(float(b["lo"]), float(b["hi"]), float(b["size"]))


def data_key(run: Run, split: str) -> str:
    """Equal for runs on the same data: the same training labels and the
    same images and labels in ``split``."""
    ids, lab, _ = split_arrays(run, split)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.sort(train_labels(run))).tobytes())
    h.update("\0".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(lab).tobytes())
    return h.hexdigest()


def lds_curves(run: Run, lds: dict | None = None) -> dict[str, Any]:
    """Per-bin training-label counts, the values LDS inverts before and
    after smoothing (both normalised to sum 1), and the resulting loss weight
    per bin (1 / smoothed value, scaled so that the weights average 1 over
    the training images, as :func:`~iqa_cache.train.kernels.lds_weights`; NaN
    for bins no training image falls in).  ``lds``: the LDS section of a
    train config (default: the run's own); settings it lacks take the
    defaults of :class:`~iqa_cache.train.config.LDSConfig`."""
    bins = run_bins(run)
    cfg = dict(lds if lds is not None else run.config["train"]["lds"])
    default = LDSConfig()
    labels = train_labels(run)
    reweight = cfg.get("reweight", default.reweight)
    if reweight == "none":
        raise ConfigError(f"run {run.name} uses no loss re-weighting; there are no LDS weights to show")
    emp, eff = label_density(labels, bin_size=bins.size, lo=bins.lo, hi=bins.hi, reweight=reweight,
                             kernel=cfg.get("kernel", default.kernel), ks=int(cfg.get("ks", default.ks)),
                             sigma=float(cfg.get("sigma", default.sigma)),
                             lds=bool(cfg.get("enabled", default.enabled)))
    counts = bins.counts(labels)
    with np.errstate(divide="ignore"):
        inv = np.where(eff > 0, 1.0 / np.where(eff > 0, eff, 1.0), np.nan)
    scale = len(labels) / np.sum(inv[bins.index(labels)]) if len(labels) else np.nan
    weight = np.where(counts > 0, inv * scale, np.nan)
    return {"edges": bins.edges(), "counts": counts, "empirical": emp / max(emp.sum(), 1e-300),
            "smoothed": eff / max(eff.sum(), 1e-300), "weight": weight, "weight_any": inv * scale,
            "reweight": reweight, "config": cfg, "bins": bins}


# --------------------------------------------------------------- seed groups

def _display_names(runs: Sequence[Run]) -> dict[int, str]:
    """Run directory names; parent/name where two runs share a name."""
    names = {id(r): r.name for r in runs}
    dup = {n for n in names.values() if list(names.values()).count(n) > 1}
    for r in runs:
        if r.name in dup:
            names[id(r)] = f"{r.path.parent.name}/{r.name}"
    return names


def seed_key(run: Run) -> str:
    """Runs with equal keys differ at most in their seed and split: the train section
    of config.json minus ``seed`` and ``split``, the label bins and the cache identity
    (what its features are and which images, labels and splits it holds)."""
    train = {k: v for k, v in run.config.get("train", {}).items() if k not in ("seed", "split")}
    cache = {k: run.cache.get(k) for k in FEATURE_KEYS + DATA_KEYS}
    evaluated = (run.config.get("evaluation") or {}).get("identity")  # `iqa evaluate`: which dataset it scored
    return json.dumps({"train": train, "bins": run.config.get("bins"), "cache": cache, "evaluated": evaluated},
                      sort_keys=True, default=str)


def run_seed(run: Run) -> Any:
    return run.config.get("train", {}).get("seed")


def run_split(run: Run) -> Any:
    """The run's split seed (None: the cache's own split)."""
    return (run.config.get("train", {}).get("split") or {}).get("seed")


def group_size(runs: Sequence[Run]) -> str:
    """'3 seeds', or '3 seeds × 10 splits' where the runs' splits differ."""
    seeds = len({str(run_seed(r)) for r in runs})
    splits = len({str(run_split(r)) for r in runs})
    return f"{seeds} seed{'s' if seeds != 1 else ''}" + (f" × {splits} splits" if splits > 1 else "")


_SEED_PART = r"[_\-.,]?(s|seed)[_\-=]?"


def seed_group_name(names: list[str], seeds: list[Any]) -> str:
    """The name the runs of a seed group share once their seed part is
    dropped ('lds_s0', 'lds-seed1', and ablate's 'lds=on,seed=2' all lose
    it), else their common prefix; '' when the names say nothing but the
    seed (ablate's 'seed=0', 'seed=1') or share nothing."""
    names = [re.sub(r"(^|[_,])split[=_]?([0-9]+|official)(?=$|[_, ])", "", n).lstrip("_,")
             for n in names]  # the split part too
    stripped = [re.sub(rf"{_SEED_PART}{re.escape(str(s))}$", "", n) for n, s in zip(names, seeds)]
    if len(set(stripped)) == 1 and stripped[0] and stripped[0] not in names:
        return stripped[0]
    prefix = os.path.commonprefix(names).rstrip("_-. ")
    if re.fullmatch(rf"{_SEED_PART}[0-9]*", prefix):  # 'seed=', 's': only the seed
        return ""
    return prefix


def _flat(d: dict[str, Any], at: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{at}{k}."))
        else:
            out[f"{at}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_SHOWN = {f"{m}.{k}" for m in ("lds", "fds") for k in ("enabled", "kernel", "ks", "sigma")} | {"lds.reweight",
                                                                                               "method.name"}


def _method(train: dict[str, Any], lds_on: bool) -> str:
    return (train.get("method") or {}).get("name") or ("lds" if lds_on else "vanilla")


def training_label(train: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    """What a run trained, from the train section of its config.json: the
    method as :func:`iqa_cache.train.config.run_tag` names it ('vanilla', 'lds',
    'lds-inverse', 'rw-inverse', 'fds', 'lds+fds', ...) with the smoothing
    settings (ks, sigma; the kernel where it is not the default of
    LDSConfig / FDSConfig), then each other setting in which ``others`` (the
    train sections of the other rows of a report) differ, e.g.
    ``lds+fds ks=5 sigma=2 lr=0.01``."""
    defaults = {"lds": LDSConfig(), "fds": FDSConfig()}

    def smoothing(t: dict[str, Any]) -> list[str]:
        return [m for m in ("lds", "fds") if (t.get(m) or {}).get("enabled", defaults[m].enabled)]

    secs = {m: train.get(m) or {} for m in ("lds", "fds")}
    on = smoothing(train)
    reweight = secs["lds"].get("reweight", default_reweight("lds" in on))

    def settings(m: str) -> str:
        kernel = secs[m].get("kernel", defaults[m].kernel)
        parts = [] if kernel == defaults[m].kernel else [f"kernel={kernel}"]
        parts += [f"ks={_fmt(secs[m].get('ks', defaults[m].ks))}",
                  f"sigma={_fmt(secs[m].get('sigma', defaults[m].sigma))}"]
        return " ".join(parts)

    tags = {"lds": "lds" if reweight == default_reweight(True) else f"lds-{reweight}", "fds": "fds"}
    reweighting = [] if "lds" in on or reweight == default_reweight(False) else [f"rw-{reweight}"]
    if len({settings(m) for m in on}) == 1:  # one smoothing, or both with the same settings
        label = f"{'+'.join(reweighting + [tags[m] for m in on])} {settings(on[0])}"
    else:
        label = ", ".join(reweighting + [f"{tags[m]} {settings(m)}" for m in on]) or "vanilla"
    method = _method(train, "lds" in on)
    if method not in ("vanilla", "lds"):  # the method that is not a smoothing leads: 'bmc', 'ranksim+lds ...'
        label = method if label == "vanilla" else f"{method}+{label}"
    mine = _flat({k: v for k, v in train.items() if k not in ("seed", "split")})
    theirs = [(smoothing(o), _flat({k: v for k, v in o.items() if k not in ("seed", "split")})) for o in others]
    short = {}
    for k in mine:
        tail = k.rpartition(".")[2]
        short[k] = tail if sum(1 for j in mine if j.rpartition(".")[2] == tail) == 1 else k

    def differs(k: str) -> bool:
        # a setting of LDS or FDS matters only where that smoothing is on, here and in the other row
        m, _, field = k.partition(".")
        if m in defaults and m not in on:
            return False
        if m == "method":  # a method's hyper-parameter matters where that method is trained, here and there
            return uses(method, field) and any(str(o.get(k)) != str(mine[k]) for o_on, o in theirs
                                               if uses(o.get("method.name", ""), field))
        return any(str(o.get(k)) != str(mine[k]) for o_on, o in theirs if m not in defaults or m in o_on)

    differ = [k for k in mine if k not in _SHOWN and differs(k)]
    return " ".join([label] + [f"{short[k]}={_fmt(mine[k])}" for k in differ])


def group_entries(runs: Sequence[Run], group_seeds: bool = True) -> tuple[list[Entry], list[str]]:
    """One entry per run, or per set of runs that differ only in seed (in
    the order they first appear).  Runs with the same settings *and* the
    same seed are not grouped (a copy is not a second seed); a note says so.
    A seed group is named by what its runs' names share once the seed part
    is dropped (:func:`seed_group_name`), or, where they share nothing but
    the seed (ablate's 'seed=0', 'seed=1'), by what it trained
    (:func:`training_label`)."""
    disp = _display_names(runs)
    if not group_seeds:
        return [Entry(disp[id(r)], [r]) for r in runs], []
    buckets: dict[str, list[Run]] = {}
    for r in runs:
        buckets.setdefault(seed_key(r), []).append(r)
    entries, notes, done = [], [], set()
    unnamed: list[tuple[Entry, int]] = []
    for r in runs:
        key = seed_key(r)
        if key in done:
            continue
        done.add(key)
        members = buckets[key]
        seeds = [run_seed(m) for m in members]
        if len(members) == 1:
            entries.append(Entry(disp[id(r)], members))
        elif len({(str(s), str(run_split(m))) for s, m in zip(seeds, members)}) < len(seeds):
            notes.append(f"note: runs {', '.join(disp[id(m)] for m in members)} have the same settings and "
                         "seeds that repeat; shown one by one, not as a seed group")
            entries += [Entry(disp[id(m)], [m]) for m in members]
        else:
            base = seed_group_name([m.name for m in members], seeds)
            entries.append(Entry(f"{base} ({group_size(members)})", members, kind="seeds"))
            if not base:
                unnamed.append((entries[-1], group_size(members)))
    trains = [e.runs[0].config.get("train", {}) for e in entries]
    for e, k in unnamed:
        mine = e.runs[0].config.get("train", {})
        e.name = f"{training_label(mine, [t for t in trains if t is not mine])} ({k})"
    names = [e.name for e in entries]
    for e in entries:  # two groups with the same stem
        if names.count(e.name) > 1 and e.kind == "seeds":
            e.name = f"{e.runs[0].path.parent.name}/{e.name}"
    return entries, notes


def make_baselines(runs: Sequence[Run], split: str) -> list[Baseline]:
    """One train-mean baseline per distinct (training labels, split) data;
    the drawn splits of one cache (``--split-seed``) share one, over them."""
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(data_key(r, split), r)
    families: dict[str, list[Run]] = {}  # the drawn splits of one cache: one baseline row over them
    for key, r in seen.items():
        if not len(train_labels(r)):
            continue
        family = key if run_split(r) is None else json.dumps(
            {"cache": {k: r.cache.get(k) for k in FEATURE_KEYS + DATA_KEYS},
             "evaluated": (r.config.get("evaluation") or {}).get("identity"),
             "ratios": (r.config.get("train", {}).get("split") or {}).get("ratios")}, sort_keys=True, default=str)
        families.setdefault(family, []).append(r)
    out = []
    for members in families.values():
        r = members[0]
        means = [float(train_labels(m).mean()) for m in members]
        name = f"baseline: train mean {np.mean(means):.4g}"
        if len(members) > 1:
            name += f" ({len(members)} splits)"
        if len(families) > 1:
            name += f" ({r.name}'s data)"
        out.append(Baseline(name, means[0], r, splits=list(zip(means[1:], members[1:]))))
    return out

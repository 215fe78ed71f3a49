"""Tables built from run directories.  Every number is recomputed from
``predictions.csv``; nothing is copied from training logs.

Two layers:

* :func:`per_bin_table` / :func:`format_table`: the paper's Table 1 form for
  a list of runs (used by ``train-head``, the demo and ``report``);
* :func:`build_report` / :func:`format_report`: the full report of
  ``iqa report``: runs that differ only in seed grouped as mean ± std, a
  train-mean baseline row, the Table 1 form (MAE per label range), the
  Table 2 form (MAE per label value and groups of values), the
  imbalanced-regression metrics (many/medium/few-shot MAE, MSE, G-Mean), the
  IQA metrics (SRCC, KRCC, PLCC raw and after a 4-parameter logistic fit,
  RMSE), and a paired bootstrap of the difference between two runs or seed
  groups; in markdown, csv, latex or json.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ..cache import DATA_KEYS, FEATURE_KEYS
from ..errors import ConfigError, RunError
from ..imbalance import Bins, label_density
from ..metrics import (BootstrapDiff, bin_names, bin_of, default_edges, discrete_values, group_mae, group_name,
                      iqa_metrics, paired_bootstrap, per_bin_mae, shot_metrics)
from ..runs import Run, load_run
from ..seeds import check_seed

log = logging.getLogger(__name__)

FORMATS = ("markdown", "csv", "latex", "json")
SPLITS = ("test", "val", "train")
TABLES = ("ranges", "values", "shots", "iqa")


@dataclass(frozen=True)
class Stat:
    """A cell aggregated over the seeds of a group: mean, sample standard
    deviation (ddof 1; None for one value) and how many seeds had a value."""

    mean: float
    std: float | None
    n: int


Value = Union[float, Stat, None]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Value]]]
    count_label: str = ""
    counts: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digits: int = 4
    caption: str = ""
    key: str = ""
    # per row: 'run', 'seeds' (a seed group) or 'baseline'; empty: all runs
    row_kinds: list[str] = field(default_factory=list)
    # per column: 'lower' or 'higher' is better; empty: all lower
    better: list[str] = field(default_factory=list)

    def kind(self, i: int) -> str:
        return self.row_kinds[i] if i < len(self.row_kinds) else "run"


def run_warnings(runs: Sequence[Run]) -> list[str]:
    """Visible warnings: random-weight encoders, which encoder made the
    features when the cache names it (timm backends), runs on different
    caches."""
    notes = []
    random = [r.name for r in runs if r.cache.get("pretrained_kind") == "none"]
    if random:
        who = f"run '{random[0]}' was" if len(random) == 1 else f"runs {', '.join(repr(n) for n in random)} were"
        notes.append(f"warning: {who} trained on features of a randomly initialised encoder "
                     "(--pretrained none): the numbers say nothing about CLIP")
    described: dict[str, list[str]] = {}
    for r in runs:
        if r.cache.get("pretrained_kind") != "none" and r.cache.get("encoder"):
            described.setdefault(str(r.cache["encoder"]), []).append(r.name)
    for enc, names in described.items():
        who = f"run '{names[0]}'" if len(names) == 1 else f"runs {', '.join(repr(n) for n in names)}"
        notes.append(f"note: {who}: features from {enc}")
    ident = {}
    for r in runs:
        key = tuple(str(r.cache.get(k)) for k in ("manifest_sha256", "model", "pretrained_sha256", "pretrained_kind",
                                                   "resize_mode", "image_size", "precision"))
        ident.setdefault(key, []).append(r.name)
    if len(ident) > 1:
        groups = "; ".join(", ".join(v) for v in ident.values())
        notes.append(f"warning: these runs were trained on different caches (groups: {groups}): "
                     "differences mix the method with the features or the data")
    else:
        contents: dict[str, list[str]] = {}
        for r in runs:
            if r.cache.get("content_id"):  # runs of caches made before content ids cannot be told apart
                contents.setdefault(str(r.cache["content_id"]), []).append(repr(r.name))
        if len(contents) > 1:
            groups = "; ".join(f"{', '.join(v)} (content {k})" for k, v in contents.items())
            notes.append(f"warning: these runs were trained on different contents of the same cache (images "
                         f"re-embedded, or labels/splits updated, in between): {groups}")
    return notes


def _edges_for(runs: Sequence[Run], edges: Sequence[float] | None) -> list[float]:
    if edges is not None:
        return list(edges)
    ranges = {r.label_range for r in runs}
    return default_edges(next(iter(ranges))) if len(ranges) == 1 else default_edges((0.0, 100.0))


def runs_noun(runs: Sequence[Run]) -> str:
    """What the rows are called in tables: ``images``, or ``items`` when any
    run was trained on imported features (``iqa import``)."""
    from ..importer import item_noun

    return "items" if any(item_noun(r.cache) == "items" for r in runs) else "images"


def per_bin_table(runs: Sequence[Run], edges: Sequence[float] | None = None, split: str = "test") -> Table:
    """The paper's Table 1 form: MAE per label range and overall, one row per
    run, plus the number of images per range."""
    edges = _edges_for(runs, edges)
    names = bin_names(edges) + ["All"]
    rows, counts = [], None
    for r in runs:
        p = r.predictions[r.predictions["split"] == split]
        res = per_bin_mae(p["label"].to_numpy(), p["pred"].to_numpy(), edges)
        rows.append((r.name, [res[n][0] for n in names]))
        c = [res[n][1] for n in names]
        if counts is None:
            counts = c
        elif counts != c:
            counts = None  # runs disagree on the test set: no single count row
            break
    notes = run_warnings(runs)
    if counts is None and len(runs) > 1:
        counts = []
        notes.append(f"warning: the runs have different {split} sets; per-bin counts differ")
    return Table(title=f"MAE per label range ({split} split)", columns=names, rows=rows,
                 count_label=f"n ({split} {runs_noun(runs)})", counts=counts or [], notes=notes, key="ranges")


# ------------------------------------------------------------------ loading

def load_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[str, str]]]:
    """Load the finished runs among ``paths``; the others (missing files, a
    killed run, not a run directory) are returned as (path, reason) and
    logged.  RunError, naming them all, when none is finished; a single
    path fails with its own reason."""
    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for p in paths:
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


# ------------------------------------------------------------ report config

@dataclass(frozen=True)
class ReportConfig:
    """What ``iqa report`` computes.  ``groups`` None means: one column per
    label value when the labels are discrete (whole numbers, at most 12
    values), else no Table 2 form.  ``compare`` holds two run directories;
    with ``group_seeds`` each stands for its whole seed group."""

    split: str = "test"
    edges: tuple[float, ...] | None = None
    tables: tuple[str, ...] = ("ranges",)
    groups: tuple[tuple[float, ...], ...] | None = None
    many: int = 100
    few: int = 20
    group_seeds: bool = True
    baseline: bool = True
    compare: tuple[str, str] | None = None
    n_boot: int = 2000
    boot_seed: int = 0
    confidence: float = 0.95
    digits: int = 4

    def __post_init__(self) -> None:
        check_seed(self.boot_seed, "--boot-seed")
        if self.split not in SPLITS:
            raise ConfigError(f"--split '{self.split}' is not one of {', '.join(SPLITS)}")
        bad = [t for t in self.tables if t not in TABLES]
        if bad:
            raise ConfigError(f"--tables: '{bad[0]}' is not one of {', '.join(TABLES)}, all")
        if self.many < 0 or self.few < 0:
            raise ConfigError(f"--many and --few must be 0 or more (got {self.many}, {self.few})")
        if self.few > self.many:
            raise ConfigError(f"--few {self.few} is above --many {self.many}: a bin cannot be both few- and "
                              "many-shot")
        if self.n_boot < 1:
            raise ConfigError(f"--n-boot must be at least 1, got {self.n_boot}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence} must be between 0 and 1")


@dataclass
class Entry:
    """A table row: one run, or the runs of a seed group."""

    name: str
    runs: list[Run]
    kind: str = "run"  # 'run' | 'seeds'


@dataclass
class Baseline:
    """Predicting the training mean for every image of the split."""

    name: str
    mean: float
    run: Run  # whose data (predictions.csv) it is computed on


@dataclass
class Comparison:
    a: str
    b: str
    n_seeds_a: int
    n_seeds_b: int
    n_images: int
    n_boot: int
    seed: int
    confidence: float
    split: str
    diffs: list[BootstrapDiff]


@dataclass
class Report:
    config: ReportConfig
    entries: list[Entry]
    baselines: list[Baseline]
    tables: list[Table]
    comparison: Comparison | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [r for e in self.entries for r in e.runs]


# ------------------------------------------------------------------ helpers

def _split_arrays(run: Run, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _display_names(runs: Sequence[Run]) -> dict[int, str]:
    """Run directory names; parent/name where two runs share a name."""
    names = {id(r): r.name for r in runs}
    dup = {n for n in names.values() if list(names.values()).count(n) > 1}
    for r in runs:
        if r.name in dup:
            names[id(r)] = f"{r.path.parent.name}/{r.name}"
    return names


def seed_key(run: Run) -> str:
    """Runs with equal keys differ at most in their seed: the train section
    of config.json minus ``seed``, the label bins and the cache identity
    (what its features are and which images, labels and splits it holds)."""
    train = {k: v for k, v in run.config.get("train", {}).items() if k != "seed"}
    cache = {k: run.cache.get(k) for k in FEATURE_KEYS + DATA_KEYS}
    return json.dumps({"train": train, "bins": run.config.get("bins"), "cache": cache}, sort_keys=True, default=str)


def run_seed(run: Run) -> Any:
    return run.config.get("train", {}).get("seed")


def _group_name(names: list[str], seeds: list[Any]) -> str:
    # 'lds_s0', 'lds-seed1', and ablate's 'lds=on,seed=2' all lose their seed part
    stripped = [re.sub(rf"[_\-.,]?(s|seed)[_\-=]?{re.escape(str(s))}$", "", n) for n, s in zip(names, seeds)]
    if len(set(stripped)) == 1 and stripped[0] and stripped[0] not in names:
        return stripped[0]
    prefix = os.path.commonprefix(names).rstrip("_-. ")
    return prefix if prefix else f"{names[0]}…"


def group_entries(runs: Sequence[Run], group_seeds: bool = True) -> tuple[list[Entry], list[str]]:
    """One entry per run, or per set of runs that differ only in seed (in
    the order they first appear).  Runs with the same settings *and* the
    same seed are not grouped (a copy is not a second seed); a note says so."""
    disp = _display_names(runs)
    if not group_seeds:
        return [Entry(disp[id(r)], [r]) for r in runs], []
    buckets: dict[str, list[Run]] = {}
    for r in runs:
        buckets.setdefault(seed_key(r), []).append(r)
    entries, notes, done = [], [], set()
    for r in runs:
        key = seed_key(r)
        if key in done:
            continue
        done.add(key)
        members = buckets[key]
        seeds = [run_seed(m) for m in members]
        if len(members) == 1:
            entries.append(Entry(disp[id(r)], members))
        elif len(set(map(str, seeds))) < len(seeds):
            notes.append(f"note: runs {', '.join(disp[id(m)] for m in members)} have the same settings and "
                         "seeds that repeat; shown one by one, not as a seed group")
            entries += [Entry(disp[id(m)], [m]) for m in members]
        else:
            base = _group_name([m.name for m in members], seeds)
            entries.append(Entry(f"{base} ({len(members)} seeds)", members, kind="seeds"))
    names = [e.name for e in entries]
    for e in entries:  # two groups with the same stem
        if names.count(e.name) > 1 and e.kind == "seeds":
            e.name = f"{e.runs[0].path.parent.name}/{e.name}"
    return entries, notes


def _data_key(run: Run, split: str) -> str:
    ids, lab, _ = _split_arrays(run, split)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.sort(train_labels(run))).tobytes())
    h.update("\0".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(lab).tobytes())
    return h.hexdigest()


def make_baselines(runs: Sequence[Run], split: str) -> list[Baseline]:
    """One train-mean baseline per distinct (training labels, split) data."""
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(_data_key(r, split), r)
    out = []
    for r in seen.values():
        tl = train_labels(r)
        if not len(tl):
            continue
        name = f"baseline: train mean {tl.mean():.4g}"
        if len(seen) > 1:
            name += f" ({r.name}'s data)"
        out.append(Baseline(name, float(tl.mean()), r))
    return out


def _aggregate(values: list[float | None]) -> Value:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    if len(values) == 1:
        return v[0]
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return Stat(float(np.mean(v)), std, len(v))


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


# ------------------------------------------------------------------ tables

def _build_table(report_entries: list[Entry], baselines: list[Baseline], split: str, columns: list[str],
                 per_run, *, title: str, caption: str, key: str, better: list[str] | None = None,
                 count_label: str = "", digits: int = 4) -> tuple[Table, bool]:
    """Rows from ``per_run(run, labels, preds) -> (values, counts)``, seed
    groups aggregated; returns the table and whether counts disagreed."""
    rows, kinds, counts, disagree = [], [], None, False

    def take(c):
        nonlocal counts, disagree
        if c is None:
            return
        if counts is None:
            counts = c
        elif counts != c:
            disagree = True

    for e in report_entries:
        per = []
        for r in e.runs:
            _, lab, pred = _split_arrays(r, split)
            vals, c = per_run(r, lab, pred)
            per.append(vals)
            take(c)
        rows.append((e.name, [_aggregate([p[i] for p in per]) for i in range(len(columns))]))
        kinds.append(e.kind)
    for b in baselines:
        _, lab, _ = _split_arrays(b.run, split)
        vals, c = per_run(b.run, lab, np.full(len(lab), b.mean))
        rows.append((b.name, [_nan_to_none(v) for v in vals]))
        kinds.append("baseline")
        take(c)
    t = Table(title=title, columns=columns, rows=rows, count_label=count_label,
              counts=[] if disagree or counts is None else list(counts), digits=digits, caption=caption, key=key,
              row_kinds=kinds, better=better or [])
    return t, disagree


def build_report(runs: Sequence[Run], cfg: ReportConfig = ReportConfig()) -> Report:
    """Everything ``iqa report`` shows, computed from the runs' predictions."""
    if not runs:
        raise RunError("no run to report")
    split = cfg.split
    entries, notes = group_entries(runs, cfg.group_seeds)
    baselines = make_baselines(runs, split) if cfg.baseline else []
    all_runs = [r for e in entries for r in e.runs]
    if not any(len(_split_arrays(r, split)[1]) for r in all_runs):
        raise RunError(f"none of the runs has {split} {runs_noun(all_runs)} with labels; try --split "
                       f"{'val' if split == 'test' else 'test'}")
    tables: list[Table] = []
    noun = runs_noun(all_runs)
    n_label = f"n ({split} {noun})"

    if "ranges" in cfg.tables:
        edges = _edges_for(all_runs, cfg.edges)
        cols = bin_names(edges) + ["All"]

        def ranges(run, lab, pred):
            res = per_bin_mae(lab, pred, edges)
            return [_nan_to_none(res[c][0]) for c in cols], [res[c][1] for c in cols]

        t, dis = _build_table(entries, baselines, split, cols, ranges, title=f"MAE per label range ({split} split)",
                              caption=f"MAE per label range, {split} split (lower is better).", key="ranges",
                              count_label=n_label, digits=cfg.digits)
        if dis:
            notes.append(f"warning: the runs have different {split} sets; per-range counts differ")
        tables.append(t)

    if "values" in cfg.tables:
        groups = cfg.groups
        if groups is None:
            vals = discrete_values(np.concatenate([_split_arrays(r, split)[1] for r in all_runs]))
            groups = tuple((v,) for v in vals) if vals else None
        if groups is None:
            notes.append("note: no per-value table: the labels are not discrete (whole numbers, at most 12 "
                         "values); pass --groups, e.g. --groups '3;4;3,4'")
        else:
            cols = [group_name(g) for g in groups] + ["All"]

            def values(run, lab, pred):
                res = group_mae(lab, pred, groups)
                return [res[c][0] for c in cols], [res[c][1] for c in cols]

            t, dis = _build_table(entries, baselines, split, cols, values,
                                  title=f"MAE per label value ({split} split)",
                                  caption=f"MAE per label value, {split} split (the paper's Table 2 form): a label "
                                          "matches value v when v − 0.5 ≤ label < v + 0.5; a&b pools the values.",
                                  key="values", count_label=n_label, digits=cfg.digits)
            if dis:
                notes.append(f"warning: the runs have different {split} sets; per-value counts differ")
            tables.append(t)

    if "shots" in cfg.tables:
        metrics = (("mae", "MAE"), ("mse", "MSE"), ("gmean", "G-Mean"))
        parts = ("many", "medium", "few", "all")
        cols = [f"{m} {'All' if p == 'all' else p}" for _, m in metrics for p in parts]
        shot_bins: dict[str, dict] = {}

        def shots(run, lab, pred):
            res = shot_metrics(train_labels(run), lab, pred, run_bins(run), cfg.many, cfg.few)
            b = run_bins(run)
            shot_bins[f"width {b.size:g} over [{b.lo:g}, {b.hi:g}]"] = res["bins"]
            return ([res[p][k] for k, _ in metrics for p in parts],
                    [res[p]["n"] for _ in metrics for p in parts])

        t, dis = _build_table(entries, baselines, split, cols, shots,
                              title=f"Imbalanced-regression metrics ({split} split)", caption="", key="shots",
                              count_label=n_label, digits=cfg.digits)
        desc = "; ".join(f"bins of {k}: {v['many']} many-, {v['medium']} medium-, {v['few']} few-shot"
                         for k, v in shot_bins.items())
        t.caption = (f"Imbalanced-regression metrics, {split} split (lower is better): a {split} {noun[:-1]} is "
                     f"many-shot when its LDS bin holds more than {cfg.many} training {noun}, few-shot when it "
                     "holds fewer "
                     f"than {cfg.few}, medium otherwise ({desc}). G-Mean: geometric mean of the absolute errors. "
                     "An empty region is left blank.")
        if dis:
            notes.append("warning: the runs use different label bins or test sets; shot counts differ per run")
        tables.append(t)

    if "iqa" in cfg.tables:
        cols = ["SRCC", "KRCC", "PLCC", "PLCC (logistic)", "RMSE"]
        failed: list[str] = []

        def iqa(run, lab, pred):
            m = iqa_metrics(lab, pred)
            if m["fit_error"] and m["plcc"] is not None:
                failed.append(f"note: no logistic fit for {run.name}: {m['fit_error']}; PLCC (logistic) left "
                              "blank, raw PLCC shown")
            elif m["fit_note"]:
                failed.append(f"note: logistic fit for {run.name}: {m['fit_note']}")
            return [m["srcc"], m["krcc"], m["plcc"], m["plcc_logistic"], m["rmse"]], None

        t, _ = _build_table(entries, [], split, cols, iqa, title=f"IQA metrics ({split} split)",
                            caption=f"IQA metrics, {split} split: SRCC, KRCC (Kendall tau-b), PLCC raw and after "
                                    "the VQEG 4-parameter logistic fit (higher is better); RMSE of the raw "
                                    "predictions (lower is better).", key="iqa",
                            better=["higher"] * 4 + ["lower"], digits=cfg.digits)
        for b in baselines:  # correlations of a constant are undefined: say so rather than show blanks
            _, lab, _ = _split_arrays(b.run, split)
            rm = math.sqrt(float(np.mean((lab - b.mean) ** 2))) if len(lab) else None
            t.rows.append((b.name, [None, None, None, None, rm]))
            t.row_kinds.append("baseline")
        if baselines:
            t.caption += " The baseline's correlations are undefined (a constant prediction) and left blank."
        notes += failed
        tables.append(t)

    comparison = _compare(runs, entries, cfg) if cfg.compare else None
    notes = run_warnings(all_runs) + notes
    if any(e.kind == "seeds" for e in entries):
        notes.append("note: rows marked '(k seeds)' are runs that differ only in seed: mean ± sample std "
                     "(ddof 1) over the seeds")
    return Report(config=cfg, entries=entries, baselines=baselines, tables=tables, comparison=comparison,
                  notes=notes)


def _find_entry(entries: list[Entry], path: str) -> Entry:
    target = Path(path).resolve()
    for e in entries:
        if any(r.path.resolve() == target for r in e.runs):
            return e
    raise RunError(f"--compare {path}: not among the finished runs of this report")


def _errors_matrix(entry: Entry, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids sorted, labels, |error| per seed × image) of an entry."""
    ids0, lab0 = None, None
    errs = []
    for r in entry.runs:
        ids, lab, pred = _split_arrays(r, split)
        order = np.argsort(ids, kind="stable")
        ids, lab, pred = ids[order], lab[order], pred[order]
        if ids0 is None:
            ids0, lab0 = ids, lab
        elif len(ids) != len(ids0) or not np.array_equal(ids, ids0):
            raise RunError(f"--compare: runs of '{entry.name}' have different {split} images; cannot pair them")
        errs.append(np.abs(lab - pred))
    return ids0, lab0, np.stack(errs)


def _compare(runs: Sequence[Run], entries: list[Entry], cfg: ReportConfig) -> Comparison:
    a, b = _find_entry(entries, cfg.compare[0]), _find_entry(entries, cfg.compare[1])
    if a is b:
        raise RunError(f"--compare {cfg.compare[0]} {cfg.compare[1]}: both are in '{a.name}'; compare two "
                       "different runs or seed groups (or pass --no-group-seeds)")
    ids_a, lab_a, ea = _errors_matrix(a, cfg.split)
    ids_b, _, eb = _errors_matrix(b, cfg.split)
    if len(ids_a) != len(ids_b) or not np.array_equal(ids_a, ids_b):
        raise RunError(f"--compare: '{a.name}' and '{b.name}' have different {cfg.split} images "
                       f"({len(ids_a)} vs {len(ids_b)}); a paired comparison needs the same images")
    if not len(ids_a):
        raise RunError(f"--compare: no {cfg.split} images with labels to compare on")
    edges = _edges_for([r for e in (a, b) for r in e.runs], cfg.edges)
    idx = bin_of(lab_a, edges)
    strata = {name: np.flatnonzero(idx == i) for i, name in enumerate(bin_names(edges))}
    diffs = paired_bootstrap(ea, eb, strata, n_boot=cfg.n_boot, seed=cfg.boot_seed, confidence=cfg.confidence)
    return Comparison(a=a.name, b=b.name, n_seeds_a=len(a.runs), n_seeds_b=len(b.runs), n_images=len(ids_a),
                      n_boot=cfg.n_boot, seed=cfg.boot_seed, confidence=cfg.confidence, split=cfg.split,
                      diffs=diffs)


# --------------------------------------------------------------- LDS curves

def lds_curves(run: Run, lds: dict | None = None) -> dict[str, Any]:
    """Per-bin training-label counts, the values LDS inverts before and
    after smoothing (both normalised to sum 1), and the resulting loss weight
    per bin (1 / smoothed value, scaled so that the weights average 1 over
    the training images, as :func:`~iqa_cache.imbalance.lds_weights`; NaN
    for bins no training image falls in).  ``lds``: the LDS section of a
    train config (default: the run's own)."""
    bins = run_bins(run)
    cfg = dict(lds if lds is not None else run.config["train"]["lds"])
    labels = train_labels(run)
    reweight = cfg.get("reweight", "none")
    if reweight == "none":
        raise ConfigError(f"run {run.name} uses no loss re-weighting; there are no LDS weights to show")
    emp, eff = label_density(labels, bin_size=bins.size, lo=bins.lo, hi=bins.hi, reweight=reweight,
                             kernel=cfg.get("kernel", "gaussian"), ks=int(cfg.get("ks", 5)),
                             sigma=float(cfg.get("sigma", 2.0)), lds=bool(cfg.get("enabled", False)))
    counts = bins.counts(labels)
    with np.errstate(divide="ignore"):
        inv = np.where(eff > 0, 1.0 / np.where(eff > 0, eff, 1.0), np.nan)
    scale = len(labels) / np.sum(inv[bins.index(labels)]) if len(labels) else np.nan
    weight = np.where(counts > 0, inv * scale, np.nan)
    return {"edges": bins.edges(), "counts": counts, "empirical": emp / max(emp.sum(), 1e-300),
            "smoothed": eff / max(eff.sum(), 1e-300), "weight": weight, "weight_any": inv * scale, "reweight": reweight, "config": cfg,
            "bins": bins}


# -------------------------------------------------------------- formatting

def _f(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _num(x: Value, digits: int, empty: str = "", pm: str = " ± ") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return empty
    if isinstance(x, Stat):
        s = _f(x.mean, digits)
        if x.std is not None:
            s += f"{pm}{_f(x.std, digits)}"
        return s
    return _f(x, digits)


def _mean(x: Value) -> float:
    if x is None:
        return math.nan
    return x.mean if isinstance(x, Stat) else float(x)


def _best(t: Table) -> list[float]:
    """The best value of each column among runs and seed groups (not the
    baseline), for bold face in LaTeX."""
    out = []
    for i in range(len(t.columns)):
        vals = [_mean(v[i]) for j, (_, v) in enumerate(t.rows) if t.kind(j) != "baseline"]
        vals = [v for v in vals if not math.isnan(v)]
        hi = i < len(t.better) and t.better[i] == "higher"
        out.append((max(vals) if hi else min(vals)) if vals else math.nan)
    return out


def _esc(s: str) -> str:
    return (s.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_")
            .replace("#", r"\#").replace("$", r"\$").replace("±", r"$\pm$").replace("…", r"\ldots{}")
            .replace("−", "-").replace("≤", r"$\le$"))


def _md_notes(notes: Sequence[str]) -> str:
    return "\n>\n".join(f"> **{n.split(':', 1)[0]}**:{n.split(':', 1)[1]}" if ":" in n else f"> {n}" for n in notes)


def _markdown(t: Table, notes: bool = True) -> str:
    head = ["run"] + t.columns
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
    for name, vals in t.rows:
        lines.append("| " + " | ".join([name] + [_num(v, t.digits, "–") for v in vals]) + " |")
    if t.counts:
        lines.append("| " + " | ".join([f"*{t.count_label}*"] + [str(c) for c in t.counts]) + " |")
    out = "\n".join(lines)
    if t.caption:
        out += f"\n\n*{t.caption}*"
    if notes and t.notes:
        out += "\n\n" + _md_notes(t.notes)
    return out + "\n"


def _csv_rows(t: Table) -> list[list[str]]:
    rows = [["run"] + t.columns]
    for name, vals in t.rows:
        if any(isinstance(v, Stat) for v in vals):
            rows.append([f"{name} mean"] + [_num(v.mean if isinstance(v, Stat) else v, t.digits) for v in vals])
            rows.append([f"{name} std"] + [_num(v.std if isinstance(v, Stat) else None, t.digits) for v in vals])
        else:
            rows.append([name] + [_num(v, t.digits) for v in vals])
    if t.counts:
        rows.append([t.count_label] + [str(c) for c in t.counts])
    return rows


def _csv(t: Table, notes: bool = True) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows(_csv_rows(t))
    if notes:
        for n in t.notes:
            buf.write(f"# {n}\n")
    return buf.getvalue()


def _latex(t: Table, notes: bool = True) -> str:
    ncol = len(t.columns) + 1

    def col(c: str) -> str:
        return f"${c}$" if c[:1] in "[(" else _esc(c)

    lines = [r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule",
             " & ".join(["Model"] + [col(c) for c in t.columns]) + r" \\", r"\midrule"]
    best = _best(t)
    n_ranked = sum(1 for j in range(len(t.rows)) if t.kind(j) != "baseline")
    for j, (name, vals) in enumerate(t.rows):
        if t.kind(j) == "baseline" and j > 0 and t.kind(j - 1) != "baseline":
            lines.append(r"\midrule")
        cells = []
        for i, v in enumerate(vals):
            s = _num(v, t.digits, pm=r" \pm ")
            if s and isinstance(v, Stat):
                s = f"${s}$"
            bold = s and n_ranked > 1 and t.kind(j) != "baseline" and _mean(v) == best[i]
            if bold:  # \textbf does not reach into math mode; \boldmath does
                s = rf"{{\boldmath{s}}}" if isinstance(v, Stat) else rf"\textbf{{{s}}}"
            cells.append(s or "--")
        lines.append(" & ".join([_esc(name)] + cells) + r" \\")
    if t.counts:
        lines += [r"\midrule", " & ".join([_esc(t.count_label)] + [str(c) for c in t.counts]) + r" \\"]
    lines.append(r"\bottomrule")
    if notes:
        for n in t.notes:
            lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\footnotesize {_esc(n)}}} \\")
    lines.append(r"\end{tabular}")
    out = "\n".join(lines) + "\n"
    if t.caption:
        out = f"% {t.caption}\n" + out
    return out


def _json_value(v: Value) -> Any:
    if isinstance(v, Stat):
        return {"mean": v.mean, "std": v.std, "n_seeds": v.n}
    return _nan_to_none(v)


def _jsonable(x: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def table_to_dict(t: Table) -> dict[str, Any]:
    return {"key": t.key, "title": t.title, "caption": t.caption, "columns": t.columns,
            "better": t.better or ["lower"] * len(t.columns),
            "rows": [{"name": name, "kind": t.kind(j), "values": {c: _json_value(v) for c, v in zip(t.columns, vals)}}
                     for j, (name, vals) in enumerate(t.rows)],
            "counts": dict(zip(t.columns, t.counts)) if t.counts else None, "notes": t.notes}


def format_table(t: Table, fmt: str = "markdown") -> str:
    """One table in markdown, csv (header starting ``run,``), latex
    (booktabs) or json."""
    if fmt == "markdown":
        return _markdown(t)
    if fmt == "csv":
        return _csv(t)
    if fmt == "latex":
        return _latex(t)
    if fmt == "json":
        return json.dumps(_jsonable(table_to_dict(t)), indent=2, allow_nan=False) + "\n"
    raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")


# ------------------------------------------------------------- comparisons

def _verdict(d: BootstrapDiff, a: str, b: str) -> str:
    if d.contains_zero is None:
        return ""
    if d.contains_zero:
        return "CI contains 0"
    return f"{a} lower" if d.estimate < 0 else f"{b} lower"


def _comparison_caption(c: Comparison) -> str:
    seeds = []
    for side, k in (("A", c.n_seeds_a), ("B", c.n_seeds_b)):
        if k > 1:
            seeds.append(f"{side}'s {k} seeds")
    over = f"the {c.n_images} {c.split} images (the same for A and B)"
    if seeds:
        over += " and " + " and ".join(seeds)
    pct = f"{100 * c.confidence:g} %"
    return (f"Paired bootstrap of the MAE difference A − B, A = {c.a}, B = {c.b}: {c.n_boot} resamples of {over}, "
            f"seed {c.seed}; per-range rows resample within the range; {pct} percentile intervals. Negative: A has "
            "the lower MAE; 'CI contains 0': the data do not show a difference.")


def comparison_rows(c: Comparison, digits: int = 4) -> tuple[list[str], list[list[str]]]:
    pct = f"{100 * c.confidence:g} % CI"
    head = ["MAE difference", "n", "A − B", pct, "verdict"]
    rows = []
    for d in c.diffs:
        ci = "" if d.low is None else f"[{_f(d.low, digits)}, {_f(d.high, digits)}]"
        rows.append([d.name, str(d.n), _num(d.estimate, digits, ""), ci, _verdict(d, c.a, c.b)])
    return head, rows


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    return {"a": c.a, "b": c.b, "n_seeds_a": c.n_seeds_a, "n_seeds_b": c.n_seeds_b, "n_images": c.n_images,
            "n_boot": c.n_boot, "seed": c.seed, "confidence": c.confidence, "split": c.split,
            "statistic": "MAE(A) - MAE(B)",
            "diffs": [{"name": d.name, "n": d.n, "estimate": d.estimate, "low": d.low, "high": d.high,
                       "contains_zero": d.contains_zero} for d in c.diffs]}


def _format_comparison(c: Comparison, fmt: str, digits: int) -> str:
    head, rows = comparison_rows(c, digits)
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---|"]
        for r in rows:
            r = list(r)
            if r[4] == "CI contains 0":
                r[4] = "*CI contains 0*"
            lines.append("| " + " | ".join(r) + " |")
        return "\n".join(lines) + f"\n\n*{_comparison_caption(c)}*\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["difference", "n", "estimate", "ci_low", "ci_high", "contains_zero", "a", "b"])
        for d in c.diffs:
            w.writerow([d.name, d.n, _num(d.estimate, digits), _num(d.low, digits), _num(d.high, digits),
                        "" if d.contains_zero is None else str(d.contains_zero).lower(), c.a, c.b])
        return buf.getvalue()
    if fmt == "latex":
        lines = [f"% {_comparison_caption(c)}", r"\begin{tabular}{lrrll}", r"\toprule",
                 r"MAE difference & $n$ & $A - B$ & " + _esc(head[3]) + r" & verdict \\", r"\midrule"]
        for r in rows:
            name = f"${r[0]}$" if r[0][:1] in "[(" else _esc(r[0])
            lines.append(" & ".join([name, r[1], r[2] or "--", r[3] or "--", _esc(r[4])]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")


def report_to_dict(report: Report) -> dict[str, Any]:
    c = report.config
    return {
        "split": c.split,
        "entries": [{"name": e.name, "kind": e.kind,
                     "runs": [{"name": r.name, "path": str(r.path), "seed": run_seed(r)} for r in e.runs]}
                    for e in report.entries],
        "baselines": [{"name": b.name, "train_mean": b.mean} for b in report.baselines],
        "tables": [table_to_dict(t) for t in report.tables],
        "comparison": comparison_to_dict(report.comparison) if report.comparison else None,
        "settings": {"many": c.many, "few": c.few, "group_seeds": c.group_seeds, "n_boot": c.n_boot,
                     "boot_seed": c.boot_seed, "confidence": c.confidence},
        "notes": report.notes,
    }


def format_report(report: Report, fmt: str = "markdown") -> str:
    """The whole report.  markdown: the tables (the first one, Table 1 form,
    starts the output), each with its caption below, then the comparison and
    the warnings.  csv: the first table exactly as :func:`format_table`, each
    further block after a blank line and a ``# caption`` line, warnings as
    ``# `` lines.  latex: one booktabs tabular per block.  json: one object."""
    d = report.config.digits
    if fmt == "json":
        return json.dumps(_jsonable(report_to_dict(report)), indent=2, allow_nan=False) + "\n"
    if fmt not in FORMATS:
        raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    blocks = []
    for t in report.tables:
        if fmt == "markdown":
            blocks.append(_markdown(t, notes=False))
        elif fmt == "csv":
            blocks.append(_csv(t, notes=False) if not blocks else f"# {t.caption}\n" + _csv(t, notes=False))
        else:
            blocks.append(_latex(t, notes=False))
    if report.comparison is not None:
        block = _format_comparison(report.comparison, fmt, d)
        if fmt == "csv":
            block = f"# {_comparison_caption(report.comparison)}\n" + block
        blocks.append(block)
    if fmt == "markdown":
        out = "\n".join(blocks)
        if report.notes:
            out += "\n" + _md_notes(report.notes) + "\n"
        return out
    if fmt == "csv":
        out = "\n".join(blocks)
        return out + "".join(f"# {n}\n" for n in report.notes)
    out = "\n".join(blocks)
    return out + "".join(f"% {n}\n" for n in report.notes)

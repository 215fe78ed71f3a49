"""``iqa evaluate``: trained heads scored on another labelled cache
(cross-dataset evaluation: train on KonIQ, test on SPAQ or LIVE-C).

An evaluation is refused, in one line naming the attribute, unless the other
cache's features come from the same encoder and preprocessing as the run's
training cache (:data:`~iqa_cache.schema.FEATURE_KEYS` but the storage
dtype); imported caches (``iqa import``) compare the source declared with
``--feature-source`` and the feature width.

Each evaluation is a run directory that ``iqa report`` reads like a run (its
row is "RUN on DATASET"): the run's ``config.json`` (training settings, bins,
training cache) with an ``evaluation`` section (the run, the other cache and
its identity, the split, the label map and whether the label scales agree),
the run's ``head.pt``, and ``predictions.csv``: the scored items as split
``test`` (their split in the other cache in ``source_split``) and the run's
own training rows as ``train`` (the training labels that the report's
baseline and shot regions read).  ``metrics.json``: SRCC, PLCC, KRCC
always; MAE per range where the label scales agree or are mapped.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import cache as cache_mod
from .binning import Bins
from .device import resolve_device
from .errors import CacheError
from .metrics import iqa_metrics
from .schema import FEATURE_KEYS, IMPORTED
from .settings import EvaluateConfig
from .train.fit import predict
from .train.results import TrainResult, summarize
from .train.runs import load_head, load_run, write_run

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "provenance_mismatch", "evaluate_run", "evaluation_name"]

DECLARED = "declared_feature_source"  # the cache attribute `iqa import --feature-source NAME` writes
COMPARED = tuple(k for k in FEATURE_KEYS if k != "feature_dtype")  # how the features are stored does not matter


def provenance_mismatch(trained_on: dict[str, Any], other: dict[str, Any]) -> str | None:
    """Why features of a cache with attributes ``other`` are not the
    features a head trained on a cache with ``trained_on`` reads (one
    phrase naming the attribute), or None."""
    imported = [a.get("feature_source") == IMPORTED for a in (trained_on, other)]
    if any(imported):
        if not all(imported):
            return "feature_source: one cache was imported (iqa import), the other embedded by iqa embed"
        a, b = trained_on.get(DECLARED), other.get(DECLARED)
        if not a or not b:
            return (f"{DECLARED}: imported features compare only by a declared source; import both with "
                    "`iqa import --feature-source NAME`")
        if a != b:
            return f"{DECLARED}: {a!r} (training cache) vs {b!r}"
        keys: tuple[str, ...] = ("feature_dim",)
    else:
        keys = COMPARED
    for k in keys:
        a, b = trained_on.get(k), other.get(k)
        if _norm(a) != _norm(b):
            return f"{k}: {a!r} (training cache) vs {b!r}"
    return None


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 9)
    return v.item() if hasattr(v, "item") else v


def check_evaluable(run, attrs: dict[str, Any], cache_path: str | os.PathLike) -> None:
    """CacheError unless the run's head can score the cache of ``attrs``:
    features of the same origin (:func:`provenance_mismatch`), and a
    dataset name that can name the evaluation's folder."""
    why = provenance_mismatch(run.cache, attrs)
    if why:
        raise CacheError(f"refusing to evaluate run {run.path} on {cache_path}: its features do not come from the "
                         f"same encoder and preprocessing as the run's training cache ({why})")
    evaluated_dataset(attrs, cache_path)


def evaluated_dataset(attrs: dict[str, Any], cache_path: str | os.PathLike) -> str:
    """The cache's dataset name (its file name when it has none), which
    names the evaluation's folder: CacheError when it cannot (a path
    separator, '.' or '..': the folder would land outside --out)."""
    dataset = str(attrs.get("dataset") or Path(cache_path).stem)
    if "/" in dataset or "\\" in dataset or dataset in (".", ".."):
        raise CacheError(f"cache {cache_path}: its dataset name {dataset!r} (attribute 'dataset') cannot name the "
                         "evaluation's folder; re-import it with another --name")
    return dataset


def evaluation_name(run_name: str, dataset: str) -> str:
    """The evaluation's directory name (and its report row: 'RUN on DATASET')."""
    return f"{run_name}_on_{dataset}"


def evaluate_run(run_dir: str | os.PathLike, cache_path: str | os.PathLike, out_dir: str | os.PathLike,
                 cfg: EvaluateConfig = EvaluateConfig(), *, data: cache_mod.CacheData | None = None) -> Path:
    """Score the head of ``run_dir`` on the cache ``cache_path`` and write
    the evaluation into ``out_dir/<run>_on_<dataset>``; its path.
    CacheError naming the attribute when the features differ in origin."""
    t0 = time.perf_counter()
    run = load_run(run_dir)
    attrs = cache_mod.read_attrs(cache_path) if data is None else data.attrs
    check_evaluable(run, attrs, cache_path)
    data = cache_mod.load(cache_path) if data is None else data
    rows = np.flatnonzero(np.isfinite(data.label) & ((data.split == cfg.split) if cfg.split != "all" else True))
    if not len(rows):
        raise CacheError(f"cache {cache_path} has no labelled items in split '{cfg.split}' to evaluate on")
    device = resolve_device(cfg.device)
    head = load_head(run.path, map_location=device)
    with torch.no_grad():
        pred = predict(head, torch.from_numpy(data.features[rows]).to(device)).cpu().numpy().astype(np.float64)
    label = data.label[rows].astype(np.float64)
    if cfg.label_map is not None:
        label = cfg.label_map[0] * label + cfg.label_map[1]
    trained_range = run.label_range
    agrees = cfg.label_map is not None or tuple(map(float, data.label_range)) == tuple(trained_range)
    scored = pd.DataFrame({"image_id": data.image_id[rows], "split": "test", "label": label, "pred": pred,
                           "source_split": data.split[rows]})
    train = run.predictions[run.predictions["split"] == "train"].assign(source_split="train (training cache)")
    predictions = pd.concat([scored, train[scored.columns]], ignore_index=True)
    metrics: dict[str, Any] = {"test": {"n": int(len(rows)), **{k: v for k, v in iqa_metrics(label, pred).items()
                                                              if k in ("srcc", "plcc", "krcc")}}}
    if agrees:
        summary = summarize(scored, trained_range)["test"]
        metrics["test"].update(mae=summary["mae"], per_bin=summary["per_bin"])
    else:
        log.warning("%s: its label range %s differs from the run's %s: SRCC/PLCC/KRCC only; map the labels with "
                    "--label-map A,B for MAE per range", cache_path, tuple(data.label_range), trained_range)
    dataset = evaluated_dataset(attrs, cache_path)
    b = run.config["bins"]
    result = TrainResult(head=head.cpu(), config=run.train_config, bins=Bins(b["lo"], b["hi"], b["size"]),
                         best_epoch=int(run.metrics.get("best_epoch", 0) or 0),
                         best_val_mae=float(run.metrics.get("best_val_mae") or np.nan), history=[],
                         predictions=predictions, metrics=metrics, seconds=time.perf_counter() - t0, device=device)
    evaluation = {"run": str(run.path.resolve()), "run_name": run.name, "dataset": dataset,
                  "cache": str(Path(cache_path).resolve()), "split": cfg.split,
                  "label_map": list(cfg.label_map) if cfg.label_map else None, "label_range": list(data.label_range),
                  "label_scale_agrees": bool(agrees),
                  "identity": {k: attrs.get(k) for k in ("dataset", "manifest_sha256", "n_images", "content_id",
                                                         "feature_source", DECLARED)}}
    out = Path(out_dir) / evaluation_name(run.name, dataset)
    return write_run(out, result, run.cache, run.cache.get("path") or cache_path, overwrite=cfg.overwrite,
                     extra={"evaluation": evaluation})

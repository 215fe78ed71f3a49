"""Run directories: what ``train-head`` writes and ``report`` reads.

A run directory holds ``config.json`` (everything needed to rebuild the head
and to know which cache it was trained on), ``head.pt`` (a plain state dict,
loadable with ``torch.load(weights_only=True)``), ``predictions.csv``
(``image_id,split,label,pred`` for every cached image), ``metrics.json`` and
``history.csv``.  It is written under a temporary name and renamed into
place, so a directory with the final name is always complete.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import __version__
from .cache import FEATURE_KEYS
from .errors import RunError
from .head import HeadConfig, ResidualMLPHead
from .imbalance import Bins
from .train import TrainConfig, TrainResult

RUN_FILES = ("config.json", "head.pt", "predictions.csv", "metrics.json")
CACHE_KEYS = FEATURE_KEYS + ("dataset", "dataset_root", "manifest_sha256", "n_images", "n_embedded", "n_failed",
                             "label_name", "label_range", "split_source", "pretrained", "pretrained_file",
                             "content_id", "labels_version",
                             # features imported with `iqa import` (iqa_cache.importer): where they came from
                             "feature_source", "imported_path", "imported_sha256", "imported_format",
                             "imported_features_key", "imported_shape", "labels_csv",
                             "backend", "encoder")


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf → None, tuples → lists, numpy scalars → Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing run directory unless ``overwrite`` (checked before
    training, so no time is wasted)."""
    if out.exists() and not overwrite:
        raise RunError(f"run directory {out} already exists; pass --overwrite to replace it, or another --out")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")


def write_run(out: str | os.PathLike, result: TrainResult, cache_attrs: dict[str, Any], cache_path: str | os.PathLike,
              *, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``result`` as a run directory at ``out``, atomically."""
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        config = {
            "iqa_cache_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train": result.config.to_dict(),
            "bins": {"lo": result.bins.lo, "hi": result.bins.hi, "size": result.bins.size, "n": result.bins.n},
            "cache": {"path": str(Path(cache_path).resolve()), **{k: cache_attrs.get(k) for k in CACHE_KEYS}},
            "device": result.device,
            "seconds": result.seconds,
            **(extra or {}),
        }
        write_json(tmp / "config.json", config)
        torch.save(result.head.state_dict(), tmp / "head.pt")
        result.predictions.to_csv(tmp / "predictions.csv", index=False, float_format="%.6f")
        pd.DataFrame(result.history).to_csv(tmp / "history.csv", index=False, float_format="%.6g")
        write_json(tmp / "metrics.json", result.metrics)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any]
    predictions: pd.DataFrame
    metrics: dict[str, Any]

    @property
    def cache(self) -> dict[str, Any]:
        return self.config.get("cache", {})

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config["train"])

    @property
    def label_range(self) -> tuple[float, float]:
        lr = self.cache.get("label_range") or [self.config["bins"]["lo"], self.config["bins"]["hi"]]
        return float(lr[0]), float(lr[1])


def is_finished(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in RUN_FILES)


def load_run(path: str | os.PathLike) -> Run:
    """Read a finished run directory; RunError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise RunError(f"run {path} is not finished (missing {', '.join(missing)})")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"run {path}: config.json or metrics.json is not valid JSON ({e})") from None
    try:
        preds = pd.read_csv(path / "predictions.csv", dtype={"image_id": str, "split": str},
                            keep_default_na=False, na_values={"label": ["", "nan", "NaN"], "pred": ["", "nan", "NaN"]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RunError(f"run {path}: predictions.csv cannot be read ({e})") from None
    need = {"image_id", "split", "label", "pred"}
    if not need <= set(preds.columns):
        raise RunError(f"run {path}: predictions.csv lacks column(s) {', '.join(sorted(need - set(preds.columns)))}")
    for c in ("label", "pred"):
        preds[c] = pd.to_numeric(preds[c], errors="coerce")
    return Run(path=path, name=path.name, config=config, predictions=preds, metrics=metrics)


def load_head(path: str | os.PathLike, map_location: str = "cpu") -> ResidualMLPHead:
    """Rebuild a trained head from its run directory (config.json +
    head.pt, loaded with ``weights_only=True``)."""
    run = load_run(path)
    cfg = run.train_config
    b = run.config["bins"]
    bins = Bins(b["lo"], b["hi"], b["size"])
    head = ResidualMLPHead(HeadConfig(**run.config["train"]["head"]), cfg.fds, bins.n)
    try:
        state = torch.load(Path(path) / "head.pt", map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise RunError(f"run {path}: head.pt cannot be loaded safely ({str(e).splitlines()[0][:200]})") from None
    head.load_state_dict(state)
    return head.eval()

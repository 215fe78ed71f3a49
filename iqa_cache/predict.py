"""Score new images with a trained run: the e-commerce use of the paper
(pick the best images of a catalogue).

The images are embedded with exactly the encoder the run's features came
from, as recorded in the ``cache`` section of the run's ``config.json``:
model (or its model-config JSON), weights (re-resolved and refused unless
their SHA-256 equals the recorded one; seeded random weights for
``--pretrained none`` caches), preprocessing (size, resize mode,
interpolation, mean, std, EXIF handling) and precision.  The trained head
(``runs.load_head``) turns the features into scores.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .device import resolve_device
from .embed.encoder import (
    INIT_SEED,
    Encoder,
    EncoderConfig,
    ImageLoadError,
    PreprocessConfig,
    Weights,
    build_transform,
    feature_name,
    load_encoder,
    load_image,
    resolve_model_name,
    resolve_weights,
)
from .errors import ConfigError, DatasetError, RunError, WeightsUnavailable
from .settings import PredictConfig  # noqa: F401  (re-exported: its old place)
from .train.runs import Run, load_head, load_run, run_state, write_atomic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
NEEDED = ("model", "pretrained_kind", "pretrained_sha256", "image_size", "resize_mode", "interpolation", "mean", "std",
          "precision", "feature_dim")


@dataclass
class PredictResult:
    scores: pd.DataFrame  # columns path, score; best (highest) first
    failures: list[tuple[str, str]] = field(default_factory=list)
    weights: Weights | None = None
    device: str = "cpu"
    seconds: float = 0.0


def find_images(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files (by extension) in ``directory``, sorted."""
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"--dir {d}: not a directory")
    it = d.rglob("*") if recursive else d.iterdir()
    found = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise DatasetError(f"--dir {d}: no image files ({', '.join(IMAGE_EXTENSIONS)})"
                           + ("" if recursive else "; add --recursive to look in subfolders"))
    return found


@contextmanager
def _model_arg(cache: dict) -> Iterator[str]:
    """The ``--model`` value that rebuilds the recorded model: its name, or
    its recorded model-config JSON written to a temporary file of the same
    stem (OpenCLIP registers a config file under its stem)."""
    text = cache.get("model_config_json") or ""
    if not text:
        yield str(cache["model"])
        return
    with tempfile.TemporaryDirectory(prefix="iqa-model-") as tmp:
        p = Path(tmp) / f"{cache['model']}.json"
        p.write_text(text, encoding="utf-8")
        yield str(p)


def run_weights(cache: dict, model_name: str, pretrained: str | None = None) -> Weights:
    """The encoder weights a run's features were made with, resolved and
    verified: refused (WeightsUnavailable) when they cannot be found or
    their SHA-256 differs from the recorded one."""
    kind = cache.get("pretrained_kind")
    recorded = cache.get("pretrained") or ""
    if kind == "none":
        if pretrained and pretrained.lower() != "none":
            raise ConfigError(f"--pretrained {pretrained}: the run's cache was made with random weights "
                              "(--pretrained none); there is no checkpoint to point at")
        seed = cache.get("init_seed")
        if seed not in (None, -1, INIT_SEED):
            raise WeightsUnavailable(f"the run's cache used random weights seeded with {seed}; this version "
                                     f"seeds them with {INIT_SEED}, so they cannot be rebuilt")
        log.warning("the run's cache was made with a randomly initialised encoder (--pretrained none): the "
                    "seeded weights are rebuilt exactly, but the scores say nothing about image quality")
        return Weights(kind="none", value="none")
    if kind not in ("tag", "file"):
        raise RunError(f"the run's cache records weights of unknown kind {kind!r} (expected tag, file or none)")
    want = str(cache.get("pretrained_sha256") or "")
    if not want:
        raise WeightsUnavailable("the run's cache records no SHA-256 for its encoder weights; they cannot be "
                                 "verified")
    source = pretrained or recorded
    if not pretrained and kind == "file" and not os.path.isfile(recorded):
        raise WeightsUnavailable(f"the checkpoint the run's cache was made with ({recorded}, sha256 {want[:12]}…) "
                                 "is not there; pass --pretrained PATH with that file")
    weights = resolve_weights(model_name, source)
    if weights.kind == "none":
        raise ConfigError(f"--pretrained none: the run's cache was made with {kind} weights ({recorded}); random "
                          "weights would give different features")
    if weights.sha256 != want:
        raise WeightsUnavailable(f"--pretrained {source}: SHA-256 {weights.sha256[:16]}… differs from "
                                 f"{want[:16]}… recorded in the run's cache ({recorded}); these are not the weights "
                                 "the head's features were made with")
    return weights


def encoder_for_run(run: Run, pretrained: str | None = None, device: str = "auto") -> Encoder:
    """The frozen encoder, weights and preprocessing recorded in the run's
    cache section, rebuilt and verified."""
    cache = run.cache
    if cache.get("feature_source") == "imported":
        raise RunError(f"run {run.path} was trained on imported features ({cache.get('imported_path')}): scoring "
                       "new images needs the encoder that made them, which an imported cache does not record")
    missing = [k for k in NEEDED if cache.get(k) in (None, "") and not (k == "pretrained_sha256"
                                                                          and cache.get("pretrained_kind") == "none")]
    if missing:
        raise RunError(f"run {run.path}: config.json's cache section lacks {', '.join(missing)}; the encoder "
                       "cannot be rebuilt exactly")
    feature = cache.get("feature")
    want_feature = feature_name(str(cache.get("model", "")))
    if feature and feature != want_feature:
        raise RunError(f"run {run.path}: its features are '{feature}', this version computes '{want_feature}'")
    pre = PreprocessConfig(image_size=int(cache["image_size"]), resize_mode=str(cache["resize_mode"]),
                           interpolation=str(cache["interpolation"]), mean=tuple(float(x) for x in cache["mean"]),
                           std=tuple(float(x) for x in cache["std"]),
                           exif_transpose=bool(cache.get("exif_transpose", True)))
    device = resolve_device(device)
    with _model_arg(cache) as model:
        model_name, _ = resolve_model_name(model)
        weights = run_weights(cache, model_name, pretrained)
        enc = load_encoder(EncoderConfig(model=model, pretrained=weights.value, precision=str(cache["precision"]),
                                         preprocess=pre), device, weights)
    if enc.feature_dim != int(cache["feature_dim"]):
        raise RunError(f"run {run.path}: the rebuilt encoder gives {enc.feature_dim}-d features, the cache "
                       f"recorded {cache['feature_dim']}")
    return enc


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence, transform, exif_transpose: bool, max_pixels: int | None, reader=None):
        self.paths, self.transform = list(paths), transform
        self.exif_transpose, self.max_pixels = exif_transpose, max_pixels
        self.reader = reader  # None: paths are files; else read(path) gives the bytes (webdataset members)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            src = self.paths[i]
            if self.reader is not None:
                try:
                    src = self.reader.read(src)
                except OSError as e:
                    raise ImageLoadError(f"cannot read: {e}") from None
            img = load_image(src, exif_transpose=self.exif_transpose, max_pixels=self.max_pixels)
            return i, self.transform(img), ""
        except ImageLoadError as e:
            return i, None, str(e)


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, why) for i, x, why in items if x is None]
    x = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], x, bad


def predict_images(run_dir: str | os.PathLike, images: Sequence[str | os.PathLike],
                   cfg: PredictConfig = PredictConfig(),
                   *, progress: bool = True) -> PredictResult:
    """Score ``images`` with the run at ``run_dir``.  Images that cannot be
    read are skipped and listed in ``failures``; DatasetError when none
    can be read."""
    paths = list(dict.fromkeys(Path(p) for p in images))
    return score_images(run_dir, paths, cfg, progress=progress)


def score_images(run_dir: str | os.PathLike, paths: Sequence, cfg: PredictConfig = PredictConfig(), *,
                 reader=None, progress: bool = True, allow_empty: bool = False, device: str | None = None
                 ) -> PredictResult:
    """Score ``paths`` (files, or with ``reader`` the paths of webdataset
    members) in the given order.  ``allow_empty``: a distributed rank's part
    may be empty or wholly unreadable (the merge judges the whole)."""
    t0 = time.perf_counter()
    run = load_run(run_dir)
    if not paths and not allow_empty:
        raise DatasetError("no images to score; pass image files or --dir")
    enc = encoder_for_run(run, cfg.pretrained, device or cfg.device)
    head = load_head(run_dir)
    if head.cfg.in_dim != enc.feature_dim:
        raise RunError(f"run {run_dir}: its head takes {head.cfg.in_dim}-d features, the encoder gives "
                       f"{enc.feature_dim}")
    workers = cfg.workers
    if workers is None:
        workers = 0 if len(paths) < 64 else max(0, min(8, (os.cpu_count() or 1) - 1))
    data = _Images(paths, build_transform(enc.config.preprocess), enc.config.preprocess.exif_transpose,
                   cfg.max_pixels, reader)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_collate)
    scores = np.full(len(paths), np.nan)
    failures: list[tuple[str, str]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for idx, x, bad in loader:
                if x is not None:
                    feats = enc(x).cpu()
                    scores[idx] = head(feats).double().numpy()
                for i, why in bad:
                    failures.append((str(paths[i]), why))
                    log.warning("skipped %s: %s", paths[i], why)
                bar.update(len(idx) + len(bad))
    finally:
        bar.close()
    ok = np.isfinite(scores)
    if not ok.any() and not allow_empty:
        first = f" (first: {failures[0][0]}: {failures[0][1]})" if failures else ""
        raise DatasetError(f"none of the {len(paths)} images could be scored{first}")
    df = sort_scores(pd.DataFrame({"path": [str(p) for p, k in zip(paths, ok) if k], "score": scores[ok]}))
    return PredictResult(scores=df, failures=failures, weights=enc.weights, device=enc.device,
                         seconds=time.perf_counter() - t0)


def sort_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Best (highest score) first, ties by path."""
    return df.sort_values(["score", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)


def scores_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.6f", lineterminator="\n")


def check_scores_path(out: str | os.PathLike) -> None:
    """Refuse an --out whose format cannot be written here (before any work)."""
    if Path(out).suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(f"--out {out}: writing Parquet needs pyarrow (pip install 'iqa-cache[parquet]'); "
                              "or name a .csv file") from None


def check_scores_out(out: str | os.PathLike, *, run_dir: str | os.PathLike, images: Sequence[str | os.PathLike],
                     overwrite: bool = False, pretrained: str | None = None) -> None:
    """Refuse ``--out FILE`` before anything is scored: always when it is a
    folder, one of the images being scored, the checkpoint, or lies inside
    the run directory (or any run directory); an existing file unless
    ``overwrite``."""
    out = Path(out)
    target = out.resolve()
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. --out {out / 'scores.csv'}")
    for anc in target.parents:
        if anc == Path(run_dir).resolve() or run_state(anc) is not None:
            raise ConfigError(f"refusing --out {out}: it is inside the run directory {anc}; write the scores "
                              "elsewhere")
    exists = os.path.lexists(out)
    same = None
    if exists:
        st = out.stat() if out.exists() else None
        same = (st.st_dev, st.st_ino) if st is not None else None
    inputs = [(Path(p), "one of the images being scored") for p in images]
    if pretrained and os.path.exists(pretrained):
        inputs.append((Path(pretrained), "the encoder checkpoint"))
    for p, what in inputs:
        hit = p.resolve() == target
        if not hit and same is not None:
            try:
                st = p.stat()
            except OSError:
                continue
            hit = (st.st_dev, st.st_ino) == same
        if hit:
            raise ConfigError(f"refusing --out {out}: it is {what} ({p})")
    if exists and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it, or another --out")


def write_scores(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write ``path,score`` atomically: Parquet when ``out`` ends in
    ``.parquet`` (scores as float64), else CSV (6 decimals); RunError naming
    the file when the disk is full; no half file is left."""
    out = Path(out)
    check_scores_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        write_atomic(out, buf.getvalue())
    else:
        write_atomic(out, scores_csv(df).encode("utf-8"))
    return out


def score_distributed(run_dir: str | os.PathLike, paths: Sequence, cfg: PredictConfig = PredictConfig(), *,
                      reader=None, shard_starts: list[int] | None = None, env=None,
                      progress: bool = True) -> PredictResult | None:
    """``score_images`` over torchrun ranks: each rank scores a contiguous
    part (webdataset: whole shards), rank 0 gathers them and returns the
    whole result; the other ranks return None."""
    from .embed import distributed as dist

    t0 = time.perf_counter()
    env = env or dist.require_env()
    if not paths:
        raise DatasetError("no images to score; pass image files, --dir or --shards")
    with dist.Session(env, cfg.device) as sess:
        a, b = dist.part_bounds(len(paths), cfg.batch_size, sess.world, shard_starts)[sess.rank]
        res = score_images(run_dir, list(paths[a:b]), cfg, reader=reader, progress=progress and sess.rank == 0,
                           allow_empty=True, device=sess.device)
        parts = sess.gather_to_root((res.scores, res.failures, res.device))
    if parts is None:
        return None
    df = sort_scores(pd.concat([p[0] for p in parts], ignore_index=True))
    failures = [f for p in parts for f in p[1]]
    if len(df) == 0:
        first = f" (first: {failures[0][0]}: {failures[0][1]})" if failures else ""
        raise DatasetError(f"none of the {len(paths)} images could be scored{first}")
    return PredictResult(scores=df, failures=failures, weights=res.weights, device=f"{res.device} x {sess.world}",
                         seconds=time.perf_counter() - t0)

"""Stage one: run the frozen encoder once over a dataset into an HDF5 cache.

The loop is resumable: a cache is a list of fixed batches, each committed
atomically (see :mod:`iqa_cache.cache`), so an interrupted run is completed
by running the same command again, and the result equals an uninterrupted
run.  Images that cannot be read are recorded as failed with their reason;
they never stop a run.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache as cache_mod
from .datasets import Manifest
from .encoder import (EncoderConfig, ImageLoadError, build_transform, feature_width, load_encoder, load_image,
                      preprocess_for, provenance, resolve_device, resolve_model_name, resolve_weights)
from .errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


def default_workers(device: str) -> int:
    """Decoding processes: on a GPU as many as there are cores (up to 16);
    on a CPU one fewer than the cores, since the encoder needs them."""
    n = os.cpu_count() or 1
    return min(16, n) if device.startswith("cuda") else max(1, min(8, n - 1))


@dataclass(frozen=True)
class EmbedConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    max_pixels: int | None = None
    overwrite: bool = False
    sync: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")


@dataclass
class EmbedSummary:
    path: Path
    n_images: int
    n_embedded: int
    n_failed: int
    n_processed_now: int = 0
    already_complete: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    failures: list[tuple[str, str]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.n_processed_now / self.seconds if self.seconds > 0 else 0.0


class ImageFolder(torch.utils.data.Dataset):
    """Row index → (row, preprocessed tensor or None, failure reason)."""

    def __init__(self, root: Path, paths: np.ndarray, transform, exif_transpose: bool = True,
                 max_pixels: int | None = None):
        self.root, self.paths, self.transform = root, paths, transform
        self.exif_transpose, self.max_pixels = exif_transpose, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.root / self.paths[i], exif_transpose=self.exif_transpose,
                             max_pixels=self.max_pixels)
            return i, self.transform(img), ""
        except ImageLoadError as e:
            return i, None, str(e)


def collate(items):
    rows = np.asarray([i for i, _, _ in items], dtype=np.int64)
    ok = np.asarray([x is not None for _, x, _ in items], dtype=bool)
    reasons = [r for _, _, r in items]
    x = torch.stack([x for _, x, _ in items if x is not None]) if ok.any() else None
    return rows, x, ok, reasons


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _check_files(manifest: Manifest) -> None:
    missing = [p for p in manifest.path if not (manifest.root / p).exists()]
    if not missing:
        return
    if len(missing) == len(manifest):
        raise DatasetError(f"none of the {len(manifest)} images listed in {manifest.source or 'the manifest'} exist "
                           f"under {manifest.root} (first: {missing[0]}); check --root / --resolution")
    log.warning("%d of %d listed images do not exist under %s (first: %s): they will be recorded as failed",
                len(missing), len(manifest), manifest.root, missing[0])


def expected_attrs(manifest: Manifest, prov: dict[str, Any]) -> dict[str, Any]:
    """The attributes an existing cache must have to be resumed or reused."""
    exp = {k: prov[k] for k in cache_mod.FEATURE_KEYS if k in prov}
    exp.update({"dataset": manifest.name, "manifest_sha256": manifest.fingerprint(), "n_images": len(manifest)})
    return exp


def embed(manifest: Manifest, cfg: EmbedConfig, out: str | os.PathLike, *, progress: bool = True) -> EmbedSummary:
    """Embed every image of ``manifest`` into the cache at ``out``, creating
    it, resuming it, or finding it complete.  Raises
    :class:`~iqa_cache.errors.CacheError` when ``out`` holds a cache made
    differently (unless ``cfg.overwrite``)."""
    out = Path(out)
    device = resolve_device(cfg.device)
    model_name, config_json = resolve_model_name(cfg.encoder.model)
    weights = resolve_weights(model_name, cfg.encoder.pretrained)
    pre = preprocess_for(model_name, weights, cfg.encoder.preprocess.resize_mode,
                         interpolation=cfg.encoder.preprocess.interpolation)
    enc_cfg = replace(cfg.encoder, preprocess=pre)
    planned = provenance(enc_cfg, weights, model_name, config_json, feature_width(model_name))
    expected = expected_attrs(manifest, planned)
    _check_files(manifest)

    t0 = time.perf_counter()
    with cache_mod.WriterLock(out):
        if out.exists() and not cfg.overwrite:
            attrs = cache_mod.read_attrs(out)
            diff = cache_mod.differences(attrs, expected, tuple(expected))
            if diff:
                raise cache_mod.CacheError(
                    f"cache {out} was made differently: {'; '.join(diff)}; pass another --out, or --overwrite "
                    "to replace it")
            if attrs.get("complete"):
                log.info("cache %s is already complete (%s embedded, %s failed): nothing to do",
                         out, attrs.get("n_embedded"), attrs.get("n_failed"))
                return EmbedSummary(path=out, n_images=int(attrs["n_images"]), n_embedded=int(attrs["n_embedded"]),
                                    n_failed=int(attrs["n_failed"]), already_complete=True, device=device,
                                    failures=cache_mod.failures(out), attrs=attrs)
            log.info("resuming %s", out)
        else:
            cache_mod.create(out, manifest, planned, batch_size=cfg.batch_size)
            log.info("created %s for %d images", out, len(manifest))

        encoder = load_encoder(enc_cfg, device, weights)
        if encoder.feature_dim != planned["feature_dim"]:  # a config whose width is not the feature width
            raise ConfigError(f"model {model_name}: feature width {encoder.feature_dim} differs from its config's "
                              f"{planned['feature_dim']}")
        n_done = 0
        with cache_mod.CacheWriter(out, sync=cfg.sync) as writer:
            batches = writer.pending_batches()
            todo = int(sum(len(b) for b in batches))
            if writer.batch_size != cfg.batch_size:
                log.info("using the cache's batch size %d (asked %d) so resumed batches match",
                         writer.batch_size, cfg.batch_size)
            workers = default_workers(device) if cfg.workers is None else cfg.workers
            dataset = ImageFolder(manifest.root, manifest.path, build_transform(pre), pre.exif_transpose,
                                  cfg.max_pixels)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers, collate_fn=collate,
                pin_memory=device.startswith("cuda"), worker_init_fn=_worker_init if workers else None,
                persistent_workers=False)
            bar = _progress(todo, "embedding", progress)
            try:
                for rows, x, ok, reasons in loader:
                    emb = np.full((len(rows), encoder.feature_dim), np.nan, dtype=np.float32)
                    if x is not None:
                        emb[ok] = encoder(x).cpu().numpy()
                    status = np.where(ok, cache_mod.OK, cache_mod.FAILED).astype(np.int8)
                    writer.commit(int(rows[0]), emb, status, reasons)
                    n_done += len(rows)
                    bar.update(len(rows))
            except KeyboardInterrupt:
                bar.close()
                log.warning("interrupted: %d of %d images of this run committed to %s; run the same command "
                            "again to complete it", n_done, todo, out)
                raise
            bar.close()
            counts = writer.finalize({"device": device})
    seconds = time.perf_counter() - t0
    attrs = cache_mod.read_attrs(out)
    return EmbedSummary(path=out, n_images=len(manifest), n_embedded=counts["n_embedded"],
                        n_failed=counts["n_failed"], n_processed_now=n_done, seconds=seconds, device=device,
                        failures=cache_mod.failures(out), attrs=attrs)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, leave=False)

"""Stage one: run the frozen encoder once over a dataset into an HDF5 cache.

Two pipelines feed the encoder:

* ``pil`` (the default on a CPU): worker processes open each image with
  Pillow and apply OpenCLIP's own transform — the reference, bit for bit;
* ``tensor`` (the default on a GPU): threads read the files' bytes, JPEGs are
  decoded in batches on the device (nvJPEG) and resized/normalised there to
  the same preprocessing; other images take the reference path
  (:mod:`iqa_cache.embed.pipeline`).

The first is :mod:`iqa_cache.embed.pil_pipeline`; both hand their batches to an
:class:`~iqa_cache.embed.commit.AsyncCommitter`, which writes them to the cache.

The loop is resumable: a cache is a list of fixed batches, each committed
atomically (see :mod:`iqa_cache.cache`), so an interrupted run is completed
by running the same command again, and the result equals an uninterrupted
run.  Images that cannot be read are recorded as failed with their reason;
they never stop a run.  Memory does not grow with the dataset: batches are
produced lazily and streamed to disk.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import cache as cache_mod
from ..device import resolve_device
from ..errors import ConfigError, DatasetError
from ..schema import DEFAULT_FEATURE_DTYPE, FEATURE_DTYPES
from ..sources.datasets import Manifest
from .commit import AsyncCommitter
from .decode import DECODERS
from .encoder import (
    EncoderConfig,
    feature_width,
    load_encoder,
    preprocess_for,
    provenance,
    resolve_model_name,
    resolve_weights,
)
from .pil_pipeline import run_pil_pipeline as _run_pil  # the name tests patch
from .pipeline import TensorLoader, run_tensor_pipeline

log = logging.getLogger(__name__)

PIPELINES = ("auto", "pil", "tensor")
DEFAULT_BATCH = {"cpu": 32, "cuda": 256}  # CPU: ViT-B/32 forwards cost ~10 % less per image at 16-32 than at 64


def default_workers(device: str, pipeline: str = "pil") -> int:
    """Decoding workers.  ``pil``: processes, as many as there are cores (up
    to 16 on a GPU, 8 on a CPU: on 2 cores, 2 workers beside the encoder's
    threads gave 19-20 images/s against 16-17 with one; they sleep once the
    prefetch queue is full).  ``tensor``: reading threads, twice the cores (up
    to 32) on a GPU (they mostly wait for the disk), one fewer than the cores
    on a CPU (a second thread brought nothing there)."""
    n = os.cpu_count() or 1
    if device.startswith("cuda"):
        return min(32, 2 * n) if pipeline == "tensor" else min(16, n)
    return max(1, min(8, n if pipeline == "pil" else n - 1))


@dataclass(frozen=True)
class EmbedConfig:
    """How to run stage one.  ``pipeline``: ``auto`` (``tensor`` on a GPU,
    ``pil`` on a CPU), ``pil`` or ``tensor``.  ``draft``: let Pillow decode
    JPEGs at a reduced scale (``pil`` pipeline only; faster, not the
    reference: opt-in, see docs/embedding.md for its measured fidelity).
    ``batch_size`` None: 32 on a CPU, 256 on a GPU; a resumed cache keeps the
    batch size it was made with."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    max_pixels: int | None = None
    overwrite: bool = False
    sync: bool = True
    pipeline: str = "auto"
    draft: bool = False
    prefetch: int = 2
    decoder: str = "auto"  # tensor pipeline's JPEG decoder: auto (TorchCodec where installed), torchcodec, torchvision
    feature_dtype: str = DEFAULT_FEATURE_DTYPE  # how /embeddings is stored: float32 or float16 (half the file)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"--pipeline '{self.pipeline}' is not one of {', '.join(PIPELINES)}")
        if self.draft and self.pipeline == "tensor":
            raise ConfigError("--draft applies to the pil pipeline only (Pillow's reduced-scale JPEG decoding); "
                              "drop it or use --pipeline pil")
        if self.decoder not in DECODERS:
            raise ConfigError(f"--decoder '{self.decoder}' is not one of {', '.join(DECODERS)}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"--dtype '{self.feature_dtype}' is not one of {', '.join(FEATURE_DTYPES)}")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be 0 or more batches, got {self.prefetch}")

    def resolved_pipeline(self, device: str) -> str:
        """``pil``, ``pil-draft`` or ``tensor``: what the cache records."""
        p = self.pipeline
        if p == "auto":
            p = "pil" if self.draft or not device.startswith("cuda") else "tensor"
        return "pil-draft" if p == "pil" and self.draft else p


@dataclass
class EmbedSummary:
    path: Path
    n_images: int
    n_embedded: int
    n_failed: int
    n_processed_now: int = 0
    already_complete: bool = False
    seconds: float = 0.0  # the whole call (model loading included)
    embed_seconds: float = 0.0  # reading, decoding, encoding and writing the images of this run
    device: str = "cpu"
    pipeline: str = "pil"
    failures: list[tuple[str, str]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # what a rerun found changed, one line each

    @property
    def images_per_s(self) -> float:
        """Throughput of the embedding loop (model loading excluded)."""
        t = self.embed_seconds or self.seconds
        return self.n_processed_now / t if t > 0 else 0.0


def _exists(path: Path) -> bool:
    """Like ``Path.exists`` but False, not an OSError, for a name the file
    system cannot hold (too long): such an image is recorded as failed."""
    try:
        return path.exists()
    except OSError:
        return False


def _check_files(manifest: Manifest) -> None:
    if getattr(manifest, "reader", None) is not None:  # tar members: listed from the shards themselves
        return
    missing = [p for p in manifest.path if not _exists(manifest.root / p)]
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
    if "pipeline" in prov:
        exp["pipeline"] = prov["pipeline"]
    exp.update({"dataset": manifest.name, "manifest_sha256": manifest.fingerprint(), "n_images": len(manifest)})
    return exp


def planned_attrs(manifest: Manifest, cfg: EmbedConfig, device: str) -> dict[str, Any]:
    """The provenance attributes (encoder, weights, preprocessing, pipeline)
    a cache of ``manifest`` made with ``cfg`` on ``device`` records: what
    :func:`embed` plans before creating a cache, for callers that check or
    assemble caches themselves (:mod:`iqa_cache.embed.distributed`)."""
    model_name, config_json = resolve_model_name(cfg.encoder.model)
    weights = resolve_weights(model_name, cfg.encoder.pretrained)
    pre = preprocess_for(model_name, weights, cfg.encoder.preprocess.resize_mode,
                         interpolation=cfg.encoder.preprocess.interpolation)
    planned = provenance(replace(cfg.encoder, preprocess=pre), weights, model_name, config_json,
                         feature_width(model_name))
    planned["pipeline"] = cfg.resolved_pipeline(device)
    planned["feature_dtype"] = cfg.feature_dtype
    return planned


def _feature_diff(attrs: dict[str, Any], manifest: Manifest, planned: dict[str, Any]) -> list[str]:
    """What differs in how the features are made (not which images, labels
    or splits: those a rerun updates)."""
    exp = expected_attrs(manifest, planned)
    keys = tuple(k for k in exp if k not in cache_mod.DATA_KEYS)
    return cache_mod.differences(attrs, exp, keys)


def _cache_pipeline(attrs: dict[str, Any], cfg: EmbedConfig, pipeline: str) -> str:
    attrs.setdefault("pipeline", "pil")  # caches made before the tensor pipeline existed
    if cfg.pipeline == "auto" and not cfg.draft and attrs["pipeline"] != pipeline:
        log.info("continuing with the cache's %s pipeline (auto would pick %s here) so that all its rows "
                 "are made the same way", attrs["pipeline"], pipeline)
        return str(attrs["pipeline"])
    return pipeline


@dataclass
class _Target:
    """Where this run writes: the cache itself (created, resumed or updated
    in place) or its replacement ``.next`` (moved over it when complete)."""

    path: Path
    pipeline: str
    plan: "cache_mod.UpdatePlan | None" = None  # None: a new cache
    rebuild_from: Path | None = None  # rows kept from this cache
    replace: bool = False  # move over ``out`` when complete

    @property
    def n_to_embed(self) -> int:
        return -1 if self.plan is None else self.plan.n_pending


def _choose_target(manifest: Manifest, cfg: EmbedConfig, out: Path, planned: dict[str, Any], pipeline: str,
                   retry_failed: bool) -> _Target:
    """Decide, reading only, what this run does (see :func:`embed`)."""
    nxt = cache_mod.next_path(out)
    if nxt.exists():  # an unfinished replacement: resume it when it is for this very command
        try:
            attrs = cache_mod.read_attrs(nxt)
            pipe = _cache_pipeline(attrs, cfg, pipeline)
            ok = attrs.get("schema_version") == cache_mod.SCHEMA_VERSION and not _feature_diff(
                attrs, manifest, {**planned, "pipeline": pipe})
            plan = cache_mod.plan_update(nxt, manifest, retry_failed=retry_failed) if ok else None
        except cache_mod.CacheError:
            if not cache_mod.is_iqa_cache(nxt):
                raise cache_mod.CacheError(f"{nxt} is in the way of the replacement of {out} and was not written "
                                           "by `iqa embed`; move it away") from None
            plan = None
        if plan is not None and not plan.structural:
            log.info("resuming the unfinished replacement %s of %s", nxt, out)
            return _Target(nxt, pipe, plan, replace=True)
        nxt.unlink()
        log.info("removed %s, an unfinished replacement made for another command", nxt)
    if not out.exists():
        return _Target(out, pipeline)
    if cfg.overwrite:
        return _Target(nxt, pipeline, replace=True)
    attrs = cache_mod.read_attrs(out)
    pipe = _cache_pipeline(attrs, cfg, pipeline)
    diff = _feature_diff(attrs, manifest, {**planned, "pipeline": pipe})
    hard = [d for d in diff if not d.startswith("pipeline")]
    plan = None if hard else cache_mod.plan_update(out, manifest, retry_failed=retry_failed)
    if plan is None or (diff and plan.n_pending):  # another pipeline only matters for rows still to embed
        cached = str(attrs["pipeline"])
        resume = (f"resume it with --pipeline {cached.replace('pil-draft', 'pil --draft')} (every pipeline "
                  "runs on a CPU too), " if any(d.startswith("pipeline") for d in diff) else "")
        raise cache_mod.CacheError(
            f"cache {out} was made differently: {'; '.join(diff)}; {resume}pass another --out, or "
            "--overwrite to replace it")
    if plan.structural:
        return _Target(nxt, pipe, plan, rebuild_from=out, replace=True)
    return _Target(out, pipe, plan)


def _load_checked_encoder(enc_cfg, device: str, weights, model_name: str, planned: dict[str, Any]):
    encoder = load_encoder(enc_cfg, device, weights)
    if encoder.feature_dim != planned["feature_dim"]:  # a config whose width is not the feature width
        raise ConfigError(f"model {model_name}: feature width {encoder.feature_dim} differs from its config's "
                          f"{planned['feature_dim']}")
    return encoder


def embed(manifest: Manifest, cfg: EmbedConfig, out: str | os.PathLike, *, progress: bool = True,
          retry_failed: bool = False, extra_attrs: dict[str, Any] | None = None) -> EmbedSummary:
    """Embed every image of ``manifest`` into the cache at ``out``: create
    it, resume it, update it, or find it up to date.

    On an existing cache made the same way, images whose file changed
    (size and mtime, else size and content hash; or another ``--root``) are
    re-embedded, new images embedded, removed ones dropped, and new labels,
    splits and label range written without re-embedding anything;
    ``retry_failed`` also retries failed images whose file did not change.
    Added, removed or reordered rows, an old schema and ``cfg.overwrite``
    build a replacement beside the cache (``.<name>.next``) that is moved
    over it only once complete; the encoder is loaded before anything is
    written.  Raises :class:`~iqa_cache.errors.CacheError` when ``out`` holds
    a cache whose features are made differently (unless ``cfg.overwrite``)
    or is being written by another process.  ``extra_attrs``: more
    attributes for a newly created cache (a distributed rank's part, see
    :mod:`iqa_cache.embed.distributed`)."""
    out = Path(out)
    device = resolve_device(cfg.device)
    pipeline = cfg.resolved_pipeline(device)
    model_name, config_json = resolve_model_name(cfg.encoder.model)
    weights = resolve_weights(model_name, cfg.encoder.pretrained)
    pre = preprocess_for(model_name, weights, cfg.encoder.preprocess.resize_mode,
                         interpolation=cfg.encoder.preprocess.interpolation)
    enc_cfg = replace(cfg.encoder, preprocess=pre)
    planned = provenance(enc_cfg, weights, model_name, config_json, feature_width(model_name))
    planned["feature_dtype"] = cfg.feature_dtype
    batch_size = cfg.batch_size or DEFAULT_BATCH["cuda" if device.startswith("cuda") else "cpu"]
    _check_files(manifest)

    t0 = time.perf_counter()
    with cache_mod.WriterLock(out) as lock:
        cache_mod.remove_stale_temporaries(out)
        target = _choose_target(manifest, cfg, out, planned, pipeline, retry_failed)
        pipeline = planned["pipeline"] = target.pipeline
        plan = target.plan
        changes = plan.describe() if plan is not None else []
        if plan is not None and plan.nothing_to_do and not target.replace:
            attrs = cache_mod.read_attrs(out)
            if attrs.get("complete") and not attrs.get("updating"):
                log.info("cache %s is already complete (%s embedded, %s failed): nothing to do",
                         out, attrs.get("n_embedded"), attrs.get("n_failed"))
                return EmbedSummary(path=out, n_images=int(attrs["n_images"]), n_embedded=int(attrs["n_embedded"]),
                                    n_failed=int(attrs["n_failed"]), already_complete=True, device=device,
                                    pipeline=str(attrs["pipeline"]), failures=cache_mod.failures(out, limit=20),
                                    attrs=attrs)
        for line in changes:
            log.info("%s: %s", out, line)
        # the encoder is loaded (a bad --pretrained refused) before anything is written
        encoder = (_load_checked_encoder(enc_cfg, device, weights, model_name, planned)
                   if target.n_to_embed != 0 else None)
        if plan is None:
            cache_mod.create(target.path, manifest, planned, batch_size=batch_size, extra_attrs=extra_attrs,
                             identities=cache_mod.Identities.of(manifest.root, manifest.path,
                                                                reader=getattr(manifest, "reader", None)))
            log.info("created %s for %d images", target.path, len(manifest))
        elif target.rebuild_from is not None:
            cache_mod.rebuild(target.rebuild_from, target.path, manifest, plan, planned, history="; ".join(changes))
        else:
            cache_mod.apply_in_place(target.path, manifest, plan, sync=cfg.sync, history="; ".join(changes))
            log.info("resuming %s", target.path)

        n_done = 0
        routes: dict[str, int] = {}
        done_attrs: dict[str, Any] = {"device": device}
        with cache_mod.CacheWriter(target.path, sync=cfg.sync) as writer:
            todo = writer.n_pending_rows_in_batches()
            if cfg.batch_size is not None and writer.batch_size != cfg.batch_size:
                log.info("using the cache's batch size %d (asked %d) so resumed batches match",
                         writer.batch_size, cfg.batch_size)
            t_run = time.perf_counter()
            if todo:
                workers = default_workers(device, pipeline) if cfg.workers is None else cfg.workers
                log.info("embedding %d images on %s: %s pipeline, %d %s, batches of %d, %s", todo, device, pipeline,
                         workers, "threads" if pipeline == "tensor" else "processes", writer.batch_size,
                         enc_cfg.precision)
                bar = _progress(todo, "embedding", progress)
                committer = AsyncCommitter(writer, depth=2, on_commit=bar.update)
                try:
                    try:
                        if pipeline == "tensor":
                            with TensorLoader(manifest.root, manifest.path, pre, device, workers=workers,
                                              max_pixels=cfg.max_pixels, decoder=cfg.decoder,
                                              reader=getattr(manifest, "reader", None)) as loader:
                                done_attrs["jpeg_decoder"] = loader.decoder
                                n_done = run_tensor_pipeline(loader, encoder, writer.iter_pending_batches(),
                                                             committer, prefetch=cfg.prefetch)
                                routes = dict(loader.routes)
                        else:
                            n_done = _run_pil(manifest, cfg, pre, encoder, writer, committer, device, workers,
                                              draft=pipeline == "pil-draft",
                                              inherited_fds=(lock.fd, *writer.file_descriptors()))
                    finally:
                        committer.close()
                except KeyboardInterrupt:
                    bar.close()
                    log.warning("interrupted: %d of %d images of this run committed to %s; run the same command "
                                "again to complete it%s", committer.n_committed, todo, target.path,
                                f" ({out} is unchanged until then)" if target.replace else "")
                    raise
                bar.close()
            counts = writer.finalize(done_attrs)
            embed_seconds = time.perf_counter() - t_run
        if target.replace:
            cache_mod.replace_with(target.path, out)
    seconds = time.perf_counter() - t0
    if routes:
        log.info("decoded: %s", ", ".join(f"{v} {k}" for k, v in sorted(routes.items())))
    attrs = cache_mod.read_attrs(out)
    return EmbedSummary(path=out, n_images=len(manifest), n_embedded=counts["n_embedded"],
                        n_failed=counts["n_failed"], n_processed_now=n_done, seconds=seconds,
                        embed_seconds=embed_seconds, device=device, changes=changes,
                        pipeline=pipeline, failures=cache_mod.failures(out, limit=20), attrs=attrs, routes=routes)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, leave=False)

"""Stage one (and ``iqa predict``) over several processes launched by
torchrun: ``torchrun --nproc-per-node N [--nnodes M ...] -m iqa_cache.cli embed ...``.

Each rank reads its place from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), joins the process
group (NCCL on GPUs, gloo on CPUs), takes ``cuda:<LOCAL_RANK>`` on a GPU
machine or ``cores // LOCAL_WORLD_SIZE`` torch threads on a CPU, and embeds
one contiguous part of the manifest into its own shard cache,
``OUT.rank-00001-of-00004.h5`` beside ``OUT``: a normal, resumable cache
(:mod:`iqa_cache.cache`) of that part.  Parts are whole batches of the
single-process run (batch boundaries at the same rows), so every image is
encoded in the same batch as without torchrun; with webdataset input they
also follow the shards (a part boundary is the batch boundary at or before
a shard's first sample), so shards are the unit of distribution.

When every rank is done, rank 0 merges the shards, in order, into one
ordinary cache at ``OUT`` (written under a temporary name, renamed into
place once complete) and deletes them: every other command reads ``OUT`` as
usual.  A killed rank (or node) is resumed by running the same command
again: complete shards are found complete and not redone, partial ones are
completed.  ``OUT`` and its shards must be on a file system that all nodes
share.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .. import cache as cache_mod
from ..errors import CacheError, ConfigError
from ..sources.datasets import Manifest

log = logging.getLogger(__name__)

# how long a rank waits for the others at a collective (a fast rank waits for the slowest part)
TIMEOUT = timedelta(hours=12)
MERGE_ROWS = 4096
IDENTITY_DATASETS = ("file_size", "file_mtime_ns", "file_hash")  # per-image content identities, copied as made


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    local_world: int


def from_env(environ: dict | None = None) -> DistEnv | None:
    """torchrun's environment, or None when not launched by torchrun."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ConfigError(f"torchrun environment is not numeric: RANK={env.get('RANK')!r} "
                          f"WORLD_SIZE={env.get('WORLD_SIZE')!r}") from None
    if not (world >= 1 and 0 <= rank < world and 0 <= local_rank < local_world):
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                          f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
    return DistEnv(rank, world, local_rank, local_world)


def require_env() -> DistEnv:
    env = from_env()
    if env is None:
        raise ConfigError("--distributed needs torchrun's environment (RANK, WORLD_SIZE, ...): launch with "
                          "`torchrun --nproc-per-node N -m iqa_cache.cli embed ...`")
    return env


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Session:
    """The process group of one torchrun job, for the duration of a command."""

    def __init__(self, env: DistEnv, device: str):
        from ..device import resolve_device

        self.env = env
        device = resolve_device(device)
        if device.startswith("cuda"):
            if ":" not in device:
                device = f"cuda:{env.local_rank}"
            torch.cuda.set_device(torch.device(device))
            self.backend = "nccl"
        else:
            torch.set_num_threads(max(1, _cores() // env.local_world))
            self.backend = "gloo"
        self.device = device

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world(self) -> int:
        return self.env.world

    def __enter__(self) -> "Session":
        import torch.distributed as dist

        if not dist.is_initialized():
            kw: dict[str, Any] = {"backend": self.backend, "timeout": TIMEOUT}
            if self.backend == "nccl":
                kw["device_id"] = torch.device(self.device)
            dist.init_process_group(**kw)
        log.debug("rank %d of %d: %s, %s, %d threads", self.rank, self.world, self.backend, self.device,
                  torch.get_num_threads())
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_to_root(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def part_bounds(n: int, batch: int, world: int, shard_starts: list[int] | None = None) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the ``world`` parts: contiguous, whole
    batches (every start a multiple of ``batch``), balanced by batches; with
    ``shard_starts`` (the first row of each shard) the cuts fall on the batch
    boundary at or before a shard start, nearest to the balanced cut."""
    nb = math.ceil(n / batch)
    if shard_starts is None:
        cuts = [r * nb // world for r in range(world + 1)]
    else:
        cand = sorted({s // batch for s in shard_starts if 0 < s < n})
        cuts = [0]
        for r in range(1, world):
            target = r * nb / world
            ok = [c for c in cand if c >= cuts[-1]]
            cuts.append(min(ok, key=lambda c: (abs(c - target), c)) if ok else nb)
        cuts.append(nb)
        cuts = [min(max(c, prev), nb) for c, prev in zip(cuts, [0] + cuts[:-1])]
    return [(min(a * batch, n), min(b * batch, n)) for a, b in zip(cuts[:-1], cuts[1:])]


def shard_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.rank-{rank:05d}-of-{world:05d}{out.suffix}")


def rows(manifest: Manifest, start: int, stop: int) -> Manifest:
    """Rows [start, stop) of a manifest (the same images, labels, splits)."""
    return replace(manifest, image_id=manifest.image_id[start:stop], path=manifest.path[start:stop],
                   label=manifest.label[start:stop], split=manifest.split[start:stop],
                   notes=manifest.notes + (f"rows {start}..{stop - 1} of {len(manifest)}",))


def part_attrs(manifest: Manifest, start: int, stop: int, rank: int, world: int) -> dict[str, Any]:
    """What a shard records of its part (rows ``start..stop-1`` of the
    manifest, rank of world), which the merge checks."""
    return {"part_of_manifest_sha256": manifest.fingerprint(), "part_rows": [start, stop], "part_rank": rank,
            "part_world": world}


def _check_out(out: Path, manifest: Manifest, cfg, device: str) -> tuple[str, str]:
    """('build' | 'complete' | 'error', message) for an existing ``out``."""
    from .loop import expected_attrs, planned_attrs

    if not out.exists() or cfg.overwrite:
        return "build", ""
    attrs = cache_mod.read_attrs(out)
    expected = expected_attrs(manifest, planned_attrs(manifest, cfg, device))
    diff = cache_mod.differences(attrs, expected, tuple(expected))
    if attrs.get("complete"):
        diff = [d for d in diff if not d.startswith("pipeline")]
        if not diff:
            return "complete", ""
    if diff:
        return "error", (f"cache {out} was made differently: {'; '.join(diff)}; pass another --out, or "
                         "--overwrite to replace it")
    return "error", (f"cache {out} is an incomplete single-process cache; complete it with the same `iqa embed` "
                     "command without torchrun, or pass --overwrite to rebuild it with the ranks")


def embed_distributed(manifest: Manifest, cfg, out: str | os.PathLike, *, env: DistEnv | None = None,
                      progress: bool = True):
    """This rank's share of stage one, then (rank 0) the merge.  Returns an
    :class:`~iqa_cache.embed.loop.EmbedSummary`: on rank 0 that of the merged
    cache (images processed and embedding time over all ranks); on the other
    ranks that of their shard."""
    from .loop import DEFAULT_BATCH, EmbedSummary, default_workers, embed

    out = Path(out)
    env = env or require_env()
    t0 = time.perf_counter()
    with Session(env, cfg.device) as sess:
        device = sess.device
        kind = "cuda" if device.startswith("cuda") else "cpu"
        batch = cfg.batch_size or DEFAULT_BATCH[kind]
        if sess.rank == 0:
            try:
                decision = _check_out(out, manifest, cfg, device)
            except CacheError as e:
                decision = ("error", str(e))
        else:
            decision = None
        state, msg = sess.broadcast(decision)
        if state == "error":
            raise CacheError(msg)
        if state == "complete":
            attrs = cache_mod.read_attrs(out)
            if sess.rank == 0:
                log.info("cache %s is already complete: nothing to do", out)
            return EmbedSummary(path=out, n_images=int(attrs["n_images"]), n_embedded=int(attrs["n_embedded"]),
                                n_failed=int(attrs["n_failed"]), already_complete=True, device=device,
                                pipeline=str(attrs.get("pipeline", "pil")),
                                failures=cache_mod.failures(out, limit=20), attrs=attrs)
        starts = getattr(manifest.reader, "shard_starts", None)
        bounds = part_bounds(len(manifest), batch, sess.world, starts)
        a, b = bounds[sess.rank]
        shard = shard_path(out, sess.rank, sess.world)
        workers = cfg.workers
        if workers is None:
            workers = max(1, default_workers(device, cfg.resolved_pipeline(device)) // env.local_world)
        mine = None
        if b > a:
            log.info("rank %d of %d: rows %d..%d of %d into %s", sess.rank, sess.world, a, b - 1, len(manifest),
                     shard)
            rcfg = replace(cfg, device=device, batch_size=batch, workers=workers)
            s = embed(rows(manifest, a, b), rcfg, shard, progress=progress and sess.rank == 0,
                      extra_attrs=part_attrs(manifest, a, b, sess.rank, sess.world))
            mine = {"n_done": s.n_processed_now, "embed_seconds": s.embed_seconds, "pipeline": s.pipeline}
        else:
            log.info("rank %d of %d: no rows to embed (%d images, batches of %d)", sess.rank, sess.world,
                     len(manifest), batch)
        done = sess.gather(mine)
        if sess.rank != 0:
            return EmbedSummary(path=shard, n_images=b - a, n_embedded=0, n_failed=0,
                                n_processed_now=(mine or {}).get("n_done", 0), device=device)
        parts = [(lo, hi, shard_path(out, r, sess.world)) for r, (lo, hi) in enumerate(bounds) if hi > lo]
        pipeline = next(d["pipeline"] for d in done if d)
        merge_shards(out, manifest, cfg, device, batch, parts, pipeline=pipeline,
                     extra={"distributed_world_size": sess.world})
    attrs = cache_mod.read_attrs(out)
    return EmbedSummary(path=out, n_images=len(manifest), n_embedded=int(attrs["n_embedded"]),
                        n_failed=int(attrs["n_failed"]), n_processed_now=sum(d["n_done"] for d in done if d),
                        seconds=time.perf_counter() - t0,
                        embed_seconds=max((d["embed_seconds"] for d in done if d), default=0.0), device=device,
                        pipeline=pipeline, failures=cache_mod.failures(out, limit=20), attrs=attrs)


def merge_shards(out: Path, manifest: Manifest, cfg, device: str, batch: int, parts: list[tuple[int, int, Path]],
                 *, pipeline: str, extra: dict[str, Any]) -> Path:
    """Copy complete shard caches (rows ``lo..hi`` each) into one cache at
    ``out``, built under a temporary name and renamed into place; then
    delete the shards."""
    from .loop import planned_attrs

    with cache_mod.WriterLock(out):
        if out.exists() and not cfg.overwrite:  # made by another writer while the ranks embedded: not ours to replace
            raise cache_mod.CacheError(f"cache {out} was written by another process while the ranks embedded; the "
                                       "shards are kept: pass another --out, or --overwrite to replace it")
        prov = planned_attrs(manifest, cfg, device)
        prov["pipeline"] = pipeline
        for p in out.parent.glob(f".{out.name}.merging-*"):
            p.unlink(missing_ok=True)  # left by a rank 0 killed while merging
        tmp = out.with_name(f".{out.name}.merging-{os.getpid()}")
        try:
            first = cache_mod.read_attrs(parts[0][2])
            done = {"device": device}
            if "jpeg_decoder" in first:  # recorded at the end of a run, as a single process does
                done["jpeg_decoder"] = first["jpeg_decoder"]
            cache_mod.create(tmp, manifest, prov, batch_size=batch, extra_attrs=extra)
            with h5py.File(tmp, "r+") as f:
                for lo, hi, path in parts:
                    attrs = cache_mod.read_attrs(path)
                    if not attrs.get("complete"):
                        raise CacheError(f"shard {path} is not the complete part {lo}..{hi - 1}; run the same "
                                         "command again")
                    got = [int(x) for x in attrs.get("part_rows", [])]
                    if int(attrs["n_images"]) != hi - lo or got != [lo, hi]:  # not written by a rank of this job
                        held = f"rows {got[0]}..{got[1] - 1}" if len(got) == 2 else "no part of a torchrun job"
                        raise CacheError(f"shard {path} holds {held}, not the part {lo}..{hi - 1} of this job; "
                                         "delete it and run the same command again")
                    with h5py.File(path, "r") as g:
                        for s in range(0, hi - lo, MERGE_ROWS):
                            e = min(s + MERGE_ROWS, hi - lo)
                            f["embeddings"][lo + s:lo + e] = g["embeddings"][s:e]
                            f["error"][lo + s:lo + e] = g["error"][s:e]
                            f["status"][lo + s:lo + e] = g["status"][s:e]
                            for name in IDENTITY_DATASETS:
                                if name in g and name in f:
                                    f[name][lo + s:lo + e] = g[name][s:e]
                            if not np.array_equal(g["image_id"][s:e].astype(object),
                                                  f["image_id"][lo + s:lo + e].astype(object)):
                                raise CacheError(f"shard {path} holds other images than rows {lo}..{hi - 1}")
            with cache_mod.CacheWriter(tmp, sync=False) as w:
                w.finalize(done)
            cache_mod.fsync_path(tmp)
            os.replace(tmp, out)
            cache_mod.fsync_path(out.parent)
        finally:
            tmp.unlink(missing_ok=True)
    for _, _, path in parts:
        path.unlink(missing_ok=True)
    log.info("merged %d shard(s) into %s", len(parts), out)
    return out

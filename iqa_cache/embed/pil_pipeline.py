"""The pil pipeline of stage one: worker processes open each image with
Pillow and apply OpenCLIP's own transform (the reference, bit for bit); the
encoder runs on their batches and an
:class:`~iqa_cache.embed.commit.AsyncCommitter` writes them to the cache.  The
tensor pipeline is :mod:`iqa_cache.embed.pipeline`; :func:`iqa_cache.embed.loop.embed`
picks one."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import cache as cache_mod
from ..sources.datasets import Manifest
from .encoder import ImageLoadError, build_transform, load_image
from .memory import release_free_heap


class ImageFolder(torch.utils.data.Dataset):
    """Row index → (row, preprocessed tensor or None, failure reason)."""

    def __init__(self, root: Path, paths: np.ndarray, transform, exif_transpose: bool = True,
                 max_pixels: int | None = None, draft: tuple[int, int] | None = None, reader=None):
        self.root, self.paths, self.transform = root, paths, transform
        self.reader = reader  # None: files under root; else read(rel_path) gives the bytes (a tar member)
        self.exif_transpose, self.max_pixels, self.draft = exif_transpose, max_pixels, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            src = self.root / self.paths[i]
            if self.reader is not None:
                try:
                    src = self.reader.read(self.paths[i])
                except OSError as e:
                    raise ImageLoadError(f"cannot read: {e}") from None
            img = load_image(src, exif_transpose=self.exif_transpose,
                             max_pixels=self.max_pixels, draft=self.draft)
            return i, self.transform(img), ""
        except ImageLoadError as e:
            return i, None, str(e)


def collate(items):
    rows = np.asarray([i for i, _, _ in items], dtype=np.int64)
    ok = np.asarray([x is not None for _, x, _ in items], dtype=bool)
    reasons = [r for _, _, r in items]
    x = torch.stack([x for _, x, _ in items if x is not None]) if ok.any() else None
    return rows, x, ok, reasons


class BatchList:
    """The pending batches as a lazily iterated batch sampler (row lists)."""

    def __init__(self, writer: "cache_mod.CacheWriter"):
        self.writer = writer
        self.n = writer.n_pending_batches()

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[list[int]]:
        for rows in self.writer.iter_pending_batches():
            yield rows.tolist()


def worker_init(_: int, inherited_fds: tuple[int, ...] = ()) -> None:
    """In a forked decoding process: one thread, and close the copies of the
    writer's lock and HDF5 file descriptors, so that a worker outliving a
    killed writer (DataLoader workers notice within seconds) does not keep
    the cache locked against the rerun.  Workers leave through ``os._exit``:
    HDF5 never flushes or closes the file from here."""
    torch.set_num_threads(1)
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass


def run_pil_pipeline(manifest: Manifest, cfg, pre, encoder, writer, committer, device: str,
                     workers: int, draft: bool, inherited_fds: tuple[int, ...] = ()) -> int:
    """The reference pipeline: Pillow + OpenCLIP's transform in worker processes
    (``draft``: Pillow's reduced-scale JPEG decoding, not the reference).
    ``cfg``: the run's :class:`~iqa_cache.embed.loop.EmbedConfig` (its
    ``max_pixels`` and ``prefetch``).  Returns the number of rows processed."""
    draft_size = (pre.image_size, pre.image_size) if draft else None
    dataset = ImageFolder(manifest.root, manifest.path, build_transform(pre), pre.exif_transpose, cfg.max_pixels,
                          draft_size, reader=getattr(manifest, "reader", None))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=BatchList(writer), num_workers=workers, collate_fn=collate,
        pin_memory=device.startswith("cuda"),
        worker_init_fn=functools.partial(worker_init, inherited_fds=inherited_fds) if workers else None,
        prefetch_factor=max(1, cfg.prefetch) if workers else None, persistent_workers=False)
    n = 0
    with torch.inference_mode():
        for rows, x, ok, reasons in loader:
            emb = np.full((len(rows), encoder.feature_dim), np.nan, dtype=np.float32)
            if x is not None:
                emb[ok] = encoder(x).cpu().numpy()
            status = np.where(ok, cache_mod.OK, cache_mod.FAILED).astype(np.int8)
            committer.put(rows, emb, status, reasons)
            n += len(rows)
            del x
            release_free_heap()
    return n

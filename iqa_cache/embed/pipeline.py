"""The tensor pipeline of stage one: threads read, the device decodes.

For each fixed batch of rows (see :meth:`iqa_cache.cache.CacheWriter.pending_batches`):

1. a thread pool reads the files' bytes a few batches ahead and looks at each
   JPEG's header (:mod:`iqa_cache.embed.jpeg`);
2. plain baseline JPEGs are decoded together on the GPU
   (``decode_jpeg(list, device="cuda")``, nvJPEG, from TorchCodec where
   installed, else torchvision: :mod:`iqa_cache.embed.decode`); on the CPU, and for
   progressive or grayscale JPEGs on the GPU too, the reading thread decodes
   them with the same library's libjpeg-turbo decoder;
3. everything else — PNG, CMYK, 16-bit, truncated or odd JPEGs, missing or
   broken files — goes to the reference path, :func:`~iqa_cache.embed.encoder.load_image`
   plus OpenCLIP's transform, in the same threads; images that cannot be read
   there are recorded as failed with Pillow's reason;
4. the decoded images are oriented (EXIF), resized and normalised on the
   device exactly as OpenCLIP's transform would (:mod:`iqa_cache.embed.tensorprep`),
   the encoder runs on the whole batch, and its features are copied back
   while the next batch is being prepared;
5. a writer thread commits batches to the cache in order
   (:class:`~iqa_cache.embed.commit.AsyncCommitter`), so HDF5 writes overlap the encoder too.

Everything except ``decode_jpeg(..., device="cuda")`` runs on the CPU as well,
which is how the tests check the pipeline without a GPU.
"""
from __future__ import annotations

import logging
import os
import stat
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .. import cache as cache_mod
from .commit import AsyncCommitter
from .decode import ORIENTS, jpeg_decoder
from .encoder import Encoder, ImageLoadError, PreprocessConfig, build_transform, load_image
from .jpeg import SEQUENTIAL, parse_header
from .memory import release_free_heap
from .tensorprep import TensorPreprocess, orient

log = logging.getLogger(__name__)

# how an image reached the encoder (counted per run, logged at the end)
NVJPEG, LIBJPEG, PIL_PATH, FAILED = "nvjpeg", "libjpeg", "pil", "failed"


@dataclass
class Loaded:
    """One row after the reading thread: exactly one of ``jpeg`` (bytes for
    the device decoder), ``pixels`` (decoded uint8 CHW, oriented), ``ready``
    (the reference path's preprocessed float tensor) or ``reason`` is set."""

    row: int
    path: Path
    jpeg: torch.Tensor | None = None
    orientation: int = 1
    pixels: torch.Tensor | None = None
    ready: torch.Tensor | None = None
    reason: str = ""
    route: str = FAILED


def read_bytes(path: Path) -> bytearray:
    """A regular file's bytes; OSError for anything else (a FIFO is opened
    without blocking and refused, never read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        size = st.st_size
        buf = bytearray(size)
        got = f.readinto(buf)
    if got != size:
        del buf[got:]
    return buf


class TensorLoader:
    """Reads rows in threads and turns a batch of them into the encoder's
    input on ``device``."""

    def __init__(self, root: Path, paths: np.ndarray, pre: PreprocessConfig, device: str, *, workers: int,
                 max_pixels: int | None = None, decoder: str = "auto", reader=None):
        self.root, self.paths, self.pre, self.device = Path(root), paths, pre, device
        self.reader = reader  # None: files under root; else an object whose read(rel_path) returns the bytes
        self.decoder, self.decode = jpeg_decoder(decoder)  # torchcodec, or torchvision's deprecated decoder
        self.decoder_orients = ORIENTS[self.decoder]
        self.device_decode = device.startswith("cuda")  # baseline JPEGs go to nvJPEG
        self.decode_device = device
        self.limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        self.transform = build_transform(pre)
        self.prep = TensorPreprocess(pre, device)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="iqa-read")
        self.routes: Counter[str] = Counter()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "TensorLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------- reading threads
    def _reference(self, row: int, path: Path, data=None) -> Loaded:
        """Pillow + OpenCLIP's transform: the reference path, and the judge of
        what cannot be read (``data``: the bytes when they do not come from a file)."""
        try:
            img = load_image(path if data is None else data, exif_transpose=self.pre.exif_transpose,
                             max_pixels=self.limit)
            return Loaded(row, path, ready=self.transform(img), route=PIL_PATH)
        except ImageLoadError as e:
            return Loaded(row, path, reason=str(e), route=FAILED)

    def load(self, row: int) -> Loaded:
        path = self.root / self.paths[row]
        if self.reader is not None:
            try:
                data = self.reader.read(self.paths[row])
            except OSError as e:
                return Loaded(row, path, reason=f"cannot read: {e}", route=FAILED)
            ref = data
        else:
            try:
                data = read_bytes(path)
            except OSError:
                return self._reference(row, path)
            ref = None
        hdr = parse_header(data)
        if hdr is None or not hdr.tensor_ok or (self.limit is not None and hdr.pixels > self.limit):
            return self._reference(row, path, ref)
        orientation = hdr.orientation if self.pre.exif_transpose else 1
        if self.decoder_orients and hdr.orientation != 1:
            if not self.pre.exif_transpose:  # the decoder would rotate it: Pillow keeps it as stored
                return self._reference(row, path, ref)
            orientation = 1  # the (CPU) decoder applies it
        t = torch.frombuffer(data, dtype=torch.uint8)
        if self.device_decode and hdr.sof in SEQUENTIAL and hdr.components == 3 and (
                hdr.orientation == 1 or not self.decoder_orients):
            return Loaded(row, path, jpeg=t, orientation=orientation, route=NVJPEG)
        try:
            pixels = self.decode(t)
        except RuntimeError:
            return self._reference(row, path, ref)
        return Loaded(row, path, pixels=orient(pixels, orientation), route=LIBJPEG)

    def submit(self, rows: np.ndarray) -> list[Future]:
        return [self.pool.submit(self.load, int(r)) for r in rows]

    # -------------------------------------------------------------- main thread
    def _device_decode(self, items: list[Loaded]) -> None:
        """Decode the items' JPEG bytes on the GPU in one call; if that call
        fails, one by one; what nvJPEG refuses goes to libjpeg, then Pillow."""
        datas = [it.jpeg for it in items]
        try:
            out = self.decode(datas, self.decode_device)
        except RuntimeError:
            out = []
            for d in datas:
                try:
                    out.append(self.decode(d, self.decode_device))
                except RuntimeError:
                    out.append(None)
        for k, (it, t) in enumerate(zip(items, out)):
            if t is None:
                log.debug("nvJPEG could not decode %s; decoding it on the CPU", it.path)
                try:
                    t = self.decode(it.jpeg)
                    it.route = LIBJPEG
                except RuntimeError:
                    items[k] = self._reference(it.row, it.path,
                                               None if self.reader is None else it.jpeg.numpy())
                    continue
            it.pixels = orient(t, it.orientation)
            it.jpeg = None

    def assemble(self, loaded: list[Loaded]) -> tuple[torch.Tensor | None, np.ndarray, list[str]]:
        """(input batch on the device for the rows that could be read, their
        mask, the reasons of those that could not)."""
        on_gpu = [k for k, it in enumerate(loaded) if it.jpeg is not None]
        if on_gpu:
            items = [loaded[k] for k in on_gpu]
            self._device_decode(items)
            for k, it in zip(on_gpu, items):
                loaded[k] = it
        self.routes.update(it.route for it in loaded)
        ok = np.asarray([it.pixels is not None or it.ready is not None for it in loaded], dtype=bool)
        reasons = [it.reason for it in loaded]
        good = [it for it in loaded if it.pixels is not None or it.ready is not None]
        if not good:
            return None, ok, reasons
        s = self.pre.image_size
        x = torch.empty((len(good), 3, s, s), dtype=torch.float32, device=self.device)
        dec = [j for j, it in enumerate(good) if it.pixels is not None]
        ref = [j for j, it in enumerate(good) if it.ready is not None]
        if dec:
            x[torch.as_tensor(dec, device=self.device)] = self.prep([good[j].pixels for j in dec])
        if ref:
            x[torch.as_tensor(ref, device=self.device)] = torch.stack([good[j].ready for j in ref]).to(self.device)
        return x, ok, reasons


def _features_to_host(feats: torch.Tensor) -> tuple[torch.Tensor, object | None]:
    """Start copying features to the host; returns (host tensor, event to wait on)."""
    if feats.device.type != "cuda":
        return feats, None
    host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
    host.copy_(feats, non_blocking=True)
    ev = torch.cuda.Event()
    ev.record()
    return host, ev


def run_tensor_pipeline(loader: TensorLoader, encoder: Encoder, batches: Iterable[np.ndarray],
                        committer: AsyncCommitter, *, prefetch: int = 2) -> int:
    """Embed ``batches`` of rows and hand each to ``committer``; returns the
    number of rows processed.  Reading runs ``prefetch`` batches ahead; the
    features of batch k are copied back while batch k+1 is decoded."""
    it: Iterator[np.ndarray] = iter(batches)
    inflight: deque[tuple[np.ndarray, list[Future]]] = deque()

    def refill() -> None:
        while len(inflight) < prefetch + 1:
            rows = next(it, None)
            if rows is None:
                return
            inflight.append((rows, loader.submit(rows)))

    def finish(done) -> None:
        rows, ok, reasons, host, ev = done
        emb = np.full((len(rows), encoder.feature_dim), np.nan, dtype=np.float32)
        if host is not None:
            if ev is not None:
                ev.synchronize()
            emb[ok] = host.numpy()
        status = np.where(ok, cache_mod.OK, cache_mod.FAILED).astype(np.int8)
        committer.put(rows, emb, status, reasons)

    n = 0
    pending = None
    refill()
    with torch.inference_mode():
        while inflight:
            rows, futures = inflight.popleft()
            refill()
            loaded = [f.result() for f in futures]
            x, ok, reasons = loader.assemble(loaded)
            host = ev = None
            if x is not None:
                host, ev = _features_to_host(encoder(x))
            if pending is not None:
                finish(pending)
                release_free_heap()
            pending = (rows, ok, reasons, host, ev)
            n += len(rows)
        if pending is not None:
            finish(pending)
    return n

"""What identifies an image's content (:func:`file_identity`,
:class:`Identities`: size, mtime and a hash of the first and last 64 KiB)
and the cache's contents as stage two sees them (:func:`content_id`)."""
from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..schema import IDENTITY_BYTES
from .attrs import _py


def file_identity(path: Path, *, with_hash: bool = True) -> tuple[int, int, bytes]:
    """(size, mtime_ns, hash) of a file: the hash (blake2b-64, hex) covers its
    size and its first and last 64 KiB (the whole file when smaller).
    ``(-1, -1, b"")`` for a file that cannot be stat'ed; hash ``b""`` when
    not computed or unreadable."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return -1, -1, b""
    if not with_hash or not stat.S_ISREG(st.st_mode):  # a FIFO or a device is never read: it may block
        return int(st.st_size), int(st.st_mtime_ns), b""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(st.st_size).to_bytes(8, "little"))
    try:
        with open(path, "rb") as fh:
            if st.st_size <= 2 * IDENTITY_BYTES:
                h.update(fh.read())
            else:
                h.update(fh.read(IDENTITY_BYTES))
                fh.seek(-IDENTITY_BYTES, os.SEEK_END)
                h.update(fh.read(IDENTITY_BYTES))
    except OSError:
        return int(st.st_size), int(st.st_mtime_ns), b""
    return int(st.st_size), int(st.st_mtime_ns), h.hexdigest().encode("ascii")


@dataclass
class Identities:
    size: np.ndarray  # int64
    mtime_ns: np.ndarray  # int64
    hash: np.ndarray  # S16

    @classmethod
    def unknown(cls, n: int) -> "Identities":
        return cls(np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, "S16"))

    @classmethod
    def of(cls, root: Path, paths, *, with_hash: bool = True, threads: int = 8, reader=None) -> "Identities":
        """Identities of ``root / p`` for every path (threads: reading and
        hashing release the GIL); with a manifest's ``reader`` (webdataset
        members), ``reader.identity(p)``."""
        root = Path(root)
        if reader is not None:
            fn = lambda p: reader.identity(str(p), with_hash=with_hash)  # noqa: E731
        else:
            fn = lambda p: file_identity(root / str(p), with_hash=with_hash)  # noqa: E731
        if len(paths) > 64 and threads > 1:
            with ThreadPoolExecutor(threads) as ex:
                res = list(ex.map(fn, paths, chunksize=64))
        else:
            res = [fn(p) for p in paths]
        ids = cls.unknown(len(res))
        if res:
            ids.size[:] = [r[0] for r in res]
            ids.mtime_ns[:] = [r[1] for r in res]
            ids.hash[:] = [r[2] for r in res]
        return ids


def content_id(f: h5py.File) -> str:
    """A digest of the cache's contents as stage two sees them: image ids,
    per-image content identities, status, labels and splits (not the
    embeddings themselves: they follow from these and the provenance)."""
    h = hashlib.sha256()
    for name in ("image_id", "split"):
        h.update("\x1f".join(_py(x) for x in f[name][...]).encode("utf-8"))
        h.update(b"\x1e")
    h.update(np.ascontiguousarray(f["label"][...], dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(f["status"][...], dtype=np.int8).tobytes())
    if "file_size" in f:
        h.update(np.ascontiguousarray(f["file_size"][...], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(f["file_hash"][...], dtype="S16").tobytes())
    return h.hexdigest()[:16]

"""Creating a cache (:func:`create`) and committing embedded batches to it
(:class:`CacheWriter`), crash-safely.

The file is created complete-but-empty under a temporary name
and renamed into place; every dataset is fully allocated at creation (its
NaN / 0 / empty contents are HDF5 fill values written chunk by chunk, so
creating a cache holds no N x D array in memory), so embedding a batch only
overwrites raw data at fixed offsets: no chunk index or other metadata
changes, and chunks are uncompressed, so rewriting a chunk that also holds
committed rows rewrites those rows' bytes unchanged.  A batch's rows
are written and synced *before* its ``status`` entries; ``status`` is the
commit point.  A process killed at any moment leaves rows either committed or
pending, and a rerun embeds the pending ones.  Everything written after
creation (counts, ``complete``, updated labels, splits, root, identities) is
raw data at fixed offsets too: the mutable attributes live in the two
``/state`` slots (:mod:`.attrs`), so finalising a cache is O(small) and in
place."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import CacheError
from ..schema import (
    CHUNK_ROWS,
    DEFAULT_FEATURE_DTYPE,
    FAILED,
    FEATURE_DTYPES,
    FLOAT16_MAX,
    IDENTITY_BYTES,
    OK,
    PENDING,
    REASON_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    SPLIT_BYTES,
    STATE_BYTES,
    STATE_KEYS,
)
from .attrs import _attr_value, _manifest_state, _py, _write_state
from .files import _open, disk_guard, fsync_path
from .identity import Identities, content_id


def _early_dcpl() -> h5py.h5p.PropDCID:
    """A dataset-creation property list that allocates all of a dataset's
    storage (and writes its fill value) when the dataset is created, so that
    later writes only overwrite raw data at fixed offsets: no chunk index or
    other metadata changes while a cache is being filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    return dcpl


def _splits_bytes(split) -> np.ndarray:
    out = np.asarray([str(s).encode("utf-8") for s in split], dtype=f"S{SPLIT_BYTES}")
    return out


def create(path: str | os.PathLike, manifest, provenance: dict[str, Any], *, batch_size: int,
           extra_attrs: dict[str, Any] | None = None, identities: Identities | None = None,
           state: dict[str, Any] | None = None, shown: str | os.PathLike | None = None) -> Path:
    """Write an empty cache for ``manifest`` (all rows pending) atomically.

    Memory does not depend on the number of images beyond the manifest
    itself: the NaN embeddings, zero status and empty reasons are HDF5 fill
    values, written chunk by chunk when the storage is allocated (at
    creation, see :func:`_early_dcpl`).  ``identities``: each image's
    content identity (unknown when not given); ``state``: extra mutable
    attributes (labels version, history); ``shown``: the name a full disk's
    message gives (the cache being made, when ``path`` is its temporary)."""
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, d = len(manifest), int(provenance["feature_dim"])
    provenance = {**provenance, "feature_dtype": str(provenance.get("feature_dtype", DEFAULT_FEATURE_DTYPE))}
    dtype = provenance["feature_dtype"]
    if dtype not in FEATURE_DTYPES:
        raise CacheError(f"--dtype '{dtype}' is not one of {', '.join(FEATURE_DTYPES)}")
    ident = identities if identities is not None else Identities.unknown(n)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    str_dt = h5py.string_dtype("utf-8")
    try:
        needed = n * (d * np.dtype(dtype).itemsize + REASON_BYTES + 64)  # features, reasons, ids and the rest
        with disk_guard(Path(shown) if shown is not None else path, "creating the cache", needed):
            with h5py.File(tmp, "w") as f:
                f.create_dataset("embeddings", shape=(n, d), dtype=np.dtype(dtype),
                                 chunks=(max(1, min(CHUNK_ROWS, n)), d), maxshape=(None, d),
                                 fillvalue=np.dtype(dtype).type(np.nan), dcpl=_early_dcpl())
                f["embeddings"].attrs["feature"] = provenance.get("feature", "")
                f.create_dataset("image_id", data=np.asarray(manifest.image_id, dtype=object), dtype=str_dt)
                f.create_dataset("path", data=np.asarray(manifest.path, dtype=object), dtype=str_dt)
                f.create_dataset("label", data=manifest.label.astype(np.float32))
                f.create_dataset("split", data=_splits_bytes(manifest.split))
                f.create_dataset("status", shape=(n,), dtype=np.int8, fillvalue=np.int8(PENDING),
                                 dcpl=_early_dcpl())
                f["status"].attrs["meaning"] = "0 pending, 1 embedded, 2 failed (reason in /error)"
                f.create_dataset("error", shape=(n,), dtype=f"S{REASON_BYTES}", fillvalue=np.bytes_(b""),
                                 dcpl=_early_dcpl())
                f.create_dataset("file_size", data=ident.size.astype(np.int64))
                f.create_dataset("file_mtime_ns", data=ident.mtime_ns.astype(np.int64))
                f.create_dataset("file_hash", data=ident.hash.astype("S16"))
                f["file_hash"].attrs["meaning"] = ("blake2b-64 (hex) of the file's size and its first and last "
                                                   f"{IDENTITY_BYTES // 1024} KiB; empty when unknown")
                f.create_dataset("state", shape=(2,), dtype=f"S{STATE_BYTES}", fillvalue=np.bytes_(b""),
                                 dcpl=_early_dcpl())
                attrs = {
                    "schema": SCHEMA,
                    "schema_version": SCHEMA_VERSION,
                    "iqa_cache_version": __version__,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "dataset": manifest.name,
                    "manifest_notes": list(manifest.notes) or "",
                    "n_images": n,
                    "batch_size": int(batch_size),
                    **provenance,
                    **(extra_attrs or {}),
                }
                for k, v in attrs.items():
                    if k not in STATE_KEYS:
                        f.attrs[k] = _attr_value(v)
                st = {"n_embedded": 0, "n_failed": 0, "complete": False, "labels_version": 1, "updating": False,
                      **_manifest_state(manifest), **{k: v for k, v in attrs.items() if k in STATE_KEYS},
                      **(state or {})}
                _write_state(f, tmp, st, sync=False)
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class CacheWriter:
    """Commits embedded batches to an existing cache, crash-safely.  Use
    inside a :class:`WriterLock`."""

    def __init__(self, path: str | os.PathLike, *, sync: bool = True):
        self.path = Path(path)
        self.sync = sync
        self.f = _open(self.path, "r+")
        self.status = self.f["status"][...]
        self.batch_size = int(self.f.attrs["batch_size"])
        self.n = len(self.status)
        self.float16 = self.f["embeddings"].dtype == np.float16

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def file_descriptors(self) -> tuple[int, ...]:
        """The OS file descriptor(s) of the open HDF5 file (for forked
        children to close)."""
        try:
            return (int(self.f.id.get_vfd_handle()),)
        except (TypeError, ValueError, AttributeError):  # a driver without a plain descriptor
            return ()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def iter_pending_batches(self) -> Iterator[np.ndarray]:
        """Row indices of the pending rows, ``batch_size`` at a time in file
        order, lazily.  A cache fills in whole fixed batches, so a resumed
        run feeds the encoder exactly the batches an uninterrupted run would;
        after an update only the changed rows are embedded."""
        b = self.batch_size
        rows = np.flatnonzero(self.status == PENDING)
        for start in range(0, len(rows), b):
            yield rows[start:start + b]

    def pending_batches(self) -> list[np.ndarray]:
        """:meth:`iter_pending_batches` as a list."""
        return list(self.iter_pending_batches())

    def n_pending_batches(self) -> int:
        return -(-self.n_pending() // self.batch_size)

    def n_pending_rows_in_batches(self) -> int:
        """Rows in the pending batches (what a run will process)."""
        return self.n_pending()

    def n_pending(self) -> int:
        return int((self.status == PENDING).sum())

    def commit(self, start: int | np.ndarray, emb: np.ndarray, status: np.ndarray, reasons: list[str]) -> None:
        """Write rows ``start .. start+len(status)`` (or the increasing row
        indices ``start``): embeddings (rows that failed hold NaN) and
        reasons first, synced; then their status."""
        if isinstance(start, np.ndarray):
            rows = start
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                sel: Any = slice(int(rows[0]), int(rows[-1]) + 1)
            else:
                sel = rows
        else:
            sel = slice(start, start + len(status))
        if self.float16:
            self._check_float16(start if isinstance(start, np.ndarray) else np.arange(start, start + len(emb)), emb)
        with disk_guard(self.path, "writing"):
            self.f["embeddings"][sel] = emb
            self.f["error"][sel] = np.asarray(
                [r.encode("utf-8")[:REASON_BYTES] for r in reasons], dtype=f"S{REASON_BYTES}")
            self._flush()
            self.f["status"][sel] = status
            self._flush()
        self.status[sel] = status

    def _check_float16(self, rows: np.ndarray, emb: np.ndarray) -> None:
        """A float16 cache cannot hold features beyond ±65504 (they would be
        stored as inf): refuse, naming the first such row."""
        big = np.abs(np.where(np.isfinite(emb), emb, 0.0)) > FLOAT16_MAX
        if big.any():
            r = int(np.flatnonzero(big.any(axis=1))[0])
            row = int(rows[r])
            raise CacheError(f"cache {self.path}: image {_py(self.f['image_id'][row])} (row {row}) has a feature "
                             f"of {float(np.abs(emb[r]).max()):.4g}, beyond float16's range (65504); store this "
                             "encoder's features with --dtype float32")

    def _flush(self) -> None:
        self.f.flush()
        if self.sync:
            fsync_path(self.path)

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> dict[str, int]:
        """When no row is pending: record counts, the content id and
        ``complete=True`` in place (one ``/state`` slot).  Returns the
        counts."""
        counts = {"n_embedded": int((self.status == OK).sum()), "n_failed": int((self.status == FAILED).sum()),
                  "n_pending": int((self.status == PENDING).sum())}
        with disk_guard(self.path, "finalising"):
            _write_state(self.f, self.path, {
                "n_embedded": counts["n_embedded"], "n_failed": counts["n_failed"],
                "complete": counts["n_pending"] == 0, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "content_id": content_id(self.f), **(extra_attrs or {})}, sync=True)
        self.close()
        return counts

"""The HDF5 embedding cache: schema, crash-safe writing, checked reading.

Layout (schema 2)::

    /embeddings    float32 (N, D)  chunked, resizable; NaN until written
    /image_id      utf-8 strings (N)
    /path          utf-8 strings (N)    relative to the dataset root
    /label         float32 (N)          NaN when unknown
    /split         fixed bytes (N)      train / val / test / ""
    /status        int8 (N)             0 pending, 1 embedded, 2 failed
    /error         fixed bytes (N)      the reason a failed image failed
    /file_size     int64 (N)            what identifies each image's content:
    /file_mtime_ns int64 (N)            size, mtime and a hash of its first
    /file_hash     fixed bytes (N)      and last 64 KiB (-1 / "" unknown)
    /state         2 fixed-size slots   JSON + CRC of what changes after
                                        creation (counts, complete, root,
                                        label range, labels version,
                                        content_id); the newest valid slot wins
    attrs         schema, dataset, model, weights, preprocessing, versions —
                  everything needed to refuse a mismatch

Schema 1 caches (no identities, no /state) are still read; ``iqa embed``
upgrades one on its first rerun (see :func:`plan_update`).

Crash safety: the file is created complete-but-empty under a temporary name
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
``/state`` slots, written alternately, each with its CRC, so finalising a
cache is O(small) and in place and a torn write leaves the previous slot.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import math
import os
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import CacheError
from ..schema import (  # noqa: F401
    CHUNK_ROWS,
    DATA_KEYS,
    FAILED,
    FEATURE_KEYS,
    HISTORY_LEN,
    IDENTITY_BYTES,
    OK,
    PENDING,
    READABLE_SCHEMAS,
    REASON_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    SPLIT_BYTES,
    STATE_BYTES,
    STATE_KEYS,
)

log = logging.getLogger(__name__)



def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def default_cache_path(cache_dir: str | os.PathLike, dataset: str, model: str, pretrained: str,
                       resize_mode: str, *, limit: int | None = None, precision: str = "fp32") -> Path:
    """``cache/<dataset>_<model>_<pretrained>_<resize>[_<precision>][_n<limit>].h5``;
    a checkpoint file is named by its stem."""
    if os.path.isfile(pretrained) or os.sep in pretrained:
        pretrained = Path(pretrained).stem
    if model.endswith(".json"):
        model = Path(model).stem
    parts = [dataset, model, pretrained, resize_mode]
    if precision != "fp32":
        parts.append(precision)
    if limit is not None:
        parts.append(f"n{limit}")
    return Path(cache_dir) / ("_".join(_slug(p) for p in parts) + ".h5")


def _py(v: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, bool, list)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()] if v.dtype.kind in "OSU" else v.tolist()
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _attr_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return np.asarray(v, dtype=np.float64)
        return np.asarray([str(x) for x in v], dtype=h5py.string_dtype("utf-8"))
    if v is None:
        return ""
    if isinstance(v, str):
        return str(v)  # str subclasses (torch.__version__) confuse h5py
    return v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        try:
            return len(a) == len(b) and bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=1e-9))
        except (TypeError, ValueError):
            return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


def differences(attrs: dict[str, Any], expected: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Human-readable 'key: cache has X, asked for Y' for every mismatch."""
    out = []
    for k in keys:
        if k not in expected:
            continue
        if k not in attrs:
            out.append(f"{k}: missing from the cache")
        elif not _same(attrs[k], expected[k]):
            a, b = attrs[k], expected[k]
            if k == "model_config_json":
                a, b = "(a config)" if a else "(built-in)", "(another config)" if b else "(built-in)"
            out.append(f"{k}: cache has {a!r}, asked for {b!r}")
    return out


def _open(path: Path, mode: str = "r") -> h5py.File:
    if not path.exists():
        raise CacheError(f"cache {path} does not exist; make it with `iqa embed --out {path}`")
    try:
        return h5py.File(path, mode)
    except OSError as e:
        msg = str(e)
        if "unable to lock" in msg.lower():
            raise CacheError(f"cache {path} is open for writing in another process (an `iqa embed` still "
                             "running?); wait for it to finish") from None
        if _has_hdf5_signature(path):  # an HDF5 file: a damaged (e.g. truncated) cache of ours
            raise CacheError(f"cache {path} is damaged ({msg.splitlines()[0]}); delete it and run `iqa embed` "
                             "again") from None
        # never advise deleting what may be someone's file: say what it is instead
        raise CacheError(f"{path} is not an HDF5 file, so not a cache made by `iqa embed` ({describe_file(path)}); "
                         "pass the cache file that `iqa embed --out` wrote") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _has_hdf5_signature(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (where h5py writes it)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def describe_file(path: Path) -> str:
    """A few words on what a file that is not a cache looks like."""
    try:
        if path.is_dir():
            return "it is a folder"
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"it cannot be read: {e.strerror or e}"
    if size == 0:
        return "it is empty (0 bytes)"
    kinds = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"PK\x03\x04": "a ZIP archive",
             b"%PDF": "a PDF document", b"GIF8": "a GIF image", b"BM": "a BMP image"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f"it looks like {kind}, {size:,} bytes"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of what was read
            return f"{size:,} bytes of other data"
    return f"it looks like text, {size:,} bytes"


def is_iqa_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file that says it is an iqa-cache (what
    this tool may replace or remove)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return _py(f.attrs.get("schema")) == SCHEMA
    except (OSError, ValueError):
        return False


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The cache's attributes as plain Python (with the mutable ones from
    ``/state``), after checking the schema."""
    path = Path(path)
    with _open(path) as f:
        attrs = {k: _py(v) for k, v in f.attrs.items()}
        for name in ("embeddings", "status", "label", "split", "image_id"):
            if name not in f:
                raise CacheError(f"cache {path} has no '{name}' dataset: not an iqa-cache file, or damaged")
        attrs.update(_read_state(f))
    _check_schema(path, attrs)
    return attrs


def _check_schema(path: Path, attrs: dict[str, Any]) -> None:
    if attrs.get("schema") != SCHEMA:
        raise CacheError(f"{path} is an HDF5 file but not an iqa-cache (attribute schema={attrs.get('schema')!r})")
    v = attrs.get("schema_version")
    if v not in READABLE_SCHEMAS:
        raise CacheError(f"cache {path} has schema version {v}, this iqa-cache reads versions "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}; run `iqa embed` again to rebuild it")


# ----------------------------------------------------------------- /state

def _read_state(f: h5py.File) -> dict[str, Any]:
    """The newest valid slot of ``/state`` ({} for a schema-1 cache)."""
    if "state" not in f:
        return {}
    best: dict[str, Any] = {}
    for raw in f["state"][...]:
        blob = bytes(raw).rstrip(b"\0")
        body, _, crc = blob.rpartition(b"\n")
        try:
            if not body or int(crc, 16) != zlib.crc32(body):
                continue
            st = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if st.get("seq", -1) > best.get("seq", -1):
            best = st
    best.pop("seq", None)
    return best


def _state_blob(state: dict[str, Any]) -> bytes:
    body = json.dumps(state, sort_keys=True, allow_nan=False, default=str).encode("utf-8")
    blob = body + b"\n" + f"{zlib.crc32(body):08x}".encode()
    if len(blob) > STATE_BYTES:
        raise CacheError(f"cache state does not fit in {STATE_BYTES} bytes")
    return blob


def _write_state(f: h5py.File, path: Path, updates: dict[str, Any], *, sync: bool = True) -> dict[str, Any]:
    """Write ``updates`` over the current state into the other slot (raw data
    at a fixed offset), flushed and synced.  Returns the new state."""
    cur = {}
    if "state" in f:
        seqs = []
        for raw in f["state"][...]:
            body, _, crc = bytes(raw).rstrip(b"\0").rpartition(b"\n")
            try:
                if body and int(crc, 16) == zlib.crc32(body):
                    seqs.append(json.loads(body)["seq"])
            except (ValueError, KeyError):
                pass
        cur = _read_state(f)
        seq = max(seqs, default=-1) + 1
    else:
        seq = 0
    new = {**cur, **{k: _py(v) for k, v in updates.items()}}
    hist = new.get("history") or []
    new["history"] = hist[-HISTORY_LEN:]
    blob = _state_blob({**new, "seq": seq})
    if "state" not in f:  # a cache written before /state existed (only reached in tests)
        for k, v in new.items():
            f.attrs[k] = _attr_value(v)
    else:
        f["state"][seq % 2] = np.bytes_(blob)
    f.flush()
    if sync:
        _fsync_path(path)
    return new


# ----------------------------------------------------- disk full, identities

def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "no space left on device" in str(e).lower() or "disk quota exceeded" in str(e).lower()


@contextlib.contextmanager
def disk_guard(path: Path, what: str):
    """Turn 'no space left on device' while ``what`` into one CacheError
    naming ``path``."""
    try:
        yield
    except OSError as e:
        if _is_disk_full(e):
            raise CacheError(f"no space left on the device while {what} {path}; free some space (or write to "
                             "another --out) and run the same command again") from None
        raise


def file_identity(path: Path, *, with_hash: bool = True) -> tuple[int, int, bytes]:
    """(size, mtime_ns, hash) of a file: the hash (blake2b-64, hex) covers its
    size and its first and last 64 KiB (the whole file when smaller).
    ``(-1, -1, b"")`` for a file that cannot be stat'ed; hash ``b""`` when
    not computed or unreadable."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return -1, -1, b""
    if not with_hash:
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


def _root_str(root: Path) -> str:
    return str(Path(root).resolve())


def _manifest_state(manifest) -> dict[str, Any]:
    return {"dataset_root": _root_str(manifest.root), "dataset_source": manifest.source,
            "label_name": manifest.label_name, "label_range": [float(x) for x in manifest.label_range],
            "split_source": manifest.split_source, "manifest_sha256": manifest.fingerprint()}


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
           state: dict[str, Any] | None = None) -> Path:
    """Write an empty cache for ``manifest`` (all rows pending) atomically.

    Memory does not depend on the number of images beyond the manifest
    itself: the NaN embeddings, zero status and empty reasons are HDF5 fill
    values, written chunk by chunk when the storage is allocated (at
    creation, see :func:`_early_dcpl`).  ``identities``: each image's
    content identity (unknown when not given); ``state``: extra mutable
    attributes (labels version, history)."""
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, d = len(manifest), int(provenance["feature_dim"])
    ident = identities if identities is not None else Identities.unknown(n)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    str_dt = h5py.string_dtype("utf-8")
    try:
        with disk_guard(path, "creating the cache"):
            with h5py.File(tmp, "w") as f:
                f.create_dataset("embeddings", shape=(n, d), dtype=np.float32,
                                 chunks=(max(1, min(CHUNK_ROWS, n)), d), maxshape=(None, d),
                                 fillvalue=np.float32(np.nan), dcpl=_early_dcpl())
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
            _fsync_path(tmp)
            os.replace(tmp, path)
            _fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def next_path(path: str | os.PathLike) -> Path:
    """Where a replacement of ``path`` is built (``--overwrite``, rows added
    or removed, an old schema upgraded) until it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.next")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a writer killed while creating or
    finalising ``path`` left beside it.  Call only while holding the
    :class:`WriterLock`.  Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if re.fullmatch(re.escape(f".{path.name}.") + r"(creating|final)-\d+", p.name):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted writer: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_with(new: Path, path: Path) -> None:
    """Move the complete cache ``new`` over ``path`` atomically."""
    os.replace(new, path)
    _fsync_path(path.parent)


class WriterLock:
    """An exclusive, advisory lock next to the cache (``<cache>.lock``), held
    by the one process allowed to write it.  The kernel releases it when the
    process dies, however it dies."""

    def __init__(self, path: Path):
        self.lock_path = path.with_name(path.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> "WriterLock":
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                try:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                except OSError:
                    holder = "?"
                os.close(fd)
                raise CacheError(f"cache {self.lock_path.with_suffix('')} is being written by another "
                                 f"`iqa embed` (pid {holder or '?'}); wait for it to finish, or write to "
                                 "another --out") from None
            # the lock file may have been replaced between open and flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self.fd = fd
                return self
            os.close(fd)
        raise CacheError(f"could not lock {self.lock_path}")

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


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
        with disk_guard(self.path, "writing"):
            self.f["embeddings"][sel] = emb
            self.f["error"][sel] = np.asarray(
                [r.encode("utf-8")[:REASON_BYTES] for r in reasons], dtype=f"S{REASON_BYTES}")
            self._flush()
            self.f["status"][sel] = status
            self._flush()
        self.status[sel] = status

    def _flush(self) -> None:
        self.f.flush()
        if self.sync:
            _fsync_path(self.path)

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


# ------------------------------------------------------------------ updates

@dataclass
class UpdatePlan:
    """What a rerun of ``iqa embed`` on an existing cache has to do, per row
    of the new manifest."""

    old_rows: np.ndarray  # int64: the cache row holding this image, -1 when new
    pending: np.ndarray  # bool: to be embedded
    identities: Identities  # of the current files
    n_changed: int = 0  # embedded or failed images whose file changed
    n_added: int = 0
    n_removed: int = 0
    n_relabelled: int = 0  # label or split changed
    n_retried: int = 0  # failed, unchanged, retried on request
    n_unverified: int = 0  # rows of an old cache whose content is trusted
    root_changed: bool = False
    range_changed: bool = False
    old_schema: bool = False
    structural: bool = False  # rows added/removed/reordered/moved, or an old schema: rebuild
    notes: list[str] = field(default_factory=list)

    @property
    def n_pending(self) -> int:
        return int(self.pending.sum())

    @property
    def labels_changed(self) -> bool:
        return bool(self.n_relabelled or self.range_changed)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.structural or self.n_pending or self.labels_changed or self.root_changed
                    or self._identities_moved)

    _identities_moved: bool = False

    def describe(self) -> list[str]:
        """One line per kind of change, for the user."""
        out = []
        if self.old_schema:
            out.append(f"upgraded from schema 1: {self.n_unverified} cached images' files are trusted to be what "
                       "was embedded and their identities recorded (--overwrite re-embeds everything)")
        if self.root_changed:
            out.append("dataset root changed: every image's content was checked")
        if self.n_changed:
            out.append(f"{self.n_changed} image{'s' if self.n_changed != 1 else ''} changed, re-embedding them")
        if self.n_added:
            out.append(f"{self.n_added} image{'s' if self.n_added != 1 else ''} added, embedding them")
        if self.n_removed:
            out.append(f"{self.n_removed} image{'s' if self.n_removed != 1 else ''} removed from the cache")
        if self.n_retried:
            out.append(f"retrying {self.n_retried} failed image{'s' if self.n_retried != 1 else ''}")
        if self.n_relabelled:
            out.append(f"labels or splits of {self.n_relabelled} image{'s' if self.n_relabelled != 1 else ''} "
                       "updated (no re-embedding)")
        if self.range_changed:
            out.append("label range updated")
        return out + self.notes


def _labels_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return ~((a == b) | (np.isnan(a) & np.isnan(b)))


def plan_update(path: str | os.PathLike, manifest, *, retry_failed: bool = False) -> UpdatePlan:
    """Compare a cache with ``manifest`` and the files under its root.

    An image's content is unchanged when its size and mtime are those
    recorded (same root and path), or else when its size and hash are; rows
    are matched by image id.  Changed images become pending whatever their
    status; failed unchanged ones only with ``retry_failed``.  A schema-1
    cache (no identities) is trusted for images whose root and path did not
    change, and its identities are recorded by the rebuild that upgrades
    it."""
    path = Path(path)
    attrs = read_attrs(path)
    with _open(path) as f:
        old_ids = [_py(x) for x in f["image_id"][...]]
        old_paths = np.asarray([_py(x) for x in f["path"][...]], dtype=object)
        old_status = f["status"][...]
        old_label = f["label"][...]
        old_split = np.asarray([_py(x) for x in f["split"][...]], dtype=object)
        has_ident = "file_size" in f
        if has_ident:
            old_size, old_mtime, old_hash = f["file_size"][...], f["file_mtime_ns"][...], f["file_hash"][...]
    n = len(manifest)
    index = {k: i for i, k in enumerate(old_ids)}
    old_rows = np.asarray([index.get(str(k), -1) for k in manifest.image_id], dtype=np.int64)
    found = old_rows >= 0
    j = np.where(found, old_rows, 0)
    same_path = found & (old_paths[j] == np.asarray(manifest.path, dtype=object)) if len(old_paths) else found
    old_root = str(attrs.get("dataset_root", ""))
    root_changed = _root_str(manifest.root) != (_root_str(Path(old_root)) if old_root else "")
    plan = UpdatePlan(old_rows=old_rows, pending=np.zeros(n, bool), identities=Identities.unknown(n),
                      root_changed=root_changed, old_schema=not has_ident)
    plan.n_added = int((~found).sum())
    plan.n_removed = len(old_ids) - int(found.sum())
    # current identities: stat everything, hash what stat cannot vouch for
    reader = getattr(manifest, "reader", None)  # webdataset members: identities from the shards
    cur = Identities.of(manifest.root, manifest.path, with_hash=False, reader=reader)
    if has_ident:
        quick = found & same_path & (not root_changed) & (cur.size == old_size[j]) & (cur.mtime_ns == old_mtime[j]) \
            & (cur.size >= 0) & (old_hash[j] != b"")
    else:
        quick = np.zeros(n, bool)
    need = np.flatnonzero(~quick & (cur.size >= 0))
    if len(need):
        h = Identities.of(manifest.root, manifest.path[need], reader=reader)
        cur.size[need], cur.mtime_ns[need], cur.hash[need] = h.size, h.mtime_ns, h.hash
    if has_ident:
        cur.hash[quick] = old_hash[j][quick]
        unchanged = quick | (found & (cur.size >= 0) & (cur.size == old_size[j]) & (cur.hash != b"")
                             & (cur.hash == old_hash[j]))
        # a file that was missing and still is: unchanged too
        unchanged |= found & (cur.size < 0) & (old_size[j] < 0)
        plan._identities_moved = bool((found & ((cur.size != old_size[j]) | (cur.mtime_ns != old_mtime[j])
                                                | (cur.hash != old_hash[j]))).any())
    else:
        trusted = found & same_path & (not root_changed)
        unchanged = trusted
        plan.n_unverified = int((trusted & (old_status[j] == OK)).sum())
    st = np.where(found, old_status[j], PENDING)
    changed = found & ~unchanged & (st != PENDING)
    retried = found & unchanged & (st == FAILED) & retry_failed
    plan.pending = ~found | (st == PENDING) | changed | retried
    plan.n_changed = int(changed.sum())
    plan.n_retried = int(retried.sum())
    plan.identities = cur
    relabel = found & (_labels_differ(old_label[j], manifest.label)
                       | (old_split[j] != np.asarray(manifest.split, dtype=object)))
    plan.n_relabelled = int(relabel.sum())
    old_range = attrs.get("label_range")
    plan.range_changed = old_range is None or not _same(list(old_range), [float(x) for x in manifest.label_range])
    plan.structural = (not has_ident or len(old_ids) != n or not bool((old_rows == np.arange(n)).all())
                       or not bool(same_path.all()))
    if plan.structural and root_changed is False and not plan.n_added and not plan.n_removed and has_ident \
            and bool(found.all()) and len(old_ids) == n and not bool((old_rows == np.arange(n)).all()):
        plan.notes.append("images reordered")
    return plan


def apply_in_place(path: str | os.PathLike, manifest, plan: UpdatePlan, *, sync: bool = True,
                   history: str = "") -> dict[str, Any]:
    """Apply a non-structural plan to the cache: labels, splits, root and
    identities rewritten at their fixed offsets, changed rows marked
    pending.  While it runs the state says ``updating`` (readers refuse the
    cache), so an interruption never leaves mixed labels that pass as
    complete.  Returns the new state."""
    path = Path(path)
    if plan.structural:
        raise ValueError("a structural plan needs rebuild()")
    with disk_guard(path, "updating"), _open(path, "r+") as f:
        state = _read_state(f)
        _write_state(f, path, {"updating": True, "complete": False}, sync=sync)
        if plan.n_relabelled:
            f["label"][...] = manifest.label.astype(f["label"].dtype)
            f["split"][...] = _splits_bytes(manifest.split)
        f["file_size"][...] = plan.identities.size
        f["file_mtime_ns"][...] = plan.identities.mtime_ns
        f["file_hash"][...] = plan.identities.hash
        rows = np.flatnonzero(plan.pending & (f["status"][...] != PENDING))
        if len(rows):
            f["error"][rows] = np.zeros(len(rows), f"S{REASON_BYTES}")
            f.flush()
            f["status"][rows] = np.full(len(rows), PENDING, np.int8)
        f.flush()
        if sync:
            _fsync_path(path)
        version = int(state.get("labels_version", 1)) + (1 if plan.labels_changed else 0)
        hist = list(state.get("history") or [])
        if history:
            hist.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {history}")
        return _write_state(f, path, {**_manifest_state(manifest), "labels_version": version, "updating": False,
                                      "history": hist}, sync=sync)


def rebuild(old: str | os.PathLike, new: str | os.PathLike, manifest, plan: UpdatePlan,
            provenance: dict[str, Any], *, history: str = "") -> Path:
    """Create the cache ``new`` for ``manifest``, holding the rows of ``old``
    that ``plan`` keeps (features, status, reasons), the rest pending.
    ``old`` is only read."""
    old, new = Path(old), Path(new)
    attrs = read_attrs(old)
    version = int(attrs.get("labels_version", 1)) + (1 if plan.labels_changed else 0)
    hist = list(attrs.get("history") or [])
    if history:
        hist.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {history}")
    create(new, manifest, provenance, batch_size=int(attrs.get("batch_size", 32)), identities=plan.identities,
           state={"labels_version": version, "history": hist})
    try:
        _copy_rows(old, new, plan)
    except BaseException:
        new.unlink(missing_ok=True)  # ours, and not worth resuming: the next run copies again
        raise
    return new


def _copy_rows(old: Path, new: Path, plan: UpdatePlan) -> None:
    keep = np.flatnonzero(~plan.pending)
    if not len(keep):
        return
    with disk_guard(new, "writing"), _open(old) as src, _open(new, "r+") as dst:
        step = 4 * CHUNK_ROWS
        for s in range(0, len(keep), step):
            rows = keep[s:s + step]
            src_rows = plan.old_rows[rows]
            order = np.argsort(src_rows)
            uniq = src_rows[order]
            emb = np.empty((len(rows), dst["embeddings"].shape[1]), np.float32)
            emb[order] = src["embeddings"][uniq]
            err = np.empty(len(rows), f"S{REASON_BYTES}")
            err[order] = src["error"][uniq]
            stat = np.empty(len(rows), np.int8)
            stat[order] = src["status"][uniq]
            dst["embeddings"][rows] = emb
            dst["error"][rows] = err
            dst.flush()
            dst["status"][rows] = stat
        dst.flush()
    _fsync_path(new)


@dataclass(frozen=True)
class CacheData:
    """The embedded rows of a cache, in file order, ready for stage two."""

    path: Path
    attrs: dict[str, Any]
    features: np.ndarray  # float32 (n, D)
    label: np.ndarray  # float32 (n,)
    split: np.ndarray  # str (n,)
    image_id: np.ndarray  # str (n,)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    @property
    def label_range(self) -> tuple[float, float]:
        lo, hi = self.attrs.get("label_range", (0.0, 100.0))
        return float(lo), float(hi)


def load(path: str | os.PathLike, *, require_complete: bool = True, expect: dict[str, Any] | None = None,
         check_finite: bool = True) -> CacheData:
    """Read a cache for training or reporting.  Refuses an incomplete cache
    (with the command that completes it), a schema it does not know,
    attributes that differ from ``expect``, and non-finite embeddings."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs.get("updating"):
        raise CacheError(f"cache {path} was being updated when `iqa embed` stopped; run the same `iqa embed ... "
                         f"--out {path}` command again to finish the update")
    with _open(path) as f:
        status = f["status"][...]
        if require_complete and (status == PENDING).any():
            n_p = int((status == PENDING).sum())
            raise CacheError(
                f"cache {path} is incomplete ({n_p} of {len(status)} images not embedded yet: `iqa embed` was "
                f"interrupted); complete it by running the same `iqa embed ... --out {path}` command again")
        ok = np.flatnonzero(status == OK)
        emb = f["embeddings"][...] if len(ok) == len(status) else f["embeddings"][...][ok]
        label = f["label"][...][ok]
        split = np.asarray([_py(x) for x in f["split"][...][ok]], dtype=object)
        ids = np.asarray([_py(x) for x in f["image_id"][...][ok]], dtype=object)
    if expect:
        diff = differences(attrs, expect, tuple(expect))
        if diff:
            raise CacheError(f"cache {path} does not match what was asked: " + "; ".join(diff))
    if check_finite and len(emb):
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CacheError(f"cache {path}: {int(bad.sum())} embedding(s) contain NaN or Inf (first: image "
                             f"{ids[i]}); the cache is damaged, rebuild it with `iqa embed`")
    if len(ok) == 0:
        raise CacheError(f"cache {path} holds no embedded image (all {len(status)} failed)")
    return CacheData(path=path, attrs=attrs, features=np.ascontiguousarray(emb, dtype=np.float32),
                     label=label.astype(np.float32), split=split, image_id=ids)


def failures(path: str | os.PathLike, limit: int | None = None) -> list[tuple[str, str]]:
    """(image_id, reason) for the images that could not be embedded, in
    file order; the first ``limit`` of them when given.  Reads only the
    failed rows."""
    path = Path(path)
    with _open(path) as f:
        status = f["status"][...]
        idx = np.flatnonzero(status == FAILED)
        if limit is not None:
            idx = idx[:limit]
        if len(idx) == 0:
            return []
        ids = f["image_id"][idx]
        err = f["error"][idx]
    return [(_py(i), _py(e)) for i, e in zip(ids, err)]


def iter_summary(attrs: dict[str, Any]) -> Iterator[str]:
    """Lines describing a cache, for `iqa info`-style output."""
    yield f"dataset      {attrs.get('dataset')} ({attrs.get('n_images')} images, root {attrs.get('dataset_root')})"
    yield f"labels       {attrs.get('label_name')} in {attrs.get('label_range')}; split: {attrs.get('split_source')}"
    yield (f"encoder      {attrs.get('model')} / {attrs.get('pretrained')} ({attrs.get('pretrained_kind')}), "
           f"{attrs.get('precision')}")
    yield (f"preprocess   {attrs.get('image_size')}px {attrs.get('resize_mode')} {attrs.get('interpolation')}, "
           f"mean {attrs.get('mean')}, std {attrs.get('std')}")
    yield f"feature      {attrs.get('feature')} ({attrs.get('feature_dim')}-d)"
    yield (f"status       {attrs.get('n_embedded')} embedded, {attrs.get('n_failed')} failed, "
           f"complete={attrs.get('complete')}")
    if attrs.get("content_id"):
        yield f"content      {attrs.get('content_id')} (labels version {attrs.get('labels_version')})"

"""The HDF5 embedding cache: schema, crash-safe writing, checked reading.

Layout (schema 1)::

    /embeddings   float32 (N, D)  chunked, resizable; NaN until written
    /image_id     utf-8 strings (N)
    /path         utf-8 strings (N)    relative to the dataset root
    /label        float32 (N)          NaN when unknown
    /split        utf-8 strings (N)    train / val / test / ""
    /status       int8 (N)             0 pending, 1 embedded, 2 failed
    /error        fixed bytes (N)      the reason a failed image failed
    attrs         schema, dataset, model, weights, preprocessing, versions,
                  counts, complete — everything needed to refuse a mismatch

Crash safety: the file is created complete-but-empty under a temporary name
and renamed into place; every dataset is fully allocated at creation (its
NaN / 0 / empty contents are HDF5 fill values written chunk by chunk, so
creating a cache holds no N x D array in memory), so embedding a batch only
overwrites raw data at fixed offsets: no chunk index or other metadata
changes, and chunks are uncompressed, so rewriting a chunk that also holds
committed rows rewrites those rows' bytes unchanged.  A batch's rows
are written and synced *before* its ``status`` entries; ``status`` is the
commit point.  A process killed at any moment leaves rows either committed or
pending, and a rerun embeds the pending ones.  The final counts are written
into a copy that replaces the file atomically.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .errors import CacheError

log = logging.getLogger(__name__)

SCHEMA = "iqa-cache"
SCHEMA_VERSION = 1
PENDING, OK, FAILED = 0, 1, 2
REASON_BYTES = 240
CHUNK_ROWS = 256

# Attributes that define what the features *are*: two caches agreeing on all
# of them hold interchangeable features.
FEATURE_KEYS = ("model", "model_config_json", "pretrained_kind", "pretrained_sha256", "init_seed", "precision",
                "feature", "feature_dim", "image_size", "resize_mode", "interpolation", "mean", "std",
                "exif_transpose")
# ... and these define *which* images, labels and splits it holds.
DATA_KEYS = ("dataset", "manifest_sha256", "n_images")


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
        raise CacheError(f"cache {path} is damaged or not an HDF5 file ({msg.splitlines()[0]}); delete it and "
                         "run `iqa embed` again") from None


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The cache's attributes as plain Python, after checking the schema."""
    path = Path(path)
    with _open(path) as f:
        attrs = {k: _py(v) for k, v in f.attrs.items()}
        for name in ("embeddings", "status", "label", "split", "image_id"):
            if name not in f:
                raise CacheError(f"cache {path} has no '{name}' dataset: not an iqa-cache file, or damaged")
    _check_schema(path, attrs)
    return attrs


def _check_schema(path: Path, attrs: dict[str, Any]) -> None:
    if attrs.get("schema") != SCHEMA:
        raise CacheError(f"{path} is an HDF5 file but not an iqa-cache (attribute schema={attrs.get('schema')!r})")
    v = attrs.get("schema_version")
    if v != SCHEMA_VERSION:
        raise CacheError(f"cache {path} has schema version {v}, this iqa-cache reads version {SCHEMA_VERSION}; "
                         "run `iqa embed` again to rebuild it")


def _early_dcpl() -> h5py.h5p.PropDCID:
    """A dataset-creation property list that allocates all of a dataset's
    storage (and writes its fill value) when the dataset is created, so that
    later writes only overwrite raw data at fixed offsets: no chunk index or
    other metadata changes while a cache is being filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    return dcpl


def create(path: str | os.PathLike, manifest, provenance: dict[str, Any], *, batch_size: int,
           extra_attrs: dict[str, Any] | None = None) -> Path:
    """Write an empty cache for ``manifest`` (all rows pending) atomically.

    Memory does not depend on the number of images beyond the manifest
    itself: the NaN embeddings, zero status and empty reasons are HDF5 fill
    values, written chunk by chunk when the storage is allocated (at
    creation, see :func:`_early_dcpl`)."""
    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, d = len(manifest), int(provenance["feature_dim"])
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    str_dt = h5py.string_dtype("utf-8")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("embeddings", shape=(n, d), dtype=np.float32, chunks=(max(1, min(CHUNK_ROWS, n)), d),
                             maxshape=(None, d), fillvalue=np.float32(np.nan), dcpl=_early_dcpl())
            f["embeddings"].attrs["feature"] = provenance.get("feature", "")
            f.create_dataset("image_id", data=np.asarray(manifest.image_id, dtype=object), dtype=str_dt)
            f.create_dataset("path", data=np.asarray(manifest.path, dtype=object), dtype=str_dt)
            f.create_dataset("label", data=manifest.label.astype(np.float32))
            f.create_dataset("split", data=np.asarray(manifest.split, dtype=object), dtype=str_dt)
            f.create_dataset("status", shape=(n,), dtype=np.int8, fillvalue=np.int8(PENDING), dcpl=_early_dcpl())
            f["status"].attrs["meaning"] = "0 pending, 1 embedded, 2 failed (reason in /error)"
            f.create_dataset("error", shape=(n,), dtype=f"S{REASON_BYTES}", fillvalue=np.bytes_(b""),
                             dcpl=_early_dcpl())
            attrs = {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "iqa_cache_version": __version__,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "dataset": manifest.name,
                "dataset_root": str(manifest.root),
                "dataset_source": manifest.source,
                "label_name": manifest.label_name,
                "label_range": list(manifest.label_range),
                "split_source": manifest.split_source,
                "manifest_notes": list(manifest.notes) or "",
                "manifest_sha256": manifest.fingerprint(),
                "n_images": n,
                "n_embedded": 0,
                "n_failed": 0,
                "complete": False,
                "batch_size": int(batch_size),
                **provenance,
                **(extra_attrs or {}),
            }
            for k, v in attrs.items():
                f.attrs[k] = _attr_value(v)
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
        """Row indices of every batch that has a pending row, lazily.
        Batches are fixed slices of ``batch_size`` rows, so a resumed run
        feeds the encoder exactly the batches an uninterrupted run would."""
        b = self.batch_size
        for start in range(0, self.n, b):
            stop = min(start + b, self.n)
            if (self.status[start:stop] == PENDING).any():
                yield np.arange(start, stop)

    def pending_batches(self) -> list[np.ndarray]:
        """:meth:`iter_pending_batches` as a list."""
        return list(self.iter_pending_batches())

    def n_pending_batches(self) -> int:
        b = self.batch_size
        return sum(1 for start in range(0, self.n, b) if (self.status[start:start + b] == PENDING).any())

    def n_pending_rows_in_batches(self) -> int:
        """Rows in the pending batches (what a run will process)."""
        b = self.batch_size
        return sum(min(b, self.n - start) for start in range(0, self.n, b)
                   if (self.status[start:start + b] == PENDING).any())

    def n_pending(self) -> int:
        return int((self.status == PENDING).sum())

    def commit(self, start: int, emb: np.ndarray, status: np.ndarray, reasons: list[str]) -> None:
        """Write rows ``start .. start+len(status)``: embeddings (rows that
        failed hold NaN) and reasons first, synced; then their status."""
        stop = start + len(status)
        self.f["embeddings"][start:stop] = emb
        self.f["error"][start:stop] = np.asarray(
            [r.encode("utf-8")[:REASON_BYTES] for r in reasons], dtype=f"S{REASON_BYTES}")
        self._flush()
        self.f["status"][start:stop] = status
        self._flush()
        self.status[start:stop] = status

    def _flush(self) -> None:
        self.f.flush()
        if self.sync:
            _fsync_path(self.path)

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> dict[str, int]:
        """When no row is pending: record counts and ``complete=True`` in a
        copy that replaces the file atomically.  Returns the counts."""
        counts = {"n_embedded": int((self.status == OK).sum()), "n_failed": int((self.status == FAILED).sum()),
                  "n_pending": int((self.status == PENDING).sum())}
        self.close()
        tmp = self.path.with_name(f".{self.path.name}.final-{os.getpid()}")
        try:
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as f:
                f.attrs["n_embedded"] = counts["n_embedded"]
                f.attrs["n_failed"] = counts["n_failed"]
                f.attrs["complete"] = counts["n_pending"] == 0
                f.attrs["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                for k, v in (extra_attrs or {}).items():
                    f.attrs[k] = _attr_value(v)
            _fsync_path(tmp)
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return counts


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

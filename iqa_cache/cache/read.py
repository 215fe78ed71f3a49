"""Reading a cache: its attributes, checked against the schema
(:func:`read_attrs`, :func:`is_iqa_cache`), the embedded rows for stage two
(:class:`CacheData`, :func:`load`), the images that failed, and a summary."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import CacheError
from ..schema import DEFAULT_FEATURE_DTYPE, FAILED, OK, PENDING, READABLE_SCHEMAS, SCHEMA
from .attrs import _py, _read_state, differences
from .files import _open


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
    attrs.setdefault("feature_dtype", DEFAULT_FEATURE_DTYPE)  # caches from before --dtype: float32
    return attrs


def _check_schema(path: Path, attrs: dict[str, Any]) -> None:
    if attrs.get("schema") != SCHEMA:
        raise CacheError(f"{path} is an HDF5 file but not an iqa-cache (attribute schema={attrs.get('schema')!r})")
    v = attrs.get("schema_version")
    if v not in READABLE_SCHEMAS:
        raise CacheError(f"cache {path} has schema version {v}, this iqa-cache reads versions "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}; run `iqa embed` again to rebuild it")


@dataclass(frozen=True)
class CacheData:
    """The embedded rows of a cache, in file order, ready for stage two.
    ``features`` is None when loaded with ``features=False`` (training then
    streams them from the file: :class:`~iqa_cache.cache.stream.RowReader`);
    ``rows`` are the entries' rows in the file."""

    path: Path
    attrs: dict[str, Any]
    features: np.ndarray | None  # float32 (n, D)
    label: np.ndarray  # float32 (n,)
    split: np.ndarray  # str (n,)
    image_id: np.ndarray  # str (n,)
    rows: np.ndarray | None = None  # int64 (n,)
    dim: int | None = None  # the features' width, when they are not loaded

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1]) if self.features is not None else int(self.dim or 0)

    @property
    def streamed(self) -> bool:
        """Whether the features stay in the file (``load(..., features=False)``)."""
        return self.features is None

    @property
    def feature_dtype(self) -> str:
        """How the cache stores its features (``features`` is float32 either way)."""
        return str(self.attrs.get("feature_dtype", DEFAULT_FEATURE_DTYPE))

    @property
    def label_range(self) -> tuple[float, float]:
        lo, hi = self.attrs.get("label_range", (0.0, 100.0))
        return float(lo), float(hi)


def load(path: str | os.PathLike, *, require_complete: bool = True, expect: dict[str, Any] | None = None,
         check_finite: bool = True, features: bool = True) -> CacheData:
    """Read a cache for training or reporting.  Refuses an incomplete cache
    (with the command that completes it), a schema it does not know,
    attributes that differ from ``expect``, and non-finite embeddings.
    ``features=False`` leaves the features in the file (for caches larger
    than memory; they are checked as they are read)."""
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
        emb = read_rows_float32(f["embeddings"], ok) if features else None
        dim = int(f["embeddings"].shape[1])
        label = f["label"][...][ok]
        split = np.asarray([_py(x) for x in f["split"][...][ok]], dtype=object)
        ids = np.asarray([_py(x) for x in f["image_id"][...][ok]], dtype=object)
    if expect:
        diff = differences(attrs, expect, tuple(expect))
        if diff:
            raise CacheError(f"cache {path} does not match what was asked: " + "; ".join(diff))
    if check_finite and emb is not None and len(emb):
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CacheError(f"cache {path}: {int(bad.sum())} embedding(s) contain NaN or Inf (first: image "
                             f"{ids[i]}); the cache is damaged, rebuild it with `iqa embed`")
    if len(ok) == 0:
        raise CacheError(f"cache {path} holds no embedded image (all {len(status)} failed)")
    return CacheData(path=path, attrs=attrs, features=emb, label=label.astype(np.float32), split=split,
                     image_id=ids, rows=ok.astype(np.int64), dim=dim)


def read_rows_float32(dset, rows: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """The rows ``rows`` (increasing) of a features dataset as one float32
    array, read a block of rows at a time: a float16 cache needs no second,
    full-size copy next to its float32 result."""
    out = np.empty((len(rows), dset.shape[1]), dtype=np.float32)
    if len(rows) == 0:
        return out
    if dset.dtype == np.float32 and len(rows) == dset.shape[0]:
        dset.read_direct(out)
        return out
    done = 0
    for a in range(0, dset.shape[0], block):
        b = min(a + block, dset.shape[0])
        lo, hi = np.searchsorted(rows, [a, b])
        if hi > lo:
            out[done:done + hi - lo] = dset[a:b][rows[lo:hi] - a]
            done += hi - lo
    return out


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

"""Bring your own features: a cache from embeddings made elsewhere.

``iqa import`` reads a feature matrix (``.npy``, ``.npz``, ``.h5``/``.hdf5``
or ``.parquet``) and a labels CSV, matches their rows by id, and writes a
normal iqa-cache file through :mod:`iqa_cache.cache`'s writer API, so that
``train-head``, ``ablate`` and ``report`` use it unchanged.

The cache says where its features came from (``feature_source`` =
``imported``; the file's absolute path, SHA-256, format, key, shape and dtype;
the labels CSV and its SHA-256) and records no encoder or image
preprocessing, because there was none here: ``predict`` on a run trained on
it refuses in one line, since scoring new inputs needs the encoder that made
the features.

Rows: ``.npz``/``.h5`` can carry an id array and ``.parquet`` an id column;
then every CSV id must have exactly one feature row and every feature row a
CSV id (cache rows follow the CSV order).  Without ids (always for ``.npy``),
feature row i is CSV row i and the counts must agree.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import cache as cache_mod
from .datasets import (
    Manifest,
    _apply_range,
    _check_duplicates,
    _parse_labels,
    _parse_splits,
    _pick_column,
    _read_csv,
    seeded_split,
)
from .errors import CacheError, DatasetError
from .schema import IMPORTED, item_noun  # noqa: F401 (re-exported)
from .settings import ImportConfig  # noqa: F401  (re-exported: its old place)

log = logging.getLogger(__name__)

FORMATS = {".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".parquet": "parquet"}
FEATURE_KEYS = ("features", "embeddings", "embedding", "feature", "X", "x")
ID_KEYS = ("ids", "id", "image_id", "item_id", "image", "name")
CSV_ID_COLUMNS = ("id", "image_id", "item_id", "image", "image_name", "filename", "file", "path", "name")
@dataclass
class ImportSummary:
    path: Path
    n_items: int
    feature_dim: int
    format: str
    split_counts: dict[str, int]
    id_matching: str


# ------------------------------------------------------------------ readers

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pick_key(keys: list[str], wanted: str | None, candidates: tuple[str, ...], path: Path, what: str,
              option: str) -> str | None:
    if wanted is not None:
        if wanted not in keys:
            raise DatasetError(f"{path} has no {what} '{wanted}' ({option}); it holds: {', '.join(keys) or 'nothing'}")
        return wanted
    for c in candidates:
        if c in keys:
            return c
    return None


def _as_ids(values: Any, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DatasetError(f"{path}: ids '{key}' must be one id per row (1-D), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        raise DatasetError(f"{path}: ids '{key}' are floating-point numbers; store them as strings or integers")
    return np.asarray([x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.tolist()], dtype=object)


def _array_reader(names: list[str], get, path: Path, cfg: ImportConfig) -> tuple[Any, np.ndarray | None, str, str]:
    """(features, ids or None, features key, ids key) from an npz/h5-like
    container: ``names`` its arrays, ``get(name)`` reads one."""
    fkey = _pick_key(names, cfg.features_key, FEATURE_KEYS, path, "array", "--features-key")
    if fkey is None:
        two_d = [n for n in names if len(get(n, shape_only=True)) == 2]
        if len(two_d) != 1:
            raise DatasetError(f"{path}: cannot tell which array holds the features (2-D arrays: "
                               f"{', '.join(two_d) or 'none'}); name it with --features-key")
        fkey = two_d[0]
    ikey = _pick_key([n for n in names if n != fkey], cfg.ids_key, ID_KEYS, path, "array", "--ids-key")
    ids = _as_ids(get(ikey), path, ikey) if ikey is not None else None
    return get(fkey), ids, fkey, ikey or ""


def read_features(path: Path, cfg: ImportConfig) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The feature matrix as float32 (n, d), the ids or None, and what to
    record about the source.  One-line DatasetErrors for every problem."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"--features {path}: unknown format '{path.suffix}'; use one of "
                           f"{', '.join(sorted(FORMATS))}")
    if not path.is_file():
        raise DatasetError(f"--features {path} does not exist")
    fkey = ikey = ""
    ids = None
    try:
        if fmt == "npy":
            if cfg.features_key or cfg.ids_key:
                raise DatasetError(f"{path}: a .npy file holds one array; --features-key/--ids-key need .npz, "
                                   ".h5 or .parquet")
            raw = np.load(path, allow_pickle=False)
        elif fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)

                def get(n, shape_only=False):
                    return z[n].shape if shape_only else z[n]

                raw, ids, fkey, ikey = _array_reader(names, get, path, cfg)
        elif fmt == "hdf5":
            import h5py

            with h5py.File(path, "r") as f:
                names = []
                f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)

                def get(n, shape_only=False):
                    return f[n].shape if shape_only else f[n][...]

                raw, ids, fkey, ikey = _array_reader(names, get, path, cfg)
        else:
            raw, ids, fkey, ikey = _read_parquet(path, cfg)
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"--features {path} cannot be read as {fmt} ({str(e).splitlines()[0][:200]})") from None
    raw = np.asarray(raw)
    where = f"{path}" + (f" ['{fkey}']" if fkey else "")
    if raw.dtype.kind not in "fiub":
        raise DatasetError(f"{where}: features must be numbers, got dtype {raw.dtype}")
    if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
        raise DatasetError(f"{where}: features must be a 2-D array (rows × dimensions) with at least one of each, "
                           f"got shape {raw.shape}")
    if ids is not None and len(ids) != raw.shape[0]:
        raise DatasetError(f"{path}: {len(ids)} ids ('{ikey}') for {raw.shape[0]} feature rows ('{fkey}')")
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf, refused just below
        x = raw.astype(np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = f"row {i}" + (f" (id {ids[i]})" if ids is not None else "")
        raise DatasetError(f"{where}: {int(bad.sum())} feature row(s) contain NaN or Inf (or values beyond "
                           f"float32), first: {row}")
    info = {"imported_path": str(path.resolve()), "imported_sha256": _sha256(path), "imported_format": fmt,
            "imported_features_key": fkey, "imported_ids_key": ikey, "imported_shape": list(raw.shape),
            "imported_dtype": str(raw.dtype)}
    return np.ascontiguousarray(x), ids, info


def _read_parquet(path: Path, cfg: ImportConfig):
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except ImportError:
        raise DatasetError("reading .parquet needs pyarrow: pip install pyarrow (or use .npy/.npz/.h5)") from None
    cols = [str(c) for c in df.columns]
    df.columns = cols
    ikey = _pick_key(cols, cfg.ids_key, ID_KEYS, path, "column", "--ids-key")
    fkey = _pick_key([c for c in cols if c != ikey], cfg.features_key, FEATURE_KEYS, path, "column",
                     "--features-key")
    ids = _as_ids(df[ikey].to_numpy(), path, ikey) if ikey is not None else None
    if fkey is not None:
        vals = df[fkey].to_numpy()
        if len(vals) and np.ndim(vals[0]) == 1:  # one list/array per row
            lengths = {len(v) for v in vals}
            if len(lengths) != 1:
                raise DatasetError(f"{path}: column '{fkey}' holds vectors of different lengths "
                                   f"({', '.join(map(str, sorted(lengths)[:5]))})")
            return np.stack([np.asarray(v) for v in vals]), ids, fkey, ikey or ""
        return vals.reshape(-1, 1), ids, fkey, ikey or ""
    rest = [c for c in cols if c != ikey]
    non_numeric = [c for c in rest if df[c].dtype.kind not in "fiub"]
    if non_numeric:
        raise DatasetError(f"{path}: column(s) {', '.join(non_numeric[:5])} are not numbers; name the id column "
                           "with --ids-key or the feature column with --features-key")
    return df[rest].to_numpy(), ids, f"{len(rest)} columns {rest[0]}..{rest[-1]}" if rest else "", ikey or ""


# ------------------------------------------------------------------- import

def _labels_table(cfg: ImportConfig):
    csv_path = Path(cfg.labels)
    df = _read_csv(csv_path)
    icol = _pick_column(df, csv_path, cfg.id_col, CSV_ID_COLUMNS, "id", "--id-col")
    lcol = _pick_column(df, csv_path, cfg.label_col, ("label", "mos", "score", "quality"), "label", "--label-col")
    scol = _pick_column(df, csv_path, cfg.split_col, ("split", "set"), "split", "--split-col", required=False)
    ids = df[icol].str.strip().to_numpy(dtype=object)
    _check_duplicates(list(ids), csv_path)
    labels = _parse_labels(df[lcol].tolist(), ids, csv_path, lcol)
    if scol is not None:
        split = _parse_splits(df[scol].tolist(), ids, csv_path, scol)
        split_source = f"column '{scol}' of {csv_path.name}"
    else:
        split = seeded_split(len(df), cfg.split_seed)
        split_source = f"seeded random split, seed {cfg.split_seed}, KonIQ-10k proportions 7058/1000/2015"
        log.info("%s has no split column: using a %s", csv_path.name, split_source)
    return csv_path, icol, lcol, ids, labels, split, split_source


def _match_rows(feature_ids: np.ndarray | None, csv_ids: np.ndarray, n_rows: int, cfg: ImportConfig
                ) -> tuple[np.ndarray, str]:
    """For each CSV row, the index of its feature row."""
    if feature_ids is None:
        if n_rows != len(csv_ids):
            raise DatasetError(f"{cfg.features} has {n_rows} feature rows and no ids, {cfg.labels} has "
                               f"{len(csv_ids)} rows: without ids, feature row i must be CSV row i")
        return np.arange(n_rows), "by row order (the features carry no ids)"
    pos: dict[str, int] = {}
    for i, x in enumerate(feature_ids):
        if x in pos:
            raise DatasetError(f"{cfg.features}: id '{x}' appears on feature rows {pos[x]} and {i}")
        pos[x] = i
    missing = [x for x in csv_ids if x not in pos]
    if missing:
        raise DatasetError(f"{len(missing)} id(s) of {cfg.labels} have no feature row in {cfg.features} "
                           f"(first: '{missing[0]}')")
    csv_set = set(csv_ids)
    extra = [x for x in feature_ids if x not in csv_set]
    if extra:
        raise DatasetError(f"{len(extra)} feature row(s) of {cfg.features} have no label in {cfg.labels} "
                           f"(first id: '{extra[0]}')")
    return np.asarray([pos[x] for x in csv_ids], dtype=np.int64), "by id"


def import_features(cfg: ImportConfig) -> ImportSummary:
    """Write the cache ``cfg.out`` from imported features and labels, checked
    first and written atomically (complete or absent)."""
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise CacheError(f"--out {out} already exists; pass --overwrite to replace it, or another --out")
        if not cache_mod.is_iqa_cache(out):  # replace only an iqa-cache file, never anything else
            raise CacheError(f"--out {out} exists and is not an iqa cache; refusing to replace it")
    csv_path, icol, lcol, csv_ids, labels, split, split_source = _labels_table(cfg)
    x, feature_ids, info = read_features(Path(cfg.features), cfg)
    order, matching = _match_rows(feature_ids, csv_ids, len(x), cfg)
    if cfg.label_range is None:
        lo, hi = float(math.floor(labels.min())), float(math.ceil(labels.max()))
        label_range = (lo, hi if hi > lo else lo + 1.0)
    else:
        lo, hi = map(float, cfg.label_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise DatasetError(f"--label-range {lo:g},{hi:g} is not a range: expected LO,HI with LO < HI")
        label_range = (lo, hi)
    labels, keep, note = _apply_range(labels, csv_ids, label_range, cfg.out_of_range, csv_path, lcol)
    ids, split, order = csv_ids[keep], split[keep], order[keep]
    if len(ids) == 0:
        raise DatasetError(f"no rows left in {csv_path} after dropping out-of-range labels")
    feats = x[order]
    n, d = feats.shape
    name = cfg.name or Path(cfg.features).stem
    manifest = Manifest(name=name, root=Path(cfg.features).resolve().parent, image_id=ids,
                        path=np.asarray([""] * n, dtype=object), label=labels[keep].astype(np.float32),
                        split=split, label_range=label_range, label_name=lcol, source=str(csv_path),
                        split_source=split_source, notes=(note,) if note else ())
    prov = {"feature_source": IMPORTED, "feature": f"imported from {Path(cfg.features).name}"
            + (f" ['{info['imported_features_key']}']" if info["imported_features_key"] else ""),
            "feature_dim": d, **info, "labels_csv": str(csv_path.resolve()), "labels_sha256": _sha256(csv_path),
            "id_column": icol, "id_matching": matching, "feature_dtype": cfg.feature_dtype}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.importing-{os.getpid()}")
    with cache_mod.WriterLock(out):
        try:
            cache_mod.create(tmp, manifest, prov, batch_size=max(1, n))
            with cache_mod.CacheWriter(tmp, sync=False) as w:
                w.commit(0, feats, np.full(n, cache_mod.OK, np.int8), [""] * n)
                w.finalize()
            cache_mod.replace_with(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    counts = {s: int(np.sum(split == s)) for s in ("train", "val", "test")}
    log.info("imported %d × %d features from %s (%s, matched %s) into %s", n, d, cfg.features,
             info["imported_format"], matching, out)
    return ImportSummary(path=out, n_items=n, feature_dim=d, format=info["imported_format"], split_counts=counts,
                         id_matching=matching)

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

import contextlib
import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import cache as cache_mod
from ..binning import default_label_range, label_range_note
from ..errors import CacheError, DatasetError, clip
from ..schema import IMPORTED, item_noun  # noqa: F401 (re-exported)
from ..settings import ImportConfig  # noqa: F401  (re-exported: its old place)
from ..sources.datasets import (
    Manifest,
    _apply_range,
    _check_duplicates,
    _parse_labels,
    _parse_splits,
    _pick_column,
    _read_csv,
    seeded_split,
)

log = logging.getLogger(__name__)

FORMATS = {".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".parquet": "parquet"}
FEATURE_KEYS = ("features", "embeddings", "embedding", "feature", "X", "x")
ID_KEYS = ("ids", "id", "image_id", "item_id", "image", "name")
CSV_ID_COLUMNS = ("id", "image_id", "item_id", "image", "image_name", "filename", "file", "path", "name")
BLOCK_BYTES = 16 << 20  # features read and written per block by `iqa import`
WINDOW_BYTES = 64 << 20  # cache rows put in place at a time when the file is stored in another order


@dataclass
class ImportSummary:
    path: Path
    n_items: int
    feature_dim: int
    format: str
    split_counts: dict[str, int]
    id_matching: str
    label_note: str = ""  # the labels' span and the scale recorded (binning.label_range_note)


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


class FeatureSource:
    """The feature matrix of an input file, read a block of rows at a time
    as float32, so that importing needs memory for one block, not for the
    matrix.  ``.npy`` files and contiguous HDF5 datasets (h5py's default
    layout) are memory-mapped and read in any row order; a chunked HDF5
    dataset is read in file order; a file stored in another order than the
    CSV is permuted through windows (:meth:`plan`); ``.npz`` and ``.parquet``
    are held in memory."""

    def __init__(self, array: Any, *, where: str):
        self.array = array  # an ndarray, a np.memmap or an h5py.Dataset
        self.where = where

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def plan(self, order: np.ndarray) -> str:
        """How the cache's rows ``order`` are read: ``in order`` (rows
        increasing: the file is read once from start to end), ``in memory``
        (the matrix is held: any order), or ``by windows`` (a file stored in
        another order than the CSV: the rows are first sorted into windows of
        the cache's order in temporary files next to the cache, so that every
        read and write stays sequential, however large the file)."""
        if len(order) < 2 or not (np.diff(order) < 0).any():
            return "in order"
        return "in memory" if type(self.array) is np.ndarray else "by windows"

    def block(self, a: int, b: int) -> np.ndarray:
        """Rows ``a .. b-1`` as float32 (values beyond float32 become inf)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(self.array[a:b]).astype(np.float32)  # a copy even from float32: no view of a map

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (any order, no repeats) as float32, in that order."""
        if len(rows) == 0:
            return np.empty((0, self.shape[1]), np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo == len(rows) and (len(rows) == 1 or (np.diff(rows) == 1).all()):
            return self.block(lo, hi)
        if isinstance(self.array, np.ndarray):  # in memory or memory-mapped: rows picked in the order asked
            with np.errstate(over="ignore", invalid="ignore"):
                return self.array[rows].astype(np.float32, copy=False)
        order = np.argsort(rows, kind="stable")  # a chunked dataset (rows increasing): spans in file order
        srt = rows[order]
        got = np.empty((len(srt), self.shape[1]), np.float32)
        step, done = _block_rows(self.shape[1]), 0
        for a in range(lo, hi, step):
            i, j = np.searchsorted(srt, [a, a + step])
            if j > i:
                got[done:done + j - i] = self.block(a, min(a + step, hi))[srt[i:j] - a]
                done += j - i
        out = np.empty_like(got)
        out[order] = got
        return out


def _hdf5_source(dset, path: Path, where: str) -> FeatureSource:
    """A contiguous, uncompressed, numeric HDF5 dataset memory-mapped; any
    other read through h5py."""
    try:
        offset = dset.id.get_offset() if dset.chunks is None and dset.compression is None else None
    except (AttributeError, ValueError):
        offset = None
    if offset is not None and dset.dtype.kind in "fiub" and dset.dtype.names is None and len(dset.shape) == 2:
        mm = np.memmap(path, dtype=dset.dtype, mode="r", offset=int(offset), shape=tuple(dset.shape))
        return FeatureSource(mm, where=where)
    return FeatureSource(dset, where=where)


@contextlib.contextmanager
def open_features(path: Path, cfg: ImportConfig) -> Iterator[tuple[FeatureSource, np.ndarray | None, dict[str, Any]]]:
    """The feature matrix (a :class:`FeatureSource`), the ids or None, and
    what to record about the source, checked row by row (every row finite in
    float32).  One-line DatasetErrors for every problem."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"--features {path}: unknown format '{path.suffix}'; use one of "
                           f"{', '.join(sorted(FORMATS))}")
    if not path.is_file():
        raise DatasetError(f"--features {path} does not exist")
    with contextlib.ExitStack() as stack:
        fkey = ikey = ""
        ids = None
        try:
            if fmt == "npy":
                if cfg.features_key or cfg.ids_key:
                    raise DatasetError(f"{path}: a .npy file holds one array; --features-key/--ids-key need .npz, "
                                       ".h5 or .parquet")
                raw: Any = np.load(path, mmap_mode="r", allow_pickle=False)
            elif fmt == "npz":
                with np.load(path, allow_pickle=False) as z:
                    names = list(z.files)

                    def get(n, shape_only=False):
                        return z[n].shape if shape_only else z[n]

                    raw, ids, fkey, ikey = _array_reader(names, get, path, cfg)
            elif fmt == "hdf5":
                import h5py

                f = stack.enter_context(h5py.File(path, "r"))
                _refuse_outside_data(f, path)
                names = []
                f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)

                def get(n, shape_only=False):  # an empty dataspace has shape None
                    return (f[n].shape or ()) if shape_only else f[n]

                raw, ids, fkey, ikey = _array_reader(names, get, path, cfg)
                if raw.shape is None:
                    raise DatasetError(f"{path} ['{clip(fkey)}']: the dataset is empty (no dataspace); features must "
                                       "be a 2-D array (rows × dimensions)")
            else:
                raw, ids, fkey, ikey = _read_parquet(path, cfg)
        except DatasetError:
            raise
        except (OSError, ValueError, KeyError, OverflowError, TypeError) as e:  # a crafted header: any of them
            raise DatasetError(f"--features {path} cannot be read as {fmt} ({str(e).splitlines()[0][:200]})") from None
        where = f"{path}" + (f" ['{fkey}']" if fkey else "")
        if not hasattr(raw, "dtype") or not hasattr(raw, "shape"):
            raw = np.asarray(raw)
        if raw.dtype.kind not in "fiub":
            raise DatasetError(f"{where}: features must be numbers, got dtype {raw.dtype}")
        if len(raw.shape) != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
            raise DatasetError(f"{where}: features must be a 2-D array (rows × dimensions) with at least one of "
                               f"each, got shape {tuple(raw.shape)}")
        if ids is not None and len(ids) != raw.shape[0]:
            raise DatasetError(f"{path}: {len(ids)} ids ('{ikey}') for {raw.shape[0]} feature rows ('{fkey}')")
        if fmt == "hdf5":
            src = _hdf5_source(raw, path, where)
        else:
            src = FeatureSource(raw if isinstance(raw, np.ndarray) else np.asarray(raw), where=where)
        _check_finite(src, ids)
        info = {"imported_path": str(path.resolve()), "imported_sha256": _sha256(path), "imported_format": fmt,
                "imported_features_key": fkey, "imported_ids_key": ikey, "imported_shape": list(raw.shape),
                "imported_dtype": str(raw.dtype)}
        yield src, ids, info


def _refuse_outside_data(f, path: Path) -> None:
    """Refuse an HDF5 file that takes data from other files: an external
    link, a virtual dataset, or a dataset whose raw data is stored in
    another file.  Reading one would pull that file's bytes (any file: e.g.
    /etc/passwd) into the cache while the recorded SHA-256 covers only
    ``path``; the import reads only what the named file itself holds."""
    import h5py

    found: list[str] = []

    def look(name: str, link) -> None:
        if found:
            return
        if isinstance(link, h5py.ExternalLink):
            found.append(f"'{clip(name)}' is an external link to {clip(link.filename)}:{clip(link.path)}")
            return
        if not isinstance(link, h5py.HardLink):
            return
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.is_virtual:
            found.append(f"dataset '{clip(name)}' is a virtual dataset (its data is in other files)")
        elif obj.id.get_create_plist().get_external_count() > 0:
            found.append(f"dataset '{clip(name)}' stores its data in another file (external raw storage)")

    f.visititems_links(look)
    if found:
        raise DatasetError(f"--features {path}: {found[0]}; iqa import reads only what the named file itself holds: "
                           "copy the data into it (h5repack, or h5py) and import that file")


def _check_finite(src: FeatureSource, ids: np.ndarray | None) -> None:
    """Refuse rows holding NaN or Inf (or values beyond float32), naming how
    many and the first, reading the file once in order a block at a time."""
    n_bad, first = 0, -1
    step = _block_rows(src.shape[1])
    for a in range(0, src.shape[0], step):
        bad = ~np.isfinite(src.block(a, min(a + step, src.shape[0]))).all(axis=1)
        if bad.any():
            if first < 0:
                first = a + int(np.flatnonzero(bad)[0])
            n_bad += int(bad.sum())
    if n_bad:
        row = f"row {first}" + (f" (id {ids[first]})" if ids is not None else "")
        raise DatasetError(f"{src.where}: {n_bad} feature row(s) contain NaN or Inf (or values beyond "
                           f"float32), first: {row}")


def _block_rows(dim: int) -> int:
    """Rows per block read or written: about 16 MiB of float32."""
    return max(1, BLOCK_BYTES // (4 * max(1, dim)))


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
        null = [i for i, v in enumerate(vals) if v is None or (np.ndim(v) == 0 and pd.isna(v))]
        if null and len(vals) and any(np.ndim(v) == 1 for v in vals if v is not None):
            raise DatasetError(f"{path}: column '{clip(fkey)}' is null on {len(null)} row(s) (first: row {null[0]}); "
                               "every row needs its vector")
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
    nul = np.flatnonzero(df[icol].str.contains("\x00", regex=False).to_numpy())
    if len(nul):  # an HDF5 string cannot hold it
        i = int(nul[0])
        raise DatasetError(f"CSV file {csv_path}, line {i + 2}: id {clip(repr(ids[i]))} in column '{clip(icol)}' "
                           "holds a NUL byte; refused")
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


def _check_out(out: Path, cfg: ImportConfig) -> None:
    if os.path.lexists(out):
        if not cfg.overwrite:
            raise CacheError(f"--out {out} already exists; pass --overwrite to replace it, or another --out")
        if not cache_mod.is_iqa_cache(out):  # replace only an iqa-cache file, never anything else
            raise CacheError(f"--out {out} exists and is not an iqa cache; refusing to replace it")


def import_features(cfg: ImportConfig, *, progress: bool = False) -> ImportSummary:
    """Write the cache ``cfg.out`` from imported features and labels, checked
    first and written atomically (complete or absent), a block of rows at a
    time (see :class:`FeatureSource` for what is held in memory)."""
    out = Path(cfg.out)
    _check_out(out, cfg)  # early, before reading anything; again once the lock is held
    csv_path, icol, lcol, csv_ids, labels, split, split_source = _labels_table(cfg)
    with open_features(Path(cfg.features), cfg) as (src, feature_ids, info):
        order, matching = _match_rows(feature_ids, csv_ids, src.shape[0], cfg)
        if cfg.label_range is None:
            label_range = default_label_range(labels)
        else:
            lo, hi = map(float, cfg.label_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise DatasetError(f"--label-range {lo:g},{hi:g} is not a range: expected LO,HI with LO < HI")
            label_range = (lo, hi)
        labels, keep, note = _apply_range(labels, csv_ids, label_range, cfg.out_of_range, csv_path, lcol)
        ids, split, order = csv_ids[keep], split[keep], order[keep]
        if len(ids) == 0:
            raise DatasetError(f"no rows left in {csv_path} after dropping out-of-range labels")
        n, d = len(order), src.shape[1]
        name = cfg.name or Path(cfg.features).stem
        manifest = Manifest(name=name, root=Path(cfg.features).resolve().parent, image_id=ids,
                            path=np.asarray([""] * n, dtype=object), label=labels[keep].astype(np.float32),
                            split=split, label_range=label_range, label_name=lcol, source=str(csv_path),
                            split_source=split_source, notes=(note,) if note else ())
        prov = {"feature_source": IMPORTED, "feature": f"imported from {Path(cfg.features).name}"
                + (f" ['{info['imported_features_key']}']" if info["imported_features_key"] else ""),
                "feature_dim": d, **info, "labels_csv": str(csv_path.resolve()), "labels_sha256": _sha256(csv_path),
                "id_column": icol, "id_matching": matching, "feature_dtype": cfg.feature_dtype,
                **({"declared_feature_source": cfg.feature_source} if cfg.feature_source else {})}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.importing-{os.getpid()}")
        with cache_mod.WriterLock(out, "iqa import"):
            _check_out(out, cfg)  # another writer may have made it since the first check
            cache_mod.remove_stale_temporaries(out)
            try:
                cache_mod.create(tmp, manifest, prov, batch_size=max(1, n), shown=out)
                with cache_mod.CacheWriter(tmp, sync=False) as w:
                    _write_rows(w, src, order, tmp, progress)
                    w.finalize()
                cache_mod.replace_with(tmp, out)
            finally:
                if tmp.exists():
                    tmp.unlink()
    counts = {s: int(np.sum(split == s)) for s in ("train", "val", "test")}
    log.info("imported %d × %d features from %s (%s, matched %s) into %s", n, d, cfg.features,
             info["imported_format"], matching, out)
    return ImportSummary(path=out, n_items=n, feature_dim=d, format=info["imported_format"], split_counts=counts,
                         id_matching=matching, label_note=label_range_note(
                             manifest.label, label_range, "declared by --label-range" if cfg.label_range else ""))


def _write_rows(w, src: FeatureSource, order: np.ndarray, tmp: Path, progress: bool) -> None:
    """Cache row i gets feature row ``order[i]``, a block at a time."""
    from tqdm.auto import tqdm

    how = src.plan(order)
    if how == "by windows":
        log.info("%s is stored in another order than the labels CSV: sorting its rows through windows of %d MiB "
                 "next to %s", src.where, WINDOW_BYTES >> 20, tmp.name)
    with tqdm(total=len(order) * (2 if how == "by windows" else 1), desc="importing", unit="row",
              disable=not progress, leave=False, dynamic_ncols=True) as bar:
        if how == "by windows":
            _write_by_windows(w, src, order, tmp, bar)
            return
        step = _block_rows(src.shape[1])
        for a in range(0, len(order), step):
            rows = order[a:a + step]
            w.commit(a, src.take(rows), np.full(len(rows), cache_mod.OK, np.int8), [""] * len(rows))
            bar.update(len(rows))


def _write_by_windows(w, src: FeatureSource, order: np.ndarray, tmp: Path, bar) -> None:
    """An external permutation: pass 1 reads the file in order and appends
    each row to the temporary file of its window of cache rows (with its
    position); pass 2 reads one window at a time, puts its rows in place and
    writes it.  Memory: one block and one window; disk: the float32 features
    once more, removed at the end."""
    n, d = len(order), src.shape[1]
    win = max(1, WINDOW_BYTES // (4 * d))
    dest = np.full(src.shape[0], -1, np.int64)
    dest[order] = np.arange(n)  # cache row of each feature row (-1: dropped)
    work = tmp.with_name(tmp.name + ".windows")
    work.mkdir()
    try:
        step = _block_rows(d)
        with cache_mod.disk_guard(work, "sorting the rows of the features file into", needed=n * (4 * d + 8)):
            for a in range(0, src.shape[0], step):
                b = min(a + step, src.shape[0])
                pos = dest[a:b]
                use = np.flatnonzero(pos >= 0)
                if not len(use):
                    continue
                x = src.block(a, b)[use]
                pos = pos[use]
                k = pos // win
                by = np.argsort(k, kind="stable")
                cuts = np.flatnonzero(np.diff(k[by])) + 1
                for part in np.split(by, cuts):
                    name = work / f"{int(k[part[0]]):06d}"
                    # file.write, not ndarray.tofile: a full disk is ENOSPC, not "N requested and M written"
                    with open(name.with_suffix(".rows"), "ab") as f:
                        f.write(np.ascontiguousarray(x[part]).data)
                    with open(name.with_suffix(".pos"), "ab") as f:
                        f.write(np.ascontiguousarray(pos[part]).data)
                bar.update(len(use))
        for i, lo in enumerate(range(0, n, win)):
            hi = min(lo + win, n)
            name = work / f"{i:06d}"
            pos = np.fromfile(name.with_suffix(".pos"), np.int64) - lo
            window = np.empty((hi - lo, d), np.float32)
            window[pos] = np.memmap(name.with_suffix(".rows"), np.float32, "r", shape=(len(pos), d))
            for p in (name.with_suffix(".rows"), name.with_suffix(".pos")):
                p.unlink()
            for a in range(0, hi - lo, step):
                m = min(step, hi - lo - a)
                w.commit(lo + a, window[a:a + m], np.full(m, cache_mod.OK, np.int8), [""] * m)
            bar.update(hi - lo)
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""Dataset manifests: which images, where, with which label and split.

A :class:`Manifest` is the one description of a dataset that stage one needs.
Loaders read a dataset as it is distributed (KonIQ-10k, SPAQ) or a plain
folder + CSV, check it, and return a manifest.  Every problem is raised as a
:class:`~iqa_cache.errors.DatasetError` naming the file, line and column.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..binning import default_label_range, parse_decimal
from ..errors import DatasetError, clip
from ..schema import FLOAT32_MAX
from ..seeds import check_seed

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}
# KonIQ-10k's official split sizes; also the proportions of seeded splits.
KONIQ_SPLIT_SIZES = {"train": 7058, "val": 1000, "test": 2015}
KONIQ_RESOLUTIONS = ("1024x768", "512x384")
KONIQ_SETS_CSV = "koniq10k_distributions_sets.csv"
KONIQ_SCORES_CSV = "koniq10k_scores_and_distributions.csv"
OUT_OF_RANGE_POLICIES = ("error", "clip", "drop")


@dataclass(frozen=True)
class Manifest:
    """The images of one dataset, in a fixed order.

    ``path`` holds paths relative to ``root``; ``label`` is float32 (NaN when
    unknown); ``split`` is ``train``/``val``/``test`` or ``""``.
    """

    name: str
    root: Path
    image_id: np.ndarray
    path: np.ndarray
    label: np.ndarray
    split: np.ndarray
    label_range: tuple[float, float]
    label_name: str = "label"
    source: str = ""
    split_source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # None: images are files under root; else an object whose read(path) returns an image's bytes
    # (webdataset tar members, :class:`iqa_cache.sources.wds.TarReader`)
    reader: Any = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.image_id)

    def head(self, n: int | None) -> "Manifest":
        """The first ``n`` images (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DatasetError(f"--limit must be a positive number of images, got {n}")
        return replace(
            self,
            image_id=self.image_id[:n], path=self.path[:n],
            label=self.label[:n], split=self.split[:n],
            notes=self.notes + (f"limited to the first {n} of {len(self)} images",),
        )

    def fingerprint(self) -> str:
        """A digest of ids, paths, labels and splits: two manifests with the
        same fingerprint describe the same rows in the same order."""
        h = hashlib.sha256()
        for arr in (self.image_id, self.path, self.split):
            h.update("\x1f".join(map(str, arr)).encode("utf-8"))
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(self.label, dtype="<f4").tobytes())
        return h.hexdigest()

    def split_counts(self) -> dict[str, int]:
        return {s: int(np.sum(self.split == s)) for s in SPLITS}

    def abspath(self, i: int) -> Path:
        return self.root / self.path[i]


# --------------------------------------------------------------------- helpers

MAX_CSV_BYTES = 2 << 30  # a labels/dataset CSV larger than this (2 GiB) is refused: it is read whole


def special_kind(mode: int) -> str:
    """'' for a regular file's ``st_mode``; else what it is ('a FIFO', 'a
    character device', ...): reading one may block forever or never end."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "" if stat.S_ISREG(mode) else "not a regular file"


def _read_csv(csv_path: Path) -> pd.DataFrame:
    try:
        st = os.stat(csv_path)
    except FileNotFoundError:
        raise DatasetError(f"CSV file {csv_path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"CSV file {csv_path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    kind = special_kind(st.st_mode)
    if kind:
        raise DatasetError(f"CSV file {csv_path} is {kind}, not a regular file")
    if st.st_size > MAX_CSV_BYTES:
        raise DatasetError(f"CSV file {csv_path} is {st.st_size:,} bytes, over the limit of {MAX_CSV_BYTES:,} "
                           "bytes (2 GiB) for a labels CSV, which is read whole")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True,
                         encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"CSV file {csv_path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DatasetError(f"CSV file {csv_path} is empty: expected a header line and one row per image") from None
    except pd.errors.ParserError as e:
        raise DatasetError(f"CSV file {csv_path} cannot be parsed: {str(e).strip()}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise DatasetError(f"CSV file {csv_path} has a header but no rows")
    return df


def _pick_column(df: pd.DataFrame, csv_path: Path, wanted: str | None, candidates: Sequence[str],
                 what: str, option: str, required: bool = True) -> str | None:
    cols = list(df.columns)
    if wanted is not None:
        if wanted not in cols:
            raise DatasetError(f"CSV file {csv_path} has no column '{clip(wanted)}' ({option}); "
                               f"columns are: {clip(', '.join(cols))}")
        return wanted
    lower = {c.lower(): c for c in cols}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    if required:
        raise DatasetError(
            f"CSV file {csv_path} has no {what} column (looked for {', '.join(candidates)}); "
            f"columns are: {clip(', '.join(cols))}; name it with {option}")
    return None


def _parse_labels(values: Sequence[str], names: Sequence[str], csv_path: Path, column: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, (v, name) in enumerate(zip(values, names)):
        line = i + 2  # header is line 1
        try:
            out[i] = parse_decimal(v)
        except ValueError as e:
            raise DatasetError(f"CSV file {csv_path}, line {line} (image {clip(name)}): label '{clip(v)}' in column "
                               f"'{clip(column)}' {e}") from None
    big = np.flatnonzero(np.abs(out) > FLOAT32_MAX)  # stored as float32: it would become inf
    if len(big):
        i = int(big[0])
        raise DatasetError(f"CSV file {csv_path}, line {i + 2} (image {clip(names[i])}): label '{clip(values[i])}' in "
                           f"column '{clip(column)}' is beyond float32 (at most {FLOAT32_MAX:.4g} in magnitude), "
                           "which labels are stored as")
    return out


def _parse_splits(values: Sequence[str], names: Sequence[str], csv_path: Path, column: str) -> np.ndarray:
    out = []
    for i, (v, name) in enumerate(zip(values, names)):
        s = SPLIT_ALIASES.get(v.strip().lower())
        if s is None:
            raise DatasetError(
                f"CSV file {csv_path}, line {i + 2} (image {clip(name)}): split '{clip(v)}' in column "
                f"'{clip(column)}' is not one of "
                f"train/val/test (aliases: {', '.join(sorted(set(SPLIT_ALIASES) - set(SPLITS)))})")
        out.append(s)
    return np.array(out, dtype=object)


def seeded_split(n: int, seed: int, sizes: dict[str, int] = KONIQ_SPLIT_SIZES) -> np.ndarray:
    """A reproducible random train/val/test split of ``n`` rows in the given
    proportions (KonIQ-10k's 7058/1000/2015 by default)."""
    seed = check_seed(seed, "--split-seed")
    total = sum(sizes.values())
    n_train = int(round(n * sizes["train"] / total))
    n_val = int(round(n * sizes["val"] / total))
    n_val = min(n_val, n - n_train)
    split = np.array(["test"] * n, dtype=object)
    order = np.random.default_rng(seed).permutation(n)
    split[order[:n_train]] = "train"
    split[order[n_train:n_train + n_val]] = "val"
    return split


def _file_key(path: Path) -> tuple:
    """What identifies the file a path names: its device and inode when it
    exists (so a symlink, a hard link or another spelling of the same file
    gives the same key), else its resolved, normalised path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return ("path", os.path.normpath(os.path.realpath(path)))


def _check_paths(root: Path, rel_paths: Sequence[str], csv_path: Path) -> None:
    """Refuse image paths that are empty or hold a NUL byte, that leave the
    dataset root (``..``, absolute paths, symlinks pointing outside), and two
    rows naming the same file however it is written (``img/a.jpg``,
    ``./img/a.jpg``, ``img//a.jpg``, a symlink or hard link to it): one
    image must not be listed twice (it could sit in train and test at once)."""
    root_real = Path(os.path.realpath(root))
    seen: dict[tuple, int] = {}
    for i, p in enumerate(rel_paths):
        if p == "":
            raise DatasetError(f"CSV file {csv_path}, line {i + 2}: empty image path")
        if "\x00" in p:
            raise DatasetError(f"CSV file {csv_path}, line {i + 2}: image path {clip(repr(p))} holds a NUL byte; "
                               "refused")
        if os.path.isabs(p) or p.startswith("~"):
            raise DatasetError(f"CSV file {csv_path}, line {i + 2}: image path '{clip(p)}' is absolute; "
                               f"paths must be relative to the dataset root {root}")
        real = Path(os.path.realpath(root / p))
        if real != root_real and root_real not in real.parents:
            raise DatasetError(f"CSV file {csv_path}, line {i + 2}: image path '{clip(p)}' leads outside the dataset "
                               f"root {root} (to {clip(real)}); refused")
        key = _file_key(root / p)
        if key in seen:
            j = seen[key]
            raise DatasetError(f"CSV file {csv_path}, line {i + 2}: image path '{clip(p)}' names the same file as "
                               f"'{clip(rel_paths[j])}' on line {j + 2}; list each image once (it could otherwise "
                               "be in two splits)")
        seen[key] = i


def _check_duplicates(ids: Sequence[str], csv_path: Path) -> None:
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if x in seen:
            raise DatasetError(f"CSV file {csv_path}, line {i + 2}: image '{clip(x)}' already listed on line "
                               f"{seen[x] + 2}")
        seen[x] = i


def _apply_range(labels: np.ndarray, names: np.ndarray, label_range: tuple[float, float], policy: str,
                 csv_path: Path, column: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Labels outside ``label_range``: raise (``error``), clip, or drop rows.
    Returns (labels, keep mask, note)."""
    if policy not in OUT_OF_RANGE_POLICIES:
        raise DatasetError(f"out-of-range policy '{policy}' is not one of {', '.join(OUT_OF_RANGE_POLICIES)}")
    lo, hi = label_range
    bad = (labels < lo) | (labels > hi)
    keep = np.ones(len(labels), dtype=bool)
    if not bad.any():
        return labels, keep, None
    first = int(np.flatnonzero(bad)[0])
    desc = (f"{int(bad.sum())} label(s) in column '{column}' of {csv_path} lie outside the declared range "
            f"[{lo:g}, {hi:g}] (first: line {first + 2}, image {names[first]}, label {labels[first]:g})")
    if policy == "error":
        raise DatasetError(desc + "; pass --label-range to widen it, or --out-of-range clip|drop")
    if policy == "clip":
        log.warning("%s: clipped into the range", desc)
        return np.clip(labels, lo, hi), keep, desc + ": clipped"
    log.warning("%s: dropped", desc)
    return labels, ~bad, desc + ": dropped"


def _build(name: str, root: Path, csv_path: Path, ids: np.ndarray, rel_paths: np.ndarray, labels: np.ndarray,
           split: np.ndarray, label_range: tuple[float, float], label_name: str, split_source: str,
           out_of_range: str, label_column: str) -> Manifest:
    _check_duplicates(list(ids), csv_path)
    _check_paths(root, list(rel_paths), csv_path)
    labels, keep, note = _apply_range(labels, ids, label_range, out_of_range, csv_path, label_column)
    notes = (note,) if note else ()
    m = Manifest(
        name=name, root=root, image_id=ids[keep], path=rel_paths[keep],
        label=labels[keep].astype(np.float32), split=split[keep], label_range=label_range,
        label_name=label_name, source=str(csv_path), split_source=split_source, notes=notes,
    )
    if len(m) == 0:
        raise DatasetError(f"no images left in {csv_path} after dropping out-of-range labels")
    return m


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")


# --------------------------------------------------------------------- loaders

def load_koniq(root: str | os.PathLike, *, resolution: str | None = None, csv: str | os.PathLike | None = None,
               split_seed: int = 0, out_of_range: str = "error") -> Manifest:
    """KonIQ-10k as distributed: ``root/koniq10k_distributions_sets.csv``
    (labels ``MOS`` on 0-100 and the official ``set`` split) or, failing that,
    ``root/koniq10k_scores_and_distributions.csv`` (label ``MOS_zscore``, 0-100,
    and a seeded split in the official proportions); images in
    ``root/1024x768/`` or ``root/512x384/``."""
    root = Path(root)
    _require_dir(root, "KonIQ-10k root")
    if resolution is None:
        found = [r for r in KONIQ_RESOLUTIONS if (root / r).is_dir()]
        if not found:
            raise DatasetError(f"KonIQ-10k root {root} has no image folder: expected {root / '1024x768'} "
                               f"or {root / '512x384'}")
        resolution = found[0]
    elif resolution not in KONIQ_RESOLUTIONS:
        raise DatasetError(f"--resolution '{resolution}' is not one of {', '.join(KONIQ_RESOLUTIONS)}")
    else:
        _require_dir(root / resolution, "KonIQ-10k image folder")

    if csv is not None:
        csv_path = Path(csv)
    elif (root / KONIQ_SETS_CSV).is_file():
        csv_path = root / KONIQ_SETS_CSV
    elif (root / KONIQ_SCORES_CSV).is_file():
        csv_path = root / KONIQ_SCORES_CSV
    else:
        raise DatasetError(f"KonIQ-10k root {root} has neither {KONIQ_SETS_CSV} nor {KONIQ_SCORES_CSV}")
    df = _read_csv(csv_path)
    name_col = _pick_column(df, csv_path, "image_name", (), "image name", "the KonIQ-10k format")
    ids = df[name_col].str.strip().to_numpy(dtype=object)
    if "set" in df.columns:
        label_col = _pick_column(df, csv_path, "MOS", (), "label", "the KonIQ-10k format")
        split = _parse_splits(df["set"].tolist(), ids, csv_path, "set")
        split_source = f"official ('set' column of {csv_path.name})"
    else:
        label_col = _pick_column(df, csv_path, "MOS_zscore", (), "label", "the KonIQ-10k format")
        split = seeded_split(len(df), split_seed)
        split_source = f"seeded random split, seed {split_seed}, KonIQ-10k proportions 7058/1000/2015"
        log.info("%s has no official split: using a %s", csv_path.name, split_source)
    labels = _parse_labels(df[label_col].tolist(), ids, csv_path, label_col)
    rel = np.array([f"{resolution}/{x}" for x in ids], dtype=object)
    return _build("koniq", root, csv_path, ids, rel, labels, split, (0.0, 100.0), label_col,
                  split_source, out_of_range, label_col)


def load_spaq(root: str | os.PathLike, *, csv: str | os.PathLike | None = None, split_seed: int = 0,
              out_of_range: str = "error") -> Manifest:
    """SPAQ: images in ``root/TestImage/``, labels (``MOS``, 0-100) from
    ``root/Annotations/MOS and Image attribute scores.csv`` (export the
    distributed .xlsx to CSV, or pass ``csv``).  SPAQ has no official split:
    a seeded random one in KonIQ-10k's proportions is used and recorded."""
    root = Path(root)
    _require_dir(root, "SPAQ root")
    _require_dir(root / "TestImage", "SPAQ image folder")
    if csv is None:
        ann = root / "Annotations"
        candidates = [ann / "MOS and Image attribute scores.csv", ann / "MOS.csv"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            xlsx = ann / "MOS and Image attribute scores.xlsx"
            hint = f" ({xlsx} exists: save it as CSV)" if xlsx.is_file() else ""
            raise DatasetError(f"SPAQ root {root} has no label CSV: expected {candidates[0]}{hint}, or pass --csv")
        csv_path = found[0]
    else:
        csv_path = Path(csv)
    df = _read_csv(csv_path)
    name_col = _pick_column(df, csv_path, None, ("Image name", "image_name", "image"), "image name", "--image-col")
    label_col = _pick_column(df, csv_path, None, ("MOS", "mos", "label"), "label", "--label-col")
    ids = df[name_col].str.strip().to_numpy(dtype=object)
    labels = _parse_labels(df[label_col].tolist(), ids, csv_path, label_col)
    split = seeded_split(len(df), split_seed)
    rel = np.array([f"TestImage/{x}" for x in ids], dtype=object)
    return _build("spaq", root, csv_path, ids, rel, labels, split, (0.0, 100.0), label_col,
                  f"seeded random split, seed {split_seed}, KonIQ-10k proportions", out_of_range, label_col)


def load_csv(root: str | os.PathLike, csv: str | os.PathLike, *, image_col: str | None = None,
             label_col: str | None = None, split_col: str | None = None,
             label_range: tuple[float, float] | None = None, split_seed: int = 0,
             out_of_range: str = "error", name: str = "csv") -> Manifest:
    """Any folder plus a CSV naming each image (path relative to ``root``), its
    label and optionally its split.  Column defaults: image from
    ``image``/``image_name``/``filename``/``path``; label from
    ``label``/``mos``/``score``; split from ``split``/``set`` when present, else
    a seeded random split in KonIQ-10k's proportions.  The label range is
    ``label_range`` when given, else the first common scale holding every
    label (:func:`~iqa_cache.binning.default_label_range`: 0-1, 1-5, 0-4,
    0-5, 1-10, 0-10, 0-100), else the whole numbers around them."""
    root = Path(root)
    _require_dir(root, "dataset root")
    csv_path = Path(csv)
    df = _read_csv(csv_path)
    icol = _pick_column(df, csv_path, image_col, ("image", "image_name", "filename", "file", "path"),
                        "image", "--image-col")
    lcol = _pick_column(df, csv_path, label_col, ("label", "mos", "score", "quality"), "label", "--label-col")
    scol = _pick_column(df, csv_path, split_col, ("split", "set"), "split", "--split-col", required=False)
    ids = df[icol].str.strip().to_numpy(dtype=object)
    labels = _parse_labels(df[lcol].tolist(), ids, csv_path, lcol)
    if scol is not None:
        split = _parse_splits(df[scol].tolist(), ids, csv_path, scol)
        split_source = f"column '{scol}' of {csv_path.name}"
    else:
        split = seeded_split(len(df), split_seed)
        split_source = f"seeded random split, seed {split_seed}, KonIQ-10k proportions 7058/1000/2015"
        log.info("%s has no split column: using a %s", csv_path.name, split_source)
    if label_range is None:
        label_range = default_label_range(labels)
    else:
        lo, hi = map(float, label_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise DatasetError(f"--label-range {lo:g},{hi:g} is not a range: expected LO,HI with LO < HI")
        label_range = (lo, hi)
    return _build(name, root, csv_path, ids, ids.copy(), labels, split, label_range, lcol,
                  split_source, out_of_range, lcol)

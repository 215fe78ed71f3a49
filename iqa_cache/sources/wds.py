"""WebDataset input: tar shards as img2dataset writes them.

A shard is a plain (uncompressed) tar file whose members are grouped into
samples by key: ``KEY.jpg`` (or png/webp/...) with ``KEY.json``, and
optionally ``KEY.txt`` / ``KEY.cls``; the key is the member name up to the
first dot of its file name.  ``--root 'shards/{00000..00099}.tar'`` names
the shards (brace ranges keep their zero padding; comma lists work too).

Shards are indexed with the standard library's :mod:`tarfile` (headers only:
each member's data offset and size), so an image is read with one
``pread`` from its shard, by any process, in any order.  The manifest lists
the samples shard by shard, in member order; an image's ``path`` is
``<shard, relative to the shards' folder>/<member name>`` and its id is the
sample key (prefixed with the shard's name when keys repeat across
shards).  Labels come from a key of the sample's json (``--label-col``,
default: the first of label/mos/score/quality that the first sample has) or
from a member such as ``KEY.cls`` (``--label-col cls``); the split from a
json key (``--split-col``, default split/set when present) or a seeded
random split.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..binning import default_label_range
from ..errors import DatasetError, clip
from ..schema import FLOAT32_MAX
from .datasets import SPLIT_ALIASES, Manifest, _apply_range, seeded_split

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
LABEL_KEYS = ("label", "mos", "score", "quality")
SPLIT_KEYS = ("split", "set")
_BRACE = re.compile(r"\{([^{}]*)\}")


MAX_SHARDS = 100_000  # a --root pattern naming more shards than this is refused before it is expanded further


def _expand(pattern: str, where: str) -> Iterator[str]:
    """The names ``pattern`` expands to, one at a time (nothing is built
    that the caller does not take)."""
    m = _BRACE.search(pattern)
    if m is None:
        yield pattern
        return
    body = m.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    items: Iterable[str]
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        step = int(rng.group(3) or 1)
        if step == 0:
            raise DatasetError(f"--root {clip(where)}: brace range '{{{clip(body)}}}' has step 0")
        bounds = (rng.group(1).lstrip("-"), rng.group(2).lstrip("-"))
        padded = any(len(x) > 1 and x.startswith("0") for x in bounds)  # as bash: {00..10} pads, {0..10} not
        width = max(len(rng.group(1)), len(rng.group(2))) if padded else 0
        vals = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        items = (str(v).zfill(width) for v in vals)
    elif "," in body:
        items = body.split(",")
    else:  # a literal brace pair
        head, tail = pattern[:m.end()], pattern[m.end():]
        for rest in _expand(tail, where):
            yield head + rest
        return
    for it in items:
        yield from _expand(pattern[:m.start()] + it + pattern[m.end():], where)


def expand_braces(pattern: str, limit: int = MAX_SHARDS) -> list[str]:
    """``a{00..02}b{x,y}`` → a00bx, a00by, a01bx, ...  (ranges keep the
    width of their zero-padded bounds; a step ``{0..10..5}`` is allowed).
    DatasetError, before building the list, when it names more than
    ``limit`` names."""
    out = list(itertools.islice(_expand(pattern, pattern), limit + 1))
    if len(out) > limit:
        raise DatasetError(f"--root {clip(pattern)} names more than {limit:,} shards (the limit, MAX_SHARDS); "
                           "merge shards, or embed the dataset in parts")
    return out


def shard_paths(pattern: str | os.PathLike) -> list[Path]:
    """The shards a pattern names, in order; DatasetError when none is given
    or one is missing / not a tar file."""
    paths = [Path(p) for p in expand_braces(str(pattern))]
    if len(set(paths)) != len(paths):
        raise DatasetError(f"--root {clip(pattern)}: names some shard twice")
    for p in paths:
        if not p.is_file():
            raise DatasetError(f"webdataset shard {clip(p)} does not exist (from --root {clip(pattern)})")
    return paths


@dataclass(frozen=True)
class Member:
    shard: int  # index into the shard list
    name: str  # member name inside the tar
    offset: int
    size: int


def index_shard(path: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """[(key, {ext: member})] in member order."""
    try:
        tf = tarfile.open(path, "r:")  # uncompressed only: members must be readable at their offsets
    except tarfile.ReadError as e:
        raise DatasetError(f"webdataset shard {path} is not an uncompressed tar file ({e}); img2dataset writes "
                           "plain .tar shards") from None
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tf:
        try:
            for ti in tf:
                if not ti.isfile():
                    continue
                d, base = os.path.split(ti.name)
                if base.startswith(".") or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = f"{d}/{stem}" if d else stem
                samples.setdefault(key, {})[ext.lower()] = ti
        except tarfile.TarError as e:
            raise DatasetError(f"webdataset shard {path} is damaged: {e}") from None
    return list(samples.items())


class TarReader:
    """Reads a manifest row's bytes from its shard: ``read(path)`` with the
    manifest's ``path``.  Safe in threads and in forked processes (each
    process opens its own descriptors)."""

    def __init__(self, shards: list[Path], members: dict[str, Member], shard_starts: list[int]):
        self.shards, self.members, self.shard_starts = shards, members, shard_starts
        self._fds: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"shards": self.shards, "members": self.members, "shard_starts": self.shard_starts}

    def __setstate__(self, state):
        self.__init__(state["shards"], state["members"], state["shard_starts"])

    def _fd(self, shard: int) -> int:
        k = (os.getpid(), shard)
        fd = self._fds.get(k)
        if fd is None:
            with self._lock:
                fd = self._fds.get(k)
                if fd is None:
                    fd = os.open(self.shards[shard], os.O_RDONLY)
                    self._fds[k] = fd
        return fd

    def read(self, path: str) -> bytearray:
        m = self.members.get(str(path))
        if m is None:
            raise FileNotFoundError(f"{path} is not a member of the indexed shards")
        buf = bytearray(m.size)
        got = os.preadv(self._fd(m.shard), [buf], m.offset)
        if got != m.size:
            raise OSError(f"{self.shards[m.shard]}: member {m.name} is truncated ({got} of {m.size} bytes)")
        return buf

    def identity(self, path: str, *, with_hash: bool = True) -> tuple[int, int, bytes]:
        """(size, mtime_ns, hash) of a member, as :func:`iqa_cache.cache.file_identity`
        gives them for a file: the member's size, its shard's mtime, and the
        same digest of the member's bytes (so a member and a file with the
        same bytes have the same hash)."""
        import hashlib

        from ..schema import IDENTITY_BYTES

        m = self.members.get(str(path))
        if m is None:
            return -1, -1, b""
        try:
            mtime = os.stat(self.shards[m.shard]).st_mtime_ns
        except OSError:
            return -1, -1, b""
        if not with_hash:
            return m.size, int(mtime), b""
        try:
            data = self.read(path)
        except OSError:
            return m.size, int(mtime), b""
        h = hashlib.blake2b(digest_size=8)
        h.update(int(m.size).to_bytes(8, "little"))
        if m.size <= 2 * IDENTITY_BYTES:
            h.update(data)
        else:
            h.update(data[:IDENTITY_BYTES])
            h.update(data[-IDENTITY_BYTES:])
        return m.size, int(mtime), h.hexdigest().encode("ascii")

    def close(self) -> None:
        pid = os.getpid()
        for (p, s), fd in list(self._fds.items()):
            if p == pid:
                os.close(fd)
                del self._fds[(p, s)]


def _number(text: str, where: str) -> float:
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: label {clip(repr(text))} is not a number") from None
    if not math.isfinite(x):
        raise DatasetError(f"{where}: label {clip(repr(text))} is not a finite number")
    if abs(x) > FLOAT32_MAX:
        raise DatasetError(f"{where}: label {clip(repr(text))} is beyond float32 (at most {FLOAT32_MAX:.4g} in "
                           "magnitude), which labels are stored as")
    return x


def load_webdataset(pattern: str | os.PathLike, *, label_key: str | None = None, split_key: str | None = None,
                    label_range: tuple[float, float] | None = None, split_seed: int = 0,
                    out_of_range: str = "error", require_labels: bool = True,
                    name: str = "webdataset") -> Manifest:
    """The samples of the shards ``pattern`` names, as a manifest whose
    ``reader`` reads images from the tar members."""
    shards = shard_paths(pattern)
    root = Path(os.path.commonpath([str(p.parent.resolve()) for p in shards]))
    members: dict[str, Member] = {}
    ids, paths, keys, jsons, extras, starts = [], [], [], [], [], []
    n_without_image = 0
    for s, shard in enumerate(shards):
        starts.append(len(ids))
        rel = os.path.relpath(shard.resolve(), root)
        for key, parts in index_shard(shard):
            ext = next((e for e in IMAGE_EXTS if e in parts), None)
            if ext is None:
                n_without_image += 1
                continue
            ti = parts[ext]
            p = f"{rel}/{ti.name}"
            members[p] = Member(s, ti.name, ti.offset_data, ti.size)
            ids.append(key)
            keys.append((s, key))
            paths.append(p)
            jsons.append(parts.get("json"))
            extras.append(parts)
    if n_without_image:
        log.warning("%d sample(s) of %s have no image member (%s): skipped", n_without_image, pattern,
                    "/".join(IMAGE_EXTS))
    if not ids:
        raise DatasetError(f"--root {pattern}: the {len(shards)} shard(s) hold no image samples")
    if len(set(ids)) != len(ids):  # keys repeat across shards: qualify them with the shard's name
        ids = [f"{shards[s].name}/{k}" for s, k in keys]
        if len(set(ids)) != len(ids):
            dup = next(x for x in ids if ids.count(x) > 1)
            raise DatasetError(f"--root {pattern}: sample {dup} appears twice in one shard")

    # metadata: json members (small) and text members, read through one handle per shard
    meta: list[dict] = []
    handles: dict[int, object] = {}
    try:
        def text(s: int, ti: tarfile.TarInfo) -> str:
            f = handles.get(s) or handles.setdefault(s, open(shards[s], "rb"))
            f.seek(ti.offset_data)
            return f.read(ti.size).decode("utf-8", "replace")

        for (s, key), js, parts in zip(keys, jsons, extras):
            d: dict = {}
            if js is not None:
                try:
                    d = json.loads(text(s, js))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"webdataset shard {shards[s]}, sample {key}: {js.name} is not JSON "
                                       f"({e})") from None
                if not isinstance(d, dict):
                    d = {}
            for ext in ("cls", "txt"):
                if ext in parts and ext not in d:
                    d["." + ext] = parts[ext]
            meta.append(d)

        first = meta[0]
        if label_key is None:
            label_key = next((k for k in LABEL_KEYS if k in first), None)
            if label_key is None and ".cls" in first:
                label_key = "cls"
        labels = np.full(len(ids), np.nan)
        if label_key is None:
            if require_labels:
                raise DatasetError(f"--root {pattern}: sample {ids[0]} has no label (looked for json keys "
                                   f"{', '.join(LABEL_KEYS)} and a .cls member); name it with --label-col")
        else:
            for i, ((s, key), d) in enumerate(zip(keys, meta)):
                where = f"webdataset shard {shards[s]}, sample {key}"
                if label_key in d:
                    labels[i] = _number(d[label_key], where + f", json key '{label_key}'")
                elif "." + label_key in d:
                    labels[i] = _number(text(s, d["." + label_key]).strip(), where + f", {key}.{label_key}")
                elif require_labels:
                    raise DatasetError(f"{where}: no label (json key or member '{label_key}', --label-col)")
    finally:
        for f in handles.values():
            f.close()

    if split_key is None:
        split_key = next((k for k in SPLIT_KEYS if k in meta[0]), None)
    if split_key is not None:
        split = []
        for (s, key), d in zip(keys, meta):
            v = SPLIT_ALIASES.get(str(d.get(split_key, "")).strip().lower())
            if v is None:
                raise DatasetError(f"webdataset shard {shards[s]}, sample {key}: split {d.get(split_key)!r} in json "
                                   f"key '{split_key}' is not one of train/val/test")
            split.append(v)
        split = np.array(split, dtype=object)
        split_source = f"json key '{split_key}' of each sample"
    else:
        split = seeded_split(len(ids), split_seed)
        split_source = f"seeded random split, seed {split_seed}, KonIQ-10k proportions 7058/1000/2015"
    known = np.isfinite(labels)
    if label_range is None:
        label_range = default_label_range(labels[known]) if known.any() else (0.0, 1.0)
    ids_arr = np.array(ids, dtype=object)
    notes: tuple[str, ...] = ()
    keep = np.ones(len(ids), dtype=bool)
    if known.all():
        labels, keep, note = _apply_range(labels, ids_arr, label_range, out_of_range, Path(str(pattern)),
                                          str(label_key))
        notes = (note,) if note else ()
    reader = TarReader(shards, members, starts)
    if not keep.all():
        kept_rows = np.flatnonzero(keep)
        reader.shard_starts = [int(np.searchsorted(kept_rows, st)) for st in starts]
    return Manifest(name=name, root=root, image_id=ids_arr[keep], path=np.array(paths, dtype=object)[keep],
                    label=labels[keep].astype(np.float32), split=split[keep], label_range=label_range,
                    label_name=str(label_key or ""), source=str(pattern), split_source=split_source, notes=notes,
                    reader=reader)

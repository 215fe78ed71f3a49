"""A rerun of ``iqa embed`` on an existing cache: :func:`plan_update`
compares it with the manifest and the files under its root;
:func:`apply_in_place` rewrites labels, splits, root and identities at their
fixed offsets and marks changed rows pending; :func:`rebuild` creates the
replacement cache holding the rows that are kept."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import CHUNK_ROWS, FAILED, OK, PENDING, REASON_BYTES
from .attrs import _manifest_state, _py, _read_state, _root_str, _same, _write_state
from .files import _open, disk_guard, fsync_path
from .identity import Identities
from .read import read_attrs
from .writer import _splits_bytes, create


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
            fsync_path(path)
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
    fsync_path(new)

"""The cache's attributes: HDF5 values as plain Python and back, how they
are compared with what was asked (:func:`differences`), and the mutable ones
in the two ``/state`` slots (JSON + CRC, written alternately; the newest
valid slot wins, so a torn write leaves the previous one)."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CacheError
from ..schema import HISTORY_LEN, STATE_BYTES
from .files import fsync_path


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
        fsync_path(path)
    return new


def _root_str(root: Path) -> str:
    """A dataset root as the cache records it (resolved)."""
    return str(Path(root).resolve())


def _manifest_state(manifest) -> dict[str, Any]:
    """The ``/state`` attributes that come from the manifest (root, label
    name and range, split source, its digest)."""
    return {"dataset_root": _root_str(manifest.root), "dataset_source": manifest.source,
            "label_name": manifest.label_name, "label_range": [float(x) for x in manifest.label_range],
            "split_source": manifest.split_source, "manifest_sha256": manifest.fingerprint()}

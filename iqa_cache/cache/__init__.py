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

One module per job, each importing its siblings (never this package):

* :mod:`.files` — the file on disk: default name, checked opening, fsync,
  atomic replacement, temporaries, :class:`WriterLock`, :func:`disk_guard`;
* :mod:`.attrs` — attribute values, :func:`differences`, the ``/state`` slots;
* :mod:`.identity` — :func:`file_identity`, :class:`Identities`, :func:`content_id`;
* :mod:`.read` — :func:`read_attrs`, :func:`is_iqa_cache`, :class:`CacheData`,
  :func:`load`, :func:`failures`, :func:`iter_summary`;
* :mod:`.stream` — :class:`RowReader`: chosen rows' features from the file
  (training on caches larger than memory);
* :mod:`.writer` — :func:`create` and :class:`CacheWriter` (crash safety);
* :mod:`.update` — :class:`UpdatePlan`, :func:`plan_update`,
  :func:`apply_in_place`, :func:`rebuild`.

The schema's constants live in the torch- and h5py-free :mod:`iqa_cache.schema`
and are re-exported here with everything above.
"""
from ..errors import CacheError
from ..schema import (
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
from .attrs import _attr_value, _py, _read_state, _write_state, differences
from .files import (
    HDF5_SIGNATURE,
    WriterLock,
    default_cache_path,
    describe_file,
    disk_guard,
    fsync_path,
    next_path,
    remove_stale_temporaries,
    replace_with,
)
from .identity import Identities, content_id, file_identity
from .read import CacheData, failures, is_iqa_cache, iter_summary, load, read_attrs
from .stream import RowReader
from .update import UpdatePlan, apply_in_place, plan_update, rebuild
from .writer import CacheWriter, create

_fsync_path = fsync_path  # the name it had before the split

__all__ = [
    "CHUNK_ROWS", "DATA_KEYS", "FAILED", "FEATURE_KEYS", "HISTORY_LEN", "IDENTITY_BYTES", "OK", "PENDING",
    "READABLE_SCHEMAS", "REASON_BYTES", "SCHEMA", "SCHEMA_VERSION", "SPLIT_BYTES", "STATE_BYTES", "STATE_KEYS",
    "CacheData", "CacheError", "CacheWriter", "HDF5_SIGNATURE", "Identities", "RowReader", "UpdatePlan",
    "WriterLock",
    "apply_in_place", "content_id", "create", "default_cache_path", "describe_file", "differences", "disk_guard",
    "failures", "file_identity", "fsync_path", "is_iqa_cache", "iter_summary", "load", "next_path", "plan_update",
    "read_attrs", "rebuild", "remove_stale_temporaries", "replace_with",
    # used by tests that write /state or attributes by hand
    "_attr_value", "_fsync_path", "_py", "_read_state", "_write_state",
]

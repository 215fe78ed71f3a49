"""The cache file's schema constants (docs/cache-schema.md): names, sizes,
status codes and which attributes define the features and the data.  No
h5py here, so that reading runs (`iqa report`) does not load it."""
from __future__ import annotations

from enum import Enum
from typing import Any

SCHEMA = "iqa-cache"
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
PENDING, OK, FAILED = 0, 1, 2
REASON_BYTES = 240
SPLIT_BYTES = 16
CHUNK_ROWS = 256
STATE_BYTES = 8192
IDENTITY_BYTES = 64 * 1024  # hashed at each end of a file
HISTORY_LEN = 20
# The largest finite float32: labels and predictions are stored as float32, beyond it they become inf.
FLOAT32_MAX = 3.4028234663852886e38
# Attributes that may change after creation: they live in /state (schema 2).
STATE_KEYS = ("n_embedded", "n_failed", "complete", "finished_at", "device", "dataset_root", "dataset_source",
              "label_name", "label_range", "split_source", "manifest_sha256", "labels_version", "content_id",
              "updating", "history")

# Attributes that define what the features *are*: two caches agreeing on all
# of them hold interchangeable features.
FEATURE_KEYS = ("model", "model_config_json", "pretrained_kind", "pretrained_sha256", "init_seed", "precision",
                "feature", "feature_dim", "image_size", "resize_mode", "interpolation", "mean", "std",
                "exif_transpose", "feature_dtype")

# How /embeddings is stored (`--dtype`): float16 halves the file (a 10-million
# image cache of 768-d features: 15 GB instead of 30); readers get float32.
# A cache without the attribute (written before it existed) is float32.
class FeatureDtype(str, Enum):
    """How a cache stores its features (``--dtype``)."""

    float32 = "float32"
    float16 = "float16"


FEATURE_DTYPES = tuple(d.value for d in FeatureDtype)
DEFAULT_FEATURE_DTYPE = "float32"
FLOAT16_MAX = 65504.0
# ... and these define *which* images, labels and splits it holds.
DATA_KEYS = ("dataset", "manifest_sha256", "n_images", "content_id")

IMPORTED = "imported"  # the feature_source attribute of a cache made by `iqa import`


def item_noun(cache_attrs: dict[str, Any] | None) -> str:
    """How tables name a cache's rows: ``images`` for embedded images,
    ``items`` for imported features (which need not be images)."""
    return "items" if (cache_attrs or {}).get("feature_source") == IMPORTED else "images"

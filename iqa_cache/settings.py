"""Light settings of the other commands (demo, predict, import): plain
dataclasses without torch, h5py or pandas, so that the CLI can declare its
options and defaults from them without importing the engines.  The engines
re-export them from their old places (:mod:`iqa_cache.demo`,
:mod:`iqa_cache.predict`, :mod:`iqa_cache.cache.importer`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .schema import DEFAULT_FEATURE_DTYPE

__all__ = ["DEFAULT_TAG", "DemoConfig", "PredictConfig", "ImportConfig", "EvaluateConfig", "EVALUATE_SPLITS"]

DEFAULT_TAG = "laion2b_s34b_b79k"  # OpenCLIP's LAION-2B weights of ViT-B-32


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("cache") / "demo-data"
    cache_dir: Path = Path("cache")
    runs_dir: Path = Path("runs") / "demo"
    n_images: int = 600  # train + val, KonIQ-like labels
    test_per_range: int = 100  # balanced test split: this many per label range (intervals ~0.6 MAE wide)
    model: str = "ViT-B-32"
    pretrained: str = DEFAULT_TAG
    offline: bool = False
    device: str = "auto"
    batch_size: int = 32
    epochs: int = 80  # constant lr; the best (val) epoch of the demo heads lies near 20
    lr: float = 1e-3
    seed: int = 0
    seeds: int = 5  # seeds per variant (seed, seed + 1, ...), trained in one pass of the grid engine

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")


EVALUATE_SPLITS = ("all", "train", "val", "test")


@dataclass(frozen=True)
class EvaluateConfig:
    """``iqa evaluate``: ``split`` the other cache's rows scored (``all``
    of its labelled items by default); ``label_map`` (A, B): its labels
    mapped onto the training scale as ``A * label + B`` (recorded), so that
    MAE per range compares."""

    split: str = "all"
    label_map: tuple[float, float] | None = None
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.split not in EVALUATE_SPLITS:
            raise ConfigError(f"--split '{self.split}' is not one of {', '.join(EVALUATE_SPLITS)}")
        if self.label_map is not None:
            a, b = (float(x) for x in self.label_map)
            if not (math.isfinite(a) and math.isfinite(b) and a != 0):
                raise ConfigError(f"--label-map {a:g},{b:g} must be two finite numbers A,B with A not 0")
            object.__setattr__(self, "label_map", (a, b))


@dataclass(frozen=True)
class PredictConfig:
    """``pretrained``: a checkpoint file to use instead of the recorded one
    (a moved file; still checksum-verified).  ``workers`` None: decode in
    the main process for small inputs, else in a few processes."""

    pretrained: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")


@dataclass(frozen=True)
class ImportConfig:
    """``features_key``/``ids_key``: the array (npz, h5) or column (parquet)
    holding the features and the ids [default: the first of
    :data:`FEATURE_KEYS` / :data:`ID_KEYS` present; for npz/h5 also the only
    2-D array; for parquet without a feature column, every numeric column but
    the ids].  ``id_col``/``label_col``/``split_col``: CSV columns (defaults
    as ``iqa embed --dataset csv``; no split column: a seeded split)."""

    features: Path
    labels: Path
    out: Path
    features_key: str | None = None
    ids_key: str | None = None
    id_col: str | None = None
    label_col: str | None = None
    split_col: str | None = None
    label_range: tuple[float, float] | None = None
    out_of_range: str = "error"
    split_seed: int = 0
    name: str | None = None
    overwrite: bool = False
    feature_dtype: str = DEFAULT_FEATURE_DTYPE  # how the cache stores the features: float32 or float16
    # what made the features (e.g. "ViT-B-32/laion2b 224px"), declared by the user: `iqa evaluate` compares it
    feature_source: str | None = None

"""Imbalanced, learnable synthetic caches on the label scales users bring,
imported the way a user imports features (``iqa import``'s importer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# name -> (lo, hi, step): labels in [lo, hi], rounded to multiples of step (0: continuous, 2 decimals of the range)
SCALES = {
    "0-1": (0.0, 1.0, 0.0),
    "1-5 MOS": (1.0, 5.0, 0.0),
    "0-5 by 0.2": (0.0, 5.0, 0.2),
    "0-100": (0.0, 100.0, 0.0),
    "0-4 integers": (0.0, 4.0, 1.0),
}


def scale_labels(scale: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Imbalanced labels on ``scale``: most near 60 % of the range, thin tails
    reaching both ends (the extremes present, so the recorded range is the scale)."""
    lo, hi, step = SCALES[scale]
    u = np.clip(rng.beta(5.0, 3.5, n), 0.0, 1.0)
    u[:2] = (0.0, 1.0)
    y = lo + u * (hi - lo)
    if step:
        y = lo + np.round((y - lo) / step) * step
    else:
        y = np.round(y, 4 if hi - lo < 10 else 2)
    return np.clip(y, lo, hi)


def import_scale_cache(tmp: Path, scale: str, *, n: int = 600, d: int = 16, seed: int = 0) -> Path:
    """Features whose label is a smooth function of them (plus noise) with
    labels on ``scale``, written as an .npy and a CSV and imported into
    ``tmp/<scale>.h5`` with the range left to the importer (the first common
    scale that holds the labels)."""
    from iqa_cache.cache.importer import ImportConfig, import_features

    rng = np.random.default_rng(seed)
    lo, hi, _ = SCALES[scale]
    y = scale_labels(scale, n, rng)
    t = (y - lo) / (hi - lo) * 4 - 2
    basis = rng.normal(size=(4, d))
    x = np.stack([t, np.sin(2 * t), t ** 2 - 1, np.cos(t)], 1) @ basis + 0.3 * rng.normal(size=(n, d))
    stem = "".join(c if c.isalnum() else "_" for c in scale)
    ids = np.array([f"img{i:05d}" for i in range(n)])
    np.save(tmp / f"{stem}.npy", x.astype(np.float32))
    pd.DataFrame({"image_id": ids, "label": y}).to_csv(tmp / f"{stem}.csv", index=False)
    out = tmp / f"{stem}.h5"
    import_features(ImportConfig(features=tmp / f"{stem}.npy", labels=tmp / f"{stem}.csv", out=out,
                                 name=f"synthetic {scale}"))
    return out

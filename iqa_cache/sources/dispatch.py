"""``--dataset``: which loader reads a dataset.

The dispatch sits above the loaders it picks from: :mod:`iqa_cache.sources.datasets`
(KonIQ-10k, SPAQ, folder + CSV), :mod:`iqa_cache.sources.synth` (the generated demo
set) and :mod:`iqa_cache.sources.wds` (WebDataset shards), so that none of them
imports another to be dispatched to.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..errors import DatasetError
from .datasets import Manifest, load_csv, load_koniq, load_spaq
from .synth import SynthSpec, ensure_dataset
from .wds import load_webdataset

# the datasets whose loaders fix the label scale themselves (said after `iqa embed`); the others choose it from
# the labels (binning.default_label_range) unless --label-range declares it
OWN_SCALES = {"koniq": "KonIQ-10k's own scale", "demo": "KonIQ-10k's own scale", "spaq": "SPAQ's own scale"}
DATASETS = ("koniq", "spaq", "csv", "demo", "webdataset")
DEMO_ROOT = Path("cache") / "demo-data"


def load_dataset(name: str, root: str | os.PathLike | None = None, *, csv: str | os.PathLike | None = None,
                 resolution: str | None = None, image_col: str | None = None, label_col: str | None = None,
                 split_col: str | None = None, label_range: tuple[float, float] | None = None,
                 split_seed: int = 0, out_of_range: str = "error") -> Manifest:
    """Dispatch on the dataset name (``--dataset``).  ``demo`` generates the
    synthetic demo set under ``root`` (default ``cache/demo-data``) first;
    ``webdataset``: ``root`` is a brace pattern of tar shards and
    ``label_col``/``split_col`` name json keys (:mod:`iqa_cache.sources.wds`)."""
    if name not in DATASETS:
        raise DatasetError(f"--dataset '{name}' is not one of {', '.join(DATASETS)}")
    if name == "demo":
        root = Path(root) if root is not None else DEMO_ROOT
        ensure_dataset(root, SynthSpec(), progress=True)
        m = load_koniq(root, split_seed=split_seed, out_of_range=out_of_range)
        return replace(m, name="demo")
    if root is None:
        raise DatasetError(f"--dataset {name} needs --root (the folder holding the dataset)")
    if name == "koniq":
        return load_koniq(root, resolution=resolution, csv=csv, split_seed=split_seed, out_of_range=out_of_range)
    if name == "spaq":
        return load_spaq(root, csv=csv, split_seed=split_seed, out_of_range=out_of_range)
    if name == "webdataset":
        return load_webdataset(root, label_key=label_col, split_key=split_col, label_range=label_range,
                               split_seed=split_seed, out_of_range=out_of_range)
    if csv is None:
        raise DatasetError("--dataset csv needs --csv (the CSV naming each image, its label and split)")
    return load_csv(root, csv, image_col=image_col, label_col=label_col, split_col=split_col,
                    label_range=label_range, split_seed=split_seed, out_of_range=out_of_range)

"""The demo's synthetic data: a KonIQ-like train/val split and, with
``test_per_range``, a test split balanced over the five label ranges."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from iqa_cache.sources.synth import SynthSpec, make_dataset


def test_balanced_test_split_fills_every_range(tmp_path):
    make_dataset(tmp_path, SynthSpec(n=30, size=(64, 48), seed=1, test_per_range=10))
    df = pd.read_csv(tmp_path / "koniq10k_distributions_sets.csv")
    assert len(df) == 80
    assert set(df["set"][:30]) == {"training", "validation"} and (df["set"][30:] == "test").all()
    test = df[df["set"] == "test"]["MOS"].to_numpy()
    counts = np.histogram(test, bins=[0, 20, 40, 60, 80, 100.01])[0]
    assert counts.min() >= 8, counts  # 10 drawn per range; rater noise may move one or two across an edge
    # the label is what the distortions did: strong degradations for low labels, none near the top
    rows = [json.loads(line) for line in (tmp_path / "distortions.jsonl").read_text().splitlines()]
    for r in rows[30:]:
        achieved = 1 - np.prod([1 - v for v in r["distortions"].values()])
        assert abs(90 * (1 - achieved) - r["label"]) < 8


def test_without_test_per_range_the_dataset_is_unchanged(tmp_path):
    """The default spec (tests, benchmarks) still makes KonIQ's 70/10/20 split."""
    make_dataset(tmp_path, SynthSpec(n=40, size=(64, 48), seed=3))
    df = pd.read_csv(tmp_path / "koniq10k_distributions_sets.csv")
    assert len(df) == 40 and df["set"].value_counts().to_dict() == {"training": 28, "test": 8, "validation": 4}

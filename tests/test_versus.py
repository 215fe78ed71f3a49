"""``iqa report --versus``: every row against one, on seed-averaged
predictions, with the seeds' sign agreement; checked on constructed runs
against a direct numpy computation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iqa_cache.report.compare import versus_entries
from iqa_cache.report.render import versus_cells
from iqa_cache.report.types import Entry
from iqa_cache.train.runs import Run

LABELS = np.array([5.0, 15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0] * 4)


def run(name: str, seed: int, pred: np.ndarray) -> Run:
    n = len(LABELS)
    df = pd.DataFrame({"image_id": [f"i{j:03d}" for j in range(n)], "split": ["test"] * n, "label": LABELS,
                       "pred": pred})
    cfg = {"train": {"seed": seed, "label_range": [0.0, 100.0]}, "cache": {"label_range": [0.0, 100.0]}}
    return Run(path=Path(f"/runs/{name}_s{seed}"), name=f"{name}_s{seed}", config=cfg, predictions=df, metrics={})


def test_versus_uses_seed_averaged_predictions_and_counts_agreeing_seeds():
    rng = np.random.default_rng(0)
    base = [run("base", s, LABELS + rng.normal(0, 6, len(LABELS))) for s in range(3)]
    # A: better on low labels in seeds 0 and 1, worse in seed 2
    shift = [np.where(LABELS < 20, -3.0, 0.0), np.where(LABELS < 20, -3.0, 0.0), np.where(LABELS < 20, 9.0, 0.0)]
    a = [run("a", s, base[s].predictions["pred"].to_numpy() + shift[s] * np.sign(
        base[s].predictions["pred"].to_numpy() - LABELS)) for s in range(3)]
    entries = [Entry("base (3 seeds)", base, "seeds"), Entry("a (3 seeds)", a, "seeds")]
    v = versus_entries(entries, "/runs/base_s0", split="test", n_boot=500, seed=1)
    assert v.base == "base (3 seeds)" and v.columns[-1] == "All" and len(v.rows) == 1
    name, cells = v.rows[0]
    assert name == "a (3 seeds)"
    pa = np.mean([r.predictions["pred"] for r in a], axis=0)
    pb = np.mean([r.predictions["pred"] for r in base], axis=0)
    low = LABELS < 20
    want_low = np.abs(LABELS - pa)[low].mean() - np.abs(LABELS - pb)[low].mean()
    want_all = np.abs(LABELS - pa).mean() - np.abs(LABELS - pb).mean()
    assert cells[0].diff.estimate == pytest.approx(want_low) and cells[-1].diff.estimate == pytest.approx(want_all)
    assert cells[0].diff.low <= want_low <= cells[0].diff.high
    per_seed = [np.abs(LABELS - a[s].predictions["pred"])[low].mean()
                - np.abs(LABELS - base[s].predictions["pred"])[low].mean() for s in range(3)]
    assert cells[0].seeds == 3
    assert cells[0].agree == sum(np.sign(d) == np.sign(want_low) for d in per_seed)
    # seed 2's large loss outweighs seeds 0 and 1's gains in the seed average: only seed 2 agrees with it
    assert want_low > 0 and cells[0].agree == 1
    # ranges where A equals the base: no difference, no agreeing seed
    assert cells[2].diff.estimate == pytest.approx(0.0) and cells[2].agree == 0
    text = versus_cells(v)[0][1][0]
    assert text.endswith("1/3") and not text.startswith("**")  # bold only when every seed agrees


def test_versus_names_a_base_that_is_not_in_the_report():
    from iqa_cache.errors import RunError

    entries = [Entry("x", [run("x", 0, LABELS)], "run")]
    with pytest.raises(RunError, match="--versus /runs/nope: not among the finished runs"):
        versus_entries(entries, "/runs/nope", split="test")

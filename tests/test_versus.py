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


def run(name: str, seed: int, pred: np.ndarray, labels: np.ndarray = LABELS, scale: float = 100.0,
        train: np.ndarray | None = None) -> Run:
    n = len(labels)
    train = np.zeros(0) if train is None else train
    df = pd.DataFrame({"image_id": [f"i{j:03d}" for j in range(n)] + [f"t{j:03d}" for j in range(len(train))],
                       "split": ["test"] * n + ["train"] * len(train), "label": np.r_[labels, train],
                       "pred": np.r_[pred, train]})
    cfg = {"train": {"seed": seed, "label_range": [0.0, scale]}, "cache": {"label_range": [0.0, scale]},
           "bins": {"lo": 0.0, "hi": scale, "size": scale / 10}}
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
    assert v.base == "base (3 seeds)" and v.columns[5] == "All" and len(v.rows) == 1
    assert v.columns[6:] == ["many-shot", "medium-shot", "few-shot", "SRCC", "PLCC"]
    name, cells = v.rows[0]
    assert name == "a (3 seeds)"
    pa = np.mean([r.predictions["pred"] for r in a], axis=0)
    pb = np.mean([r.predictions["pred"] for r in base], axis=0)
    low = LABELS < 20
    want_low = np.abs(LABELS - pa)[low].mean() - np.abs(LABELS - pb)[low].mean()
    want_all = np.abs(LABELS - pa).mean() - np.abs(LABELS - pb).mean()
    assert cells[0].diff.estimate == pytest.approx(want_low) and cells[5].diff.estimate == pytest.approx(want_all)
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
    # bold only when every seed agrees; this range's 8 images are marked as too few for a verdict
    assert text.endswith("1/3 (n=8)") and not text.startswith("**")


def test_versus_names_a_base_that_is_not_in_the_report():
    from iqa_cache.errors import RunError

    entries = [Entry("x", [run("x", 0, LABELS)], "run")]
    with pytest.raises(RunError, match="--versus /runs/nope: not among the finished runs"):
        versus_entries(entries, "/runs/nope", split="test")


def test_versus_covers_shots_and_correlations_with_digits_for_the_scale():
    """Issue 27: --versus once gave intervals only for label ranges and All,
    with two decimals whatever the scale ('0.00 [-0.02, 0.02] 5/5' on 0-5).
    Now the shot regions (the base's bins and training labels) and SRCC/PLCC
    get intervals and seed agreement too, MAE columns four decimals on 0-5
    (two on 0-100) and correlations three."""
    from scipy import stats

    rng = np.random.default_rng(3)
    labels = np.round(rng.beta(5, 3, 300) * 25) / 5  # 0-5 in steps of 0.2
    train = np.r_[np.full(300, 3.1), np.full(50, 1.5), np.full(5, 0.3)]  # bins of 0.5: many, medium, few
    base = [run("base", s, labels + rng.normal(0, 0.4, len(labels)), labels, 5.0, train) for s in range(2)]
    noise = [rng.normal(0, 0.2, len(labels)) for _ in range(2)]
    a = [run("a", s, labels + noise[s], labels, 5.0, train) for s in range(2)]
    v = versus_entries([Entry("base", base, "seeds"), Entry("a", a, "seeds")], "/runs/base_s0", split="test",
                       n_boot=300, seed=0, many=100, few=20)
    cells = dict(zip(v.columns, v.rows[0][1]))
    pa = np.mean([r.predictions["pred"][:300] for r in a], axis=0)
    pb = np.mean([r.predictions["pred"][:300] for r in base], axis=0)
    shot = np.select([(labels >= 3.0) & (labels < 3.5), (labels >= 1.5) & (labels < 2.0)], ["many", "medium"],
                     "few")
    for s in ("many", "medium", "few"):
        m = shot == s
        want = np.abs(labels - pa)[m].mean() - np.abs(labels - pb)[m].mean()
        c = cells[f"{s}-shot"]
        assert c.diff.n == m.sum() > 0 and c.diff.estimate == pytest.approx(want)
        assert c.diff.low <= want <= c.diff.high and c.diff.high < 0 and c.agree == 2  # A better in every region
    want_srcc = stats.spearmanr(pa, labels)[0] - stats.spearmanr(pb, labels)[0]
    want_plcc = stats.pearsonr(pa, labels)[0] - stats.pearsonr(pb, labels)[0]
    assert cells["SRCC"].diff.estimate == pytest.approx(want_srcc)
    assert cells["PLCC"].diff.estimate == pytest.approx(want_plcc)
    assert 0 < cells["PLCC"].diff.low and cells["PLCC"].agree == 2  # higher correlation: positive, every seed
    text = dict(zip(v.columns, versus_cells(v)[0][1]))
    assert v.decimals == 4
    assert text["All"].startswith(f"**{cells['All'].diff.estimate:.4f} [") and text["All"].endswith(" 2/2**")
    assert text["PLCC"].startswith(f"**{want_plcc:.3f} [{cells['PLCC'].diff.low:.3f}, ")
    koniq = versus_entries([Entry("b", [run("b", 0, LABELS + 3)], "run"),
                            Entry("x", [run("x", 0, LABELS)], "run")], "/runs/b_s0", split="test", n_boot=100)
    # one seed: clear of 0, but never bold (one seed cannot show agreement)
    assert koniq.decimals == 2 and versus_cells(koniq)[0][1][5] == "-3.00 [-3.00, -3.00] 1/1"

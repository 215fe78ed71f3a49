"""The demo's closing lines ("What this run shows"): computed from the run's
own `--versus` intervals, on constructed runs with a clear gain, a clear
loss and noise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iqa_cache.report.compare import versus_entries
from iqa_cache.report.types import Entry
from iqa_cache.report.verdicts import HEADING, verdict_lines, verdict_text
from iqa_cache.train.runs import Run

RNG = np.random.default_rng(7)
LABELS = np.repeat([10.0, 30.0, 50.0, 70.0, 90.0], 60) + RNG.uniform(-5, 5, 300)


def run(name: str, seed: int, pred: np.ndarray) -> Run:
    n = len(LABELS)
    df = pd.DataFrame({"image_id": [f"i{j:03d}" for j in range(n)], "split": ["test"] * n, "label": LABELS,
                       "pred": pred})
    cfg = {"train": {"seed": seed, "label_range": [0.0, 100.0]}, "cache": {"label_range": [0.0, 100.0]}}
    return Run(path=Path(f"/runs/{name}_s{seed}"), name=f"{name}_s{seed}", config=cfg, predictions=df, metrics={})


def constructed_versus():
    seeds = range(5)
    base = [run("vanilla", s, LABELS + RNG.normal(0, 8, len(LABELS))) for s in seeds]
    low = LABELS < 20
    high = LABELS >= 80

    def shifted(name, fn):
        out = []
        for s in seeds:
            p = base[s].predictions["pred"].to_numpy()
            err = p - LABELS
            out.append(run(name, s, LABELS + err * fn(s)))
        return out

    gain = shifted("gain", lambda s: np.where(low, 0.3, 1.0))  # errors in [0,20) cut to 30 %
    loss = shifted("loss", lambda s: np.where(high, 2.0, 1.0))  # errors in [80,100] doubled
    noise = [run("noise", s, LABELS + RNG.normal(0, 8, len(LABELS))) for s in seeds]  # another draw, same size
    entries = [Entry(f"{n} (5 seeds)", rs, "seeds") for n, rs in
               (("vanilla", base), ("gain", gain), ("loss", loss), ("noise", noise))]
    return versus_entries(entries, "/runs/vanilla_s0", split="test", n_boot=1000, seed=0)


def test_clear_gain_clear_loss_and_noise_are_told_apart():
    v = constructed_versus()
    lines = verdict_lines(v)
    gain = [ln for ln in lines if ln.startswith("gain (5 seeds)")]
    loss = [ln for ln in lines if ln.startswith("loss (5 seeds)")]
    noise = [ln for ln in lines if ln.startswith("noise (5 seeds)")]
    assert gain[0].startswith("gain (5 seeds) vs vanilla (5 seeds), [0,20): MAE lower (better) by ")
    assert "5/5 seeds agree, 60 test items)" in gain[0]
    assert gain[-1].startswith("gain (5 seeds) vs vanilla (5 seeds): within the noise in [20,40), [40,60)")
    assert loss[0].startswith("loss (5 seeds) vs vanilla (5 seeds), [80,100]: MAE higher (worse) by ")
    assert not any("better" in ln for ln in loss)
    # correlations (issue 27's --versus columns): higher is better, so a loss lowers them
    assert any(ln.startswith("loss (5 seeds) vs vanilla (5 seeds), PLCC: PLCC lower (worse) by 0.") for ln in loss)
    assert any(ln.startswith("gain (5 seeds) vs vanilla (5 seeds), SRCC: SRCC higher (better) by 0.") for ln in gain)
    assert noise == ["noise (5 seeds) vs vanilla (5 seeds): within the noise everywhere (every 95% interval holds 0)"]


def test_the_numbers_in_the_lines_are_the_versus_cells():
    v = constructed_versus()
    name, cells = v.rows[0]
    c = cells[0].diff
    line = verdict_lines(v, digits=3)[0]
    assert f"by {abs(c.estimate):.3f} (95% interval {c.low:+.3f} to {c.high:+.3f};".replace("-", "−") in line
    text = verdict_text(v)
    assert text.startswith(f"### {HEADING}\n\n- gain (5 seeds)")


def test_an_empty_range_is_named():
    v = constructed_versus()
    from iqa_cache.metrics import BootstrapDiff
    from iqa_cache.report.types import VersusCell

    name, cells = v.rows[2]
    cells[1] = VersusCell(diff=BootstrapDiff(name="[20,40)", n=0, estimate=None, low=None, high=None), agree=0,
                          seeds=5)
    assert "noise (5 seeds) vs vanilla (5 seeds): no test items in [20,40)" in verdict_lines(v)


def test_a_range_of_few_items_gets_no_verdict_and_no_bold():
    from iqa_cache.metrics import MIN_VERDICT_ITEMS, BootstrapDiff
    from iqa_cache.report.render import _verdict, versus_cells
    from iqa_cache.report.types import VersusCell

    v = constructed_versus()
    name, cells = v.rows[0]  # gain: its [0,20) difference is clear, over 60 items
    assert versus_cells(v)[0][1][0].startswith("**")
    few = BootstrapDiff(name="[0,20)", n=2, estimate=-5.0, low=-6.0, high=-4.0)  # clear, but over 2 images
    cells[0] = VersusCell(diff=few, agree=5, seeds=5)
    text = versus_cells(v)[0][1][0]
    assert not text.startswith("**") and text.endswith("5/5 (n=2)")
    assert "gain (5 seeds) vs vanilla (5 seeds): too few test items for a verdict in [0,20) (2)" in verdict_lines(v)
    assert not any(ln.startswith("gain (5 seeds) vs vanilla (5 seeds), [0,20)") for ln in verdict_lines(v))
    assert _verdict(few, "lds", "vanilla") == "too few images (2) for a verdict"
    enough = BootstrapDiff(name="[0,20)", n=MIN_VERDICT_ITEMS, estimate=-5.0, low=-6.0, high=-4.0)
    assert _verdict(enough, "lds", "vanilla") == "lds lower"


def test_one_seed_is_never_bold():
    from iqa_cache.report.render import versus_cells
    from iqa_cache.report.types import VersusCell

    v = constructed_versus()
    name, cells = v.rows[0]
    cells[0] = VersusCell(diff=cells[0].diff, agree=1, seeds=1)
    assert versus_cells(v)[0][1][0].endswith("1/1") and not versus_cells(v)[0][1][0].startswith("**")

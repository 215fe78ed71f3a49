"""Metrics against hand-computed or scipy-computed values on small cases,
and the paired bootstrap on a real and a null difference."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from iqa_cache import metrics as M
from iqa_cache.errors import ConfigError
from iqa_cache.train.imbalance import Bins


def test_mse_rmse_gmean_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([2.0, 0.0, 3.5, 8.0])  # errors 1, 2, 0.5, 4
    assert M.mse(y, p) == pytest.approx((1 + 4 + 0.25 + 16) / 4)
    assert M.rmse(y, p) == pytest.approx(math.sqrt(21.25 / 4))
    assert M.gmean_abs_error(y, p) == pytest.approx((1 * 2 * 0.5 * 4) ** 0.25)  # = 4 ** 0.25
    assert M.gmean_abs_error(y, p) == pytest.approx(stats.gmean(np.abs(y - p)))
    # DIR applies scipy's gmean to the L1 errors: one exact zero makes it 0
    assert M.gmean_abs_error([1.0, 2.0], [1.0, 5.0]) == 0.0
    s = M.error_summary([], [])
    assert s == {"mae": None, "mse": None, "gmean": None, "n": 0}


def test_shot_regions_follow_training_counts_per_bin():
    bins = Bins(0.0, 10.0, 1.0)
    # bin 0: 5 training labels (few), bin 1: 150 (many), bin 2: 100 (medium: not > 100), bin 3: 20 (medium:
    # not < 20), bin 4: 19 (few); the other bins are empty (few)
    train = np.concatenate([np.full(5, 0.5), np.full(150, 1.5), np.full(100, 2.5), np.full(20, 3.5),
                            np.full(19, 4.5)])
    assert list(M.shot_of_bins(bins.counts(train))[:5]) == ["few", "many", "medium", "medium", "few"]
    y = np.array([0.2, 1.1, 1.9, 2.4, 3.0, 4.9, 9.5])
    p = np.array([1.2, 1.1, 2.9, 0.4, 6.0, 4.9, 5.5])  # errors 1, 0, 1, 2, 3, 0, 4
    r = M.shot_metrics(train, y, p, bins, many=100, few=20)
    assert r["many"]["n"] == 2 and r["many"]["mae"] == pytest.approx(0.5)  # 1.1 and 1.9
    assert r["many"]["mse"] == pytest.approx(0.5) and r["many"]["gmean"] == 0.0
    assert r["medium"]["n"] == 2 and r["medium"]["mae"] == pytest.approx(2.5)  # 2.4 and 3.0
    assert r["medium"]["mse"] == pytest.approx((4 + 9) / 2)
    assert r["medium"]["gmean"] == pytest.approx(math.sqrt(6))
    assert r["few"]["n"] == 3 and r["few"]["mae"] == pytest.approx(5 / 3)  # 0.2, 4.9, 9.5
    assert r["all"]["n"] == 7 and r["all"]["mae"] == pytest.approx(11 / 7)
    assert r["bins"] == {"many": 1, "medium": 2, "few": 7}
    # thresholds are configurable, and an empty region is None, never NaN
    r = M.shot_metrics(train, y, p, bins, many=1000, few=0)
    assert r["many"] == {"mae": None, "mse": None, "gmean": None, "n": 0}
    assert r["few"]["n"] == 0 and r["medium"]["n"] == 7
    with pytest.raises(ValueError, match="few-shot threshold"):
        M.shot_of_bins([1, 2], many=10, few=20)


def test_label_value_groups_match_by_rounding_half_up():
    assert M.parse_groups("3;4;3,4") == [(3.0,), (4.0,), (3.0, 4.0)]
    assert [M.group_name(g) for g in M.parse_groups("3;4;3,4")] == ["3", "4", "3&4"]
    for bad, why in (("3;;4", "empty group"), ("3;x", "not a comma-separated"), ("3,3", "repeats")):
        with pytest.raises(ValueError, match=why):
            M.parse_groups(bad)
    y = np.array([3.0, 4.0, 2.6, 3.5, 1.0, 3.49])
    p = np.array([2.0, 3.0, 3.0, 3.0, 1.5, 3.49])  # errors 1, 1, 0.4, 0.5, 0.5, 0
    # 3 matches 3.0, 2.6 (rounds to 3) and 3.49; 3.5 rounds half up to 4
    assert list(M.value_mask(y, (3.0,))) == [True, False, True, False, False, True]
    r = M.group_mae(y, p, [(3.0,), (4.0,), (3.0, 4.0), (0.0,)])
    assert r["3"] == (pytest.approx((1 + 0.4 + 0) / 3), 3)
    assert r["4"] == (pytest.approx((1 + 0.5) / 2), 2)
    assert r["3&4"] == (pytest.approx(2.9 / 5), 5)
    assert r["0"] == (None, 0)
    assert r["All"] == (pytest.approx(3.4 / 6), 6)
    assert M.discrete_values([0, 1, 2, 2, 4]) == [0.0, 1.0, 2.0, 4.0]
    assert M.discrete_values([0.5, 1]) is None and M.discrete_values(np.arange(20)) is None


def test_iqa_correlations_by_hand_and_against_scipy():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    p = np.array([1.0, 3.0, 2.0, 4.0, 5.0])
    m = M.iqa_metrics(y, p)
    assert m["srcc"] == pytest.approx(1 - 6 * 2 / (5 * 24))  # 0.9: one swapped pair, sum d^2 = 2
    assert m["krcc"] == pytest.approx((9 - 1) / 10)  # 9 concordant, 1 discordant of 10 pairs
    assert m["plcc"] == pytest.approx(0.9)  # the values are their own ranks here
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 5))
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 100, 200)
    p = y + rng.normal(0, 10, 200)
    p[:10] = np.round(p[:10])  # ties
    m = M.iqa_metrics(y, p)
    assert m["srcc"] == pytest.approx(stats.spearmanr(p, y)[0])
    assert m["krcc"] == pytest.approx(stats.kendalltau(p, y)[0])
    assert m["plcc"] == pytest.approx(stats.pearsonr(p, y)[0])
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))


def test_plcc_after_logistic_fit_recovers_a_logistic_relation():
    x = np.linspace(-3, 3, 60)
    y = M.logistic4(x, 90.0, 10.0, 1.0, 0.4)  # a monotone, strongly non-linear map
    m = M.iqa_metrics(y, x)
    assert m["srcc"] == pytest.approx(1.0) and m["plcc"] < 0.95  # raw PLCC suffers from the non-linearity
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-6) and m["fit_error"] == m["fit_note"] == ""
    params, why = M.fit_logistic4(x, y)
    assert why == "" and params == pytest.approx([90.0, 10.0, 1.0, 0.4], abs=1e-3)
    # on another scale (labels 0-100 from predictions around 50) the same curve is found
    params, _ = M.fit_logistic4(50 + 10 * x, y)
    assert params == pytest.approx([90.0, 10.0, 60.0, 4.0], abs=1e-2)


def test_logistic_fit_of_a_nearly_linear_relation_tends_to_the_raw_plcc():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, 500)
    y = 0.9 * x + 5 + rng.normal(0, 3, 500)  # linear: the 4PL optimum is an infinitely wide logistic
    m = M.iqa_metrics(y, x)
    assert m["plcc"] - 1e-6 <= m["plcc_logistic"] <= m["plcc"] + 2e-3
    # a residual no larger than the best straight line's (the bound makes the curve linear over the data)
    params, _ = M.fit_logistic4(x, y)
    line = np.polyval(np.polyfit(x, y, 1), x)
    assert np.sum((M.logistic4(x, *params) - y) ** 2) <= np.sum((line - y) ** 2) * (1 + 1e-3)


def test_undefined_correlations_and_failed_fits_are_said(monkeypatch):
    m = M.iqa_metrics([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3.0] * 6)  # a constant prediction (the baseline)
    assert m["srcc"] is m["krcc"] is m["plcc"] is m["plcc_logistic"] is None
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((np.arange(1, 7) - 3.0) ** 2)))
    assert "constant" in m["fit_error"]
    m = M.iqa_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])
    assert m["plcc"] is not None and m["plcc_logistic"] is None and "too few" in m["fit_error"]

    def no_convergence(*a, **k):
        raise ValueError("Residuals are not finite in the initial point")

    monkeypatch.setattr("scipy.optimize.least_squares", no_convergence)
    x = np.linspace(-3, 3, 60)
    m = M.iqa_metrics(M.logistic4(x, 90.0, 10.0, 1.0, 0.4), x)
    assert m["fit_error"] == "" and m["fit_note"].startswith("the optimiser failed (Residuals are not finite")
    assert "best grid fit is used" in m["fit_note"]
    assert 0.99 < m["plcc_logistic"] < 1.0  # the grid's fit: close, not exact


def test_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    n = 400
    base = np.abs(rng.normal(0, 5, n))
    real_a = base
    real_b = base + 0.8 + rng.normal(0, 1, n)  # B is worse by 0.8 on average
    r = M.paired_bootstrap(real_a, real_b, n_boot=2000, seed=0)[0]
    assert r.name == "All" and r.n == n
    assert r.estimate == pytest.approx(np.mean(real_a - real_b))
    assert r.high < 0 and r.contains_zero is False
    # null: two runs whose errors are exchangeable draws
    null_a = np.abs(rng.normal(0, 5, n))
    null_b = np.abs(rng.normal(0, 5, n))
    r = M.paired_bootstrap(null_a, null_b, n_boot=2000, seed=0)[0]
    assert r.low < 0 < r.high and r.contains_zero is True


def test_bootstrap_interval_matches_the_analytic_standard_error_and_is_seeded():
    rng = np.random.default_rng(2)
    a, b = np.abs(rng.normal(0, 3, 1000)), np.abs(rng.normal(0, 3, 1000))
    d = a - b
    r = M.paired_bootstrap(a, b, n_boot=4000, seed=3)[0]
    se = d.std(ddof=0) / math.sqrt(len(d))
    assert (r.high - r.low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert r.low < d.mean() < r.high
    again = M.paired_bootstrap(a, b, n_boot=4000, seed=3)[0]
    assert (again.low, again.high) == (r.low, r.high)
    # chunking the replicates does not change the distribution's interval much
    small = M.paired_bootstrap(a, b, n_boot=4000, seed=3, max_elements=5000)[0]
    assert (small.high - small.low) == pytest.approx(r.high - r.low, rel=0.1)


def test_bootstrap_strata_and_seed_groups():
    rng = np.random.default_rng(4)
    n = 300
    a = np.abs(rng.normal(0, 2, n))
    b = a.copy()
    b[:50] += 3.0  # B is worse only on the first 50 images
    res = M.paired_bootstrap(a, b, {"first": np.arange(50), "rest": np.arange(50, n), "none": np.array([], int)},
                             n_boot=1000, seed=0)
    by = {x.name: x for x in res}
    assert by["first"].estimate == pytest.approx(-3.0) and by["first"].low == pytest.approx(-3.0)
    assert by["rest"].estimate == 0.0 and by["rest"].contains_zero is True  # identical errors there
    assert by["none"].n == 0 and by["none"].estimate is None and by["none"].contains_zero is None
    # several seeds: seed-to-seed spread widens the interval
    spread = np.stack([a - 1.0, a, a + 1.0])  # three seeds of A, mean equal to a
    one = M.paired_bootstrap(a[None, :], b[None, :], n_boot=2000, seed=0)[0]
    seeds = M.paired_bootstrap(spread, b[None, :], n_boot=2000, seed=0)[0]
    assert seeds.estimate == pytest.approx(one.estimate)
    assert (seeds.high - seeds.low) > 3 * (one.high - one.low)
    with pytest.raises(ConfigError, match="same images"):
        M.paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ConfigError, match="--n-boot"):
        M.paired_bootstrap(np.ones(3), np.ones(3), n_boot=0)

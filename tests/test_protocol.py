"""The field's protocol (docs/protocol.md): the ridge linear probe, re-drawn
splits, selection on validation, cross-dataset evaluation and the benchmark
table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iqa_cache import cache
from iqa_cache.errors import ConfigError
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.fit import train_head
from iqa_cache.train.ridge import solve_ridge
from iqa_cache.train.runs import load_head, load_run, write_run

from .conftest import learnable_problem, write_feature_cache


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    x, y, split = learnable_problem(n=600, d=16)
    path = write_feature_cache(tmp_path_factory.mktemp("p") / "f.h5", x, y, split)
    return x, y, split, cache.load(path)


# ------------------------------------------------------------------ ridge

def test_ridge_goes_to_least_squares_as_its_strength_goes_to_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 12)) * rng.uniform(0.1, 10, size=12)
    y = x @ rng.normal(size=12) + 3.0 + rng.normal(size=200)
    w, b = solve_ridge(x, y, np.array([1e-10, 1e3 * len(x)]))
    ls, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)
    np.testing.assert_allclose(w[:, 0], ls[:-1], rtol=1e-7, atol=1e-9)
    assert b[0] == pytest.approx(ls[-1], rel=1e-7)
    # a strong penalty shrinks the weights towards 0 and the intercept towards the mean label
    assert np.abs(w[:, 1]).sum() < 0.1 * np.abs(w[:, 0]).sum()
    assert b[1] == pytest.approx(y.mean(), abs=0.5)


def test_ridge_run_picks_the_validation_best_strength_and_reads_back(problem, tmp_path):
    x, y, split, data = problem
    cfg = TrainConfig.from_flat({"method": "ridge", "ridge_min": 1e-4, "ridge_max": 1e4, "ridge_steps": 9})
    res = train_head(data, cfg)
    tr, va = split == "train", split == "val"
    xc = x.astype(np.float64)
    mean_eig = np.trace(np.cov(xc[tr].T, bias=True) * tr.sum()) / x.shape[1]
    factors = np.logspace(-4, 4, 9)
    w, b = solve_ridge(xc[tr], y[tr].astype(np.float64), factors * mean_eig)
    val = np.abs(xc[va] @ w + b - y[va][:, None]).mean(0)
    assert [h["val_mae"] for h in res.history] == pytest.approx(val.tolist(), rel=1e-6)
    best = int(np.argmin(val))
    assert 0 < best < 8  # an inside optimum: the choice is a real one
    assert res.metrics["ridge_strength"] == pytest.approx(factors[best])
    assert res.best_val_mae == pytest.approx(val.min(), rel=1e-6)
    np.testing.assert_allclose(res.predictions["pred"], xc @ w[:, best] + b[best], rtol=1e-4, atol=1e-3)
    # written and read back like any run: its head gives its predictions
    out = write_run(tmp_path / "ridge_s0", res, data.attrs, data.path)
    head = load_head(out)
    with torch.no_grad():
        again = head(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_run(out).predictions["pred"], again, atol=1e-5)


def test_ridge_refuses_weights_fds_and_a_cache_without_validation(problem, tmp_path):
    with pytest.raises(ConfigError, match="ridge.*drop --lds"):
        TrainConfig.from_flat({"method": "ridge", "lds": True, "reweight": "sqrt_inv"})
    with pytest.raises(ConfigError, match="ridge.*drop --fds"):
        TrainConfig.from_flat({"method": "ridge", "fds": True})
    x, y, split, _ = problem
    nova = write_feature_cache(tmp_path / "nova.h5", x, y, np.where(split == "val", "train", split))
    with pytest.raises(ConfigError, match="no validation rows.*--split-seed"):
        train_head(cache.load(nova), TrainConfig.from_flat({"method": "ridge"}))

"""Training the head: it learns, it is reproducible, LDS/FDS plug in, and a
run directory rebuilds the head."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from iqa_cache import cache
from iqa_cache.errors import ConfigError, RunError, TrainingDiverged
from iqa_cache.train.fit import OptimConfig, TrainConfig, get_lr, train_head
from iqa_cache.train.head import HeadConfig
from iqa_cache.train.imbalance import FDSConfig, LDSConfig
from iqa_cache.train.runs import load_head, load_run, write_run

from .conftest import learnable_problem, write_feature_cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x, y, split = learnable_problem()
    path = write_feature_cache(tmp_path_factory.mktemp("c") / "f.h5", x, y, split)
    return cache.load(path)


SMALL = TrainConfig(head=HeadConfig(hidden_dim=64, n_blocks=1), optim=OptimConfig(lr=3e-3), epochs=40,
                    batch_size=64, device="cpu")


@pytest.mark.slow
def test_training_reduces_validation_mae(data):
    res = train_head(data, SMALL)
    va = data.subset("val")
    baseline = float(np.abs(data.label[va] - data.label[data.subset("train")].mean()).mean())
    first = res.history[0]["val_mae"]
    assert res.best_val_mae < 0.5 * baseline
    assert res.best_val_mae < first
    assert res.metrics["test"]["mae"] < 0.5 * baseline
    assert len(res.predictions) == len(data)
    assert set(res.predictions["split"]) == {"train", "val", "test"}


def test_same_seed_same_metrics_other_seed_differs(data):
    cfg = replace(SMALL, epochs=8, lds=LDSConfig(enabled=True, reweight="sqrt_inv"),
                  fds=FDSConfig(enabled=True, ks=5, sigma=2.0))
    a, b = train_head(data, cfg), train_head(data, cfg)
    c = train_head(data, replace(cfg, seed=1))
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.predictions["pred"], b.predictions["pred"])
    assert a.metrics["test"]["mae"] != c.metrics["test"]["mae"]


@pytest.mark.slow
def test_lds_weights_reach_the_loss(tmp_path):
    # constant features: the head can only learn a constant, and under MSE that
    # constant is the (LDS-)weighted mean of the training labels.  No
    # validation split, so the last epoch is kept (not the best-val one).
    x, y, split = learnable_problem(n=600)
    split = np.where(split == "val", "test", split)
    d = cache.load(write_feature_cache(tmp_path / "const.h5", np.zeros_like(x), y, split))
    cfg = replace(SMALL, loss="mse", optim=OptimConfig(lr=0.2, schedule="cosine"), epochs=150, batch_size=1000)
    lds = LDSConfig(enabled=True, reweight="inverse", ks=5, sigma=2)
    tr = d.subset("train")
    w = lds.weights(d.label[tr], cfg.bins((0, 100)))
    plain_mean, lds_mean = float(d.label[tr].mean()), float(np.average(d.label[tr], weights=w))
    assert plain_mean - lds_mean > 3  # rare low labels pull the weighted mean down
    got_plain = train_head(d, cfg).predictions["pred"].mean()
    got_lds = train_head(d, replace(cfg, lds=lds)).predictions["pred"].mean()
    assert got_plain == pytest.approx(plain_mean, abs=0.5)
    assert got_lds == pytest.approx(lds_mean, abs=0.5)


def test_fds_runs_and_is_identity_at_eval(data):
    res = train_head(data, replace(SMALL, epochs=6, fds=FDSConfig(enabled=True, ks=5, sigma=2)))
    head = res.head
    assert head.fds is not None and int(head.fds.last_update) == res.best_epoch  # state of the kept epoch
    x = torch.from_numpy(data.features[:20])
    head.eval()
    with torch.no_grad():
        plain = head.fc(head.features(x)).squeeze(-1)
        torch.testing.assert_close(head(x, torch.zeros(20, dtype=torch.long), 5), plain)


def test_run_directory_roundtrip(data, tmp_path):
    res = train_head(data, replace(SMALL, epochs=5, fds=FDSConfig(enabled=True)))
    out = write_run(tmp_path / "run", res, data.attrs, data.path)
    assert sorted(p.name for p in out.iterdir()) == [".iqa-run", "config.json", "head.pt", "history.csv",
                                                     "metrics.json", "predictions.csv"]
    state = torch.load(out / "head.pt", weights_only=True)
    assert "fc.weight" in state and "fds.running_mean" in state
    cfg = json.loads((out / "config.json").read_text())
    assert TrainConfig.from_dict(cfg["train"]) == res.config
    assert cfg["cache"]["manifest_sha256"] == data.attrs["manifest_sha256"]
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["image_id", "split", "label", "pred"] and len(preds) == len(data)
    head = load_head(out)
    with torch.no_grad():
        again = head(torch.from_numpy(data.features)).numpy()
    np.testing.assert_allclose(again, preds["pred"].to_numpy(), atol=1e-4)
    with pytest.raises(RunError, match="already exists"):
        write_run(tmp_path / "run", res, data.attrs, data.path)
    write_run(tmp_path / "run", res, data.attrs, data.path, overwrite=True)
    assert load_run(out).metrics["best_epoch"] == res.best_epoch
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_divergence_is_reported(data):
    x = data.features.copy()
    x[0, 0] = np.inf  # bypasses cache checks on purpose
    bad = replace(data, features=x)
    with pytest.raises(TrainingDiverged, match="epoch 0"):
        train_head(bad, replace(SMALL, epochs=2))


def test_get_lr_is_pure():
    o = OptimConfig(lr=0.1, schedule="step")
    assert [get_lr(e, o, 100) for e in (0, 59, 60, 79, 80)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    c = OptimConfig(lr=1.0, schedule="cosine")
    assert get_lr(0, c, 10) == 1.0 and get_lr(5, c, 10) == pytest.approx(0.5)
    assert get_lr(7, OptimConfig(lr=0.3), 10) == 0.3


def test_config_validation():
    with pytest.raises(ConfigError, match="lr"):
        OptimConfig(lr=-1)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"epochz": 3})


def test_dropout_acts_after_fds_on_the_final_features():
    """As in the DIR reference (encoding → FDS.smooth → dropout → linear):
    the features FDS sees and gathers statistics from carry no dropout; the
    calibrated ones are dropped before the final layer.  The stacked head
    (ablate, train_head) does the same."""
    from iqa_cache.train.head import ResidualMLPHead
    from iqa_cache.train.stacked import HeadStack

    torch.manual_seed(0)
    head = ResidualMLPHead(HeadConfig(in_dim=8, hidden_dim=16, n_blocks=2, dropout=0.5),
                           FDSConfig(enabled=True), n_bins=10).train()
    x, b = torch.randn(32, 8), torch.randint(0, 10, (32,))
    assert torch.equal(head.features(x), head.features(x))  # no dropout before FDS
    seen = []
    head.fds.register_forward_hook(lambda m, inp, out: seen.append((inp[0].clone(), out.clone())))
    head.fds.update(head.features(x), b, 0)
    torch.manual_seed(1)
    out = head(x, b, 1)
    z_in, z_cal = seen[-1]
    assert torch.equal(z_in, head.features(x)) and not torch.equal(z_cal, z_in)  # FDS calibrated
    torch.manual_seed(1)
    want = head.fc(torch.nn.functional.dropout(z_cal, 0.5, training=True)).squeeze(-1)
    torch.testing.assert_close(out, want)
    stack = HeadStack.from_heads([head], "cpu")
    torch.testing.assert_close(stack.features(x)[0], head.features(x))
    torch.manual_seed(1)
    torch.testing.assert_close(stack.output(z_cal[None], train=True)[0], want, rtol=1e-5, atol=1e-5)

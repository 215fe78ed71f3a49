"""Early stopping (--patience), the log lines of long work without progress
bars, and --threads (issue 27, items 7 and 8)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from iqa_cache.cli.main import app
from iqa_cache.errors import ConfigError
from iqa_cache.train.config import TrainConfig

from .conftest import learnable_problem, write_feature_cache

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    x, y, split = learnable_problem(n=300, d=8)
    return write_feature_cache(tmp_path_factory.mktemp("pat") / "small.h5", x, y, split)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_flat({"epochs": 40, "hidden": 16, "blocks": 1, "lr": 0.03, "batch_size": 64, **kw})


@pytest.mark.slow
def test_patience_stops_each_configuration_as_if_trained_alone_and_the_stack_when_all_have(small_cache):
    """A stack of three configurations with different patience: each stops
    N epochs after its best validation epoch, its history ends there, and
    its result is the one it gets alone; a run without patience is the same
    run up to that epoch (patience only cuts it short)."""
    from iqa_cache import cache
    from iqa_cache.train.stacked import train_stack

    data = cache.load(small_cache)
    cfgs = [_cfg(patience=2, seed=0), _cfg(patience=3, seed=1), _cfg(patience=2, seed=1, method="lds")]
    stacked = train_stack(data, cfgs)
    full = train_stack(data, [_cfg(seed=0), _cfg(seed=1), _cfg(seed=1, method="lds")])
    for c, s, f in zip(cfgs, stacked, full):
        stop = s.metrics["stopped_epoch"]
        assert stop is not None and stop < c.epochs - 1, "the head should stop improving well before 40 epochs"
        assert stop - s.best_epoch == c.patience and len(s.history) == stop + 1
        val = [h["val_mae"] for h in f.history[:stop + 1]]
        assert [h["val_mae"] for h in s.history] == pytest.approx(val, rel=1e-5)
        assert s.best_epoch == int(np.argmin(val)) and s.best_val_mae == pytest.approx(min(val), rel=1e-5)
        (alone,) = train_stack(data, [c])
        assert alone.metrics["stopped_epoch"] == stop and alone.best_epoch == s.best_epoch
        assert alone.best_val_mae == pytest.approx(s.best_val_mae, rel=1e-5)
        np.testing.assert_allclose(alone.predictions["pred"], s.predictions["pred"], rtol=1e-4, atol=1e-3)
        assert f.metrics["stopped_epoch"] is None and len(f.history) == c.epochs
    with pytest.raises(ConfigError, match="--patience"):
        _cfg(patience=0)


@pytest.mark.slow
def test_no_progress_logs_every_n_epochs_and_each_finished_stack_and_threads_apply(small_cache, tmp_path):
    before = torch.get_num_threads()
    try:
        r = iqa("train-head", "--cache", small_cache, "--epochs", 6, "--hidden", 16, "--blocks", 0, "--no-progress",
                "--log-every", 2, "--threads", 1, "--out", tmp_path / "run")
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("training: ")]
    assert [ln.split(",")[0] for ln in lines] == ["training: epoch 2/6", "training: epoch 4/6", "training: done"]
    assert lines[0].endswith(tuple("0123456789")) and " s, best val MAE " in lines[0]
    assert lines[-1].startswith("training: done, 6 epoch(s) in ")
    r = iqa("ablate", "--cache", small_cache, "--grid", "seed=0,1; fds=on,off", "--epochs", 30, "--patience", 2,
            "--lr", 0.03, "--hidden", 16, "--blocks", 0, "--no-progress", "--log-every", 0, "--out", tmp_path / "abl")
    assert r.exit_code == 0, r.output
    done = [ln for ln in r.stderr.splitlines() if ": done, " in ln]
    assert len(done) == 2 and all(ln.startswith("stack ") for ln in done), r.stderr
    assert "stopped early" in r.stderr
    assert not [ln for ln in r.stderr.splitlines() if ": epoch " in ln]  # --log-every 0: none per epoch
    ms = [json.loads((tmp_path / "abl" / f"seed={s},fds={f}" / "metrics.json").read_text())
          for s in (0, 1) for f in ("on", "off")]
    assert all(m["stopped_epoch"] in (None, m["best_epoch"] + 2) for m in ms)
    assert any(m["stopped_epoch"] is not None for m in ms)
    r = iqa("train-head", "--cache", small_cache, "--threads", 0, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--threads" in r.output


@pytest.mark.slow
def test_a_stack_with_patience_runs_fewer_epochs(small_cache, caplog):
    """The stack stops once all its configurations have: the done line
    counts the epochs it ran."""
    from iqa_cache import cache
    from iqa_cache.train.stacked import train_stack

    data = cache.load(small_cache)
    with caplog.at_level(logging.INFO, logger="iqa_cache"):
        res = train_stack(data, [_cfg(patience=2, seed=0, epochs=200), _cfg(patience=2, seed=1, epochs=200)])
    last = max(r.metrics["stopped_epoch"] for r in res)
    assert f"training: done, {last + 1} epoch(s) in " in caplog.text and last + 1 < 200

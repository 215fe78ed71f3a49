"""Many heads at once: the stacked engine against the simple loop and
against each configuration trained alone; divergence isolation; grids."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from iqa_cache import cache
from iqa_cache.errors import TrainingDiverged
from iqa_cache.head import HeadConfig
from iqa_cache.imbalance import FDSConfig, LDSConfig
from iqa_cache.stacked import plan_stacks, stack_key, train_stack
from iqa_cache.train import OptimConfig, TrainConfig, train_head, train_head_simple

from .conftest import learnable_problem, write_feature_cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x, y, split = learnable_problem(n=700)
    return cache.load(write_feature_cache(tmp_path_factory.mktemp("g") / "f.h5", x, y, split))


BASE = TrainConfig(head=HeadConfig(hidden_dim=48, n_blocks=1), optim=OptimConfig(lr=3e-3), epochs=10,
                   batch_size=64, device="cpu")
LDS = LDSConfig(enabled=True, reweight="sqrt_inv", kernel="gaussian", ks=5, sigma=2.0)
FDS = FDSConfig(enabled=True, kernel="gaussian", ks=5, sigma=2.0)


def assert_same_run(a, b, *, val_atol=2e-4, pred_atol=2e-3):
    """Two results of the same configuration agree to float rounding."""
    assert a.config == b.config
    assert a.best_epoch == b.best_epoch
    va = np.array([h["val_mae"] for h in a.history])
    vb = np.array([h["val_mae"] for h in b.history])
    np.testing.assert_allclose(va, vb, rtol=0, atol=val_atol)
    np.testing.assert_allclose([h["train_loss"] for h in a.history], [h["train_loss"] for h in b.history],
                               rtol=1e-4)
    np.testing.assert_allclose(a.predictions["pred"], b.predictions["pred"], rtol=0, atol=pred_atol)
    for split in ("val", "test"):
        assert a.metrics[split]["mae"] == pytest.approx(b.metrics[split]["mae"], abs=val_atol)
        for name, v in a.metrics[split]["per_bin"].items():
            assert v["n"] == b.metrics[split]["per_bin"][name]["n"]
            if not math.isnan(v["mae"]):
                assert v["mae"] == pytest.approx(b.metrics[split]["per_bin"][name]["mae"], abs=10 * val_atol)
    sa, sb = a.head.state_dict(), b.head.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-3, atol=1e-4, msg=k)


# --------------------------------------------------- engine vs simple loop

@pytest.mark.parametrize("cfg", [
    BASE,
    replace(BASE, lds=LDS),
    replace(BASE, lds=LDS, fds=FDS, loss="mse", optim=OptimConfig(lr=2e-3, schedule="cosine")),
    replace(BASE, fds=replace(FDS, kernel="laplace", ks=7, sigma=1.5, start_update=1, start_smooth=3),
            head=HeadConfig(hidden_dim=32, n_blocks=2), loss="huber", batch_size=1000),  # full batch
], ids=["vanilla", "lds", "lds+fds", "fds-full-batch"])
def test_fast_train_head_equals_the_simple_loop(data, cfg):
    assert_same_run(train_head(data, cfg), train_head_simple(data, cfg))


def test_dropout_masks_follow_the_seed_as_in_the_simple_loop(data):
    cfg = replace(BASE, epochs=3, head=HeadConfig(hidden_dim=48, n_blocks=1, dropout=0.3))
    assert_same_run(train_head(data, cfg), train_head_simple(data, cfg))


# ----------------------------------------------- stacked vs trained alone

MIXED_PLAIN = [  # no FDS: one stack mixing LDS on/off, reweighting, kernels, seeds and learning rates
    BASE,
    replace(BASE, seed=3, lds=LDS),
    replace(BASE, seed=1, lds=replace(LDS, kernel="triang", ks=3, reweight="inverse")),
    replace(BASE, seed=2, lds=LDSConfig(enabled=False, reweight="inverse"), optim=OptimConfig(lr=1e-3)),
    replace(BASE, seed=3, lds=replace(LDS, kernel="laplace", ks=9, sigma=5.0), optim=OptimConfig(lr=1e-3)),
]
MIXED_FDS = [  # FDS on: one stack mixing FDS windows (sizes 1, 3, 5, 9), LDS settings, seeds and lrs
    replace(BASE, fds=FDS),
    replace(BASE, seed=1, lds=LDS, fds=replace(FDS, kernel="triang", ks=3, sigma=1.0)),
    replace(BASE, seed=2, lds=replace(LDS, kernel="laplace", ks=7, sigma=1.0),
            fds=replace(FDS, kernel="laplace", ks=9, sigma=3.0), optim=OptimConfig(lr=5e-3)),
    replace(BASE, seed=1, lds=replace(LDS, sigma=5.0), fds=replace(FDS, ks=1)),
]


@pytest.mark.parametrize("group", [MIXED_PLAIN, MIXED_FDS], ids=["vanilla+lds", "lds+fds"])
def test_a_configuration_in_a_stack_equals_it_trained_alone(data, group):
    assert len(plan_stacks(group, 64)) == 1  # really one stack
    together = train_stack(data, group)
    for cfg, res in zip(group, together):
        assert_same_run(res, train_head(data, cfg))
    # and the configurations really differ from each other
    assert len({round(r.best_val_mae, 4) for r in together}) == len(group)


def test_stacks_group_by_shape(data):
    cfgs = MIXED_PLAIN[:2] + MIXED_FDS[:2] + [replace(BASE, bin_size=2.0, fds=FDS), replace(BASE, epochs=3)]
    stacks = plan_stacks(cfgs, 64)
    assert stacks == [[0, 1], [2, 3], [4], [5]]
    assert plan_stacks(cfgs, 1) == [[i] for i in range(6)]
    assert stack_key(MIXED_FDS[0]) == stack_key(MIXED_FDS[2]) != stack_key(MIXED_PLAIN[0])


def test_a_diverging_configuration_does_not_disturb_the_others(data):
    bad = replace(BASE, seed=5, optim=OptimConfig(lr=1e30))
    group = [MIXED_FDS[0], replace(bad, fds=FDS), MIXED_FDS[1]]
    out = train_stack(data, group)
    assert isinstance(out[1], TrainingDiverged) and "diverged at epoch 0" in str(out[1])
    with pytest.raises(TrainingDiverged, match="diverged at epoch 0"):
        train_head(data, group[1])
    for i in (0, 2):
        assert_same_run(out[i], train_head(data, group[i]))

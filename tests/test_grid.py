"""Many heads at once: the stacked engine against the simple loop and
against each configuration trained alone; divergence isolation; grids."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from iqa_cache import cache
from iqa_cache.errors import TrainingDiverged
from iqa_cache.train.fit import OptimConfig, TrainConfig, train_head
from iqa_cache.train.head import HeadConfig
from iqa_cache.train.imbalance import FDSConfig, LDSConfig
from iqa_cache.train.stacked import plan_stacks, stack_key, train_stack
from tests.reference import train_head_simple

from .conftest import learnable_problem, write_feature_cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x, y, split = learnable_problem(n=600)
    return cache.load(write_feature_cache(tmp_path_factory.mktemp("g") / "f.h5", x, y, split))


BASE = TrainConfig(head=HeadConfig(hidden_dim=32, n_blocks=1), optim=OptimConfig(lr=3e-3), epochs=8,
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
@pytest.mark.slow
def test_fast_train_head_equals_the_simple_loop(data, cfg):
    assert_same_run(train_head(data, cfg), train_head_simple(data, cfg))


def test_dropout_masks_follow_the_seed_as_in_the_simple_loop(data):
    cfg = replace(BASE, epochs=3, head=HeadConfig(hidden_dim=32, n_blocks=1, dropout=0.3))
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ grids

from iqa_cache.errors import ConfigError, RunError  # noqa: E402
from iqa_cache.train.grid import (  # noqa: E402
    GRID_KEYS,
    expand,
    format_summary,
    load_grid_file,
    parse_grid,
    read_grid,
    run_ablation,
)
from iqa_cache.train.runs import load_run  # noqa: E402


def test_inline_grid_parses_in_order_with_typed_values():
    spec = parse_grid(" lds=on; lds_kernel=gaussian, triang,laplace;lds-sigma=1,2,5\nfds=on,off ; lr=1e-3,0.01;"
                      " seed=0,1; lds_ks=5,9; bin_size=0.5")
    assert [k for k, _ in spec.axes] == ["lds", "lds_kernel", "lds_sigma", "fds", "lr", "seed", "lds_ks", "bin_size"]
    d = spec.to_dict()
    assert d["lds"] == [True] and d["fds"] == [True, False] and d["lds_kernel"] == ["gaussian", "triang", "laplace"]
    assert d["lds_sigma"] == [1.0, 2.0, 5.0] and d["lr"] == [0.001, 0.01] and d["seed"] == [0, 1]
    assert d["lds_ks"] == [5, 9] and isinstance(d["lds_ks"][0], int) and d["bin_size"] == [0.5]
    assert spec.size == 1 * 3 * 3 * 2 * 2 * 2 * 2 * 1


def test_toml_grid_file(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('lds = true\nlds_kernel = ["gaussian", "triang"]\nlds_ks = [3, 5.0]\nfds = ["on", false]\n'
                 'reweight = "inverse"\nlr = [0.001, 1e-2]\n')
    spec = read_grid(str(p))
    assert spec.to_dict() == {"lds": [True], "lds_kernel": ["gaussian", "triang"], "lds_ks": [3, 5],
                              "fds": [True, False], "reweight": ["inverse"], "lr": [0.001, 0.01]}
    assert spec.source == str(p)
    (tmp_path / "t.toml").write_text("[grid]\nseed = [0, 1, 2]\n")
    assert load_grid_file(tmp_path / "t.toml").to_dict() == {"seed": [0, 1, 2]}


@pytest.mark.parametrize("text,needles", [
    ("lds=on; kernel=gaussian", ["grid key 'kernel'", "lds_kernel", "fds_sigma"]),
    ("lds_ks=3,4", ["lds_ks='4'", "even", "ks-1 = 3"]),
    ("fds_kernel=box", ["fds_kernel='box'", "gaussian, triang, laplace"]),
    ("lds=maybe", ["lds='maybe'", "on or off"]),
    ("lr=0.1,-1", ["lr='-1'", "positive number"]),
    ("lds_sigma=abc", ["lds_sigma='abc'", "positive number"]),
    ("seed=1.5", ["seed='1.5'", "whole number"]),
    ("reweight=sqrt", ["reweight='sqrt'", "none, inverse, sqrt_inv"]),
    ("lr=0.1; lr=0.2", ["'lr' is given twice"]),
    ("seed=1,1", ["seed: value 1 is given twice"]),
    ("seed=1,", ["empty value"]),
    ("lds", ["not key=value"]),
    (" ; ", ["grid is empty"]),
])
def test_bad_grids_name_the_key_value_and_what_is_allowed(text, needles):
    with pytest.raises(ConfigError) as e:
        parse_grid(text)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_bad_toml_files(tmp_path):
    (tmp_path / "bad.toml").write_text("lds = [on\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_grid(str(tmp_path / "bad.toml"))
    (tmp_path / "nest.toml").write_text("[lds]\nx = 1\n")
    with pytest.raises(ConfigError, match="'lds' is a table"):
        read_grid(str(tmp_path / "nest.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        read_grid(str(tmp_path / "missing.toml"))
    (tmp_path / "even.toml").write_text("fds_ks = [5, 6]\n")
    with pytest.raises(ConfigError, match="fds_ks=6.*even"):
        read_grid(str(tmp_path / "even.toml"))


def test_expansion_drops_unused_settings_dedupes_and_skips_impossible_combinations():
    spec = parse_grid("lds=on,off; lds_sigma=1,2; reweight=none,sqrt_inv")
    plan = expand(spec, BASE, (0.0, 100.0))
    names = [p.name for p in plan.points]
    assert names == ["lds=on,lds_sigma=1,reweight=sqrt_inv", "lds=on,lds_sigma=2,reweight=sqrt_inv",
                     "lds=off,reweight=none", "lds=off,reweight=sqrt_inv"]
    assert plan.duplicates == 2  # lds_sigma does nothing with lds=off
    assert [p.name for p in plan.skipped] == ["lds=on,lds_sigma=1,reweight=none", "lds=on,lds_sigma=2,reweight=none"]
    assert all("--reweight" in p.skipped for p in plan.skipped)
    c = {p.name: p.config for p in plan.points}
    assert c["lds=on,lds_sigma=2,reweight=sqrt_inv"].lds == LDSConfig(enabled=True, reweight="sqrt_inv", sigma=2.0)
    assert c["lds=off,reweight=sqrt_inv"].lds.enabled is False
    assert c["lds=off,reweight=sqrt_inv"].lds.reweight == "sqrt_inv"
    assert all(GRID_KEYS)  # keys stay documented


def test_expansion_reweight_follows_lds_unless_given_and_fds_needs_bins():
    spec = parse_grid("lds=on,off")
    auto = {p.name: p.config.lds.reweight for p in expand(spec, BASE, (0, 100), auto_reweight=True).points}
    assert auto == {"lds=on": "sqrt_inv", "lds=off": "none"}
    base = replace(BASE, lds=LDSConfig(reweight="inverse"))
    fixed = {p.name: p.config.lds.reweight for p in expand(spec, base, (0, 100)).points}
    # the names say the reweighting that LDS on/off does not imply (issue 11: not a plain "lds=off")
    assert fixed == {"lds=on,reweight=inverse": "inverse", "lds=off,reweight=inverse": "inverse"}
    plan = expand(parse_grid("fds=on; fds_ks=5,9; bin_size=25,1; lr=0.01"), BASE, (0, 100))
    assert [p.name for p in plan.points] == ["fds=on,fds_ks=5,bin_size=25,lr=0.01",
                                             "fds=on,fds_ks=5,bin_size=1,lr=0.01", "fds=on,fds_ks=9,bin_size=1,lr=0.01"]
    assert "needs more than 4 label bins" in plan.skipped[0].skipped
    assert plan.points[0].config.optim.lr == 0.01 and plan.points[0].config.fds.enabled
    single = expand(parse_grid("lds=on"), BASE, (0, 100), auto_reweight=True)
    assert [p.name for p in single.points] == ["lds=on"]
    with pytest.raises(ConfigError, match="no configuration to train"):
        expand(parse_grid("lds=on; reweight=none"), BASE, (0, 100))


def test_run_names_keep_every_key_the_grid_spells_out_so_two_grids_never_collide():
    """Issue 27: the constant fds=on stays in the names, so the grid with FDS
    and the one without name their runs apart (they once both wrote
    method=vanilla,seed=0); keys that take no effect are still left out."""
    with_fds = expand(parse_grid("method=vanilla,lds; fds=on; seed=0..1"), BASE, (0, 5), auto_reweight=True)
    without = expand(parse_grid("method=vanilla,lds; seed=0..1"), BASE, (0, 5), auto_reweight=True)
    assert [p.name for p in with_fds.points] == ["method=vanilla,fds=on,seed=0", "method=vanilla,fds=on,seed=1",
                                                 "method=lds,fds=on,seed=0", "method=lds,fds=on,seed=1"]
    assert [p.name for p in without.points] == ["method=vanilla,seed=0", "method=vanilla,seed=1", "method=lds,seed=0",
                                                "method=lds,seed=1"]
    assert not {p.name for p in with_fds.points} & {p.name for p in without.points}
    off = expand(parse_grid("fds=off; fds_ks=5,9; lr=0.01"), BASE, (0, 100))  # fds_ks does nothing without FDS
    assert [p.name for p in off.points] == ["fds=off,lr=0.01"] and off.duplicates == 1


@pytest.mark.slow
def test_run_ablation_writes_runs_and_a_sorted_summary(data, tmp_path):
    spec = parse_grid("lds=on,off; fds=on,off; lr=0.003,1e30; lds_ks=3,5")
    base = replace(BASE, epochs=3)
    plan = expand(spec, base, data.label_range, auto_reweight=True)
    assert len(plan.points) == 12 and plan.duplicates == 4
    # train four that work and one that diverges
    plan.points[:] = [p for p in plan.points if ("lr=0.003" in p.name and "lds_ks=3" not in p.name)
                      or p.name == "lds=off,fds=off,lr=1e+30"]
    res = run_ablation(data, plan, tmp_path / "abl")
    assert res.n_stacks == 2 and res.n_ok == 4 and res.n_diverged == 1
    df = res.summary
    ok = df[df["status"] == "ok"]
    assert list(ok["val_mae"]) == sorted(ok["val_mae"]) and len(df) == 5
    assert df["status"].iloc[4].startswith("diverged: training diverged at epoch 0")
    assert list(df.columns[:3]) == ["run", "val_mae", "best_epoch"] and "[0,20)" in df and "All" in df
    for name in ok["run"]:
        run = load_run(tmp_path / "abl" / name)
        assert run.metrics["best_val_mae"] == pytest.approx(float(ok.loc[ok["run"] == name, "val_mae"].iloc[0]))
        assert run.config["ablation"]["name"] == name
    assert not (tmp_path / "abl" / df["run"].iloc[4]).exists()
    # the same configuration trained alone by train_head gives the same metrics
    alone = train_head(data, plan.points[0].config)
    stacked = load_run(tmp_path / "abl" / plan.points[0].name)
    assert stacked.metrics["test"]["mae"] == pytest.approx(alone.metrics["test"]["mae"], abs=2e-4)
    assert stacked.metrics["best_epoch"] == alone.best_epoch
    csv = (tmp_path / "abl" / "summary.csv").read_text()
    assert csv.startswith("run,val_mae,best_epoch,") and csv.count("\n") == 6
    md = format_summary(df, res.notes)
    assert md.splitlines()[2].startswith("| run | val MAE | best epoch | [0,20)")
    assert "*n (test images)*" in md
    # a rerun keeps the finished runs (same configuration, same cache) and trains only the rest
    heads = {n: (tmp_path / "abl" / n / "head.pt").stat().st_mtime_ns for n in ok["run"]}
    again = run_ablation(data, plan, tmp_path / "abl")
    assert again.n_kept == 4 and again.n_diverged == 1
    assert {n: (tmp_path / "abl" / n / "head.pt").stat().st_mtime_ns for n in ok["run"]} == heads
    pd.testing.assert_frame_equal(again.summary, df)
    # other settings are not replaced without overwrite, and that is checked before training
    other = expand(spec, replace(base, seed=9), data.label_range, auto_reweight=True)
    with pytest.raises(RunError, match="--overwrite"):
        run_ablation(data, other, tmp_path / "abl")

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


# ------------------------------------------------------------------ splits

def test_part_sizes_give_every_part_a_row_where_they_can():
    from iqa_cache.train.splits import part_sizes

    assert part_sizes(100, (0.7, 0.1, 0.2)).tolist() == [70, 10, 20]
    assert part_sizes(4, (0.7, 0.1, 0.2)).tolist() == [2, 1, 1]
    assert part_sizes(3, (0.7, 0.1, 0.2)).tolist() == [1, 1, 1]
    assert part_sizes(2, (0.7, 0.1, 0.2)).sum() == 2
    assert part_sizes(7, (0.8, 0.0, 0.2)).tolist() == [6, 0, 1]  # 5.6, 1.4: the larger remainder


@pytest.mark.parametrize("scale", ["koniq", "mos", "steps", "integers"])
def test_a_drawn_split_is_stratified_paired_and_seeded(scale):
    from iqa_cache.metrics import bin_of, default_edges
    from iqa_cache.train.splits import draw_split

    rng = np.random.default_rng(0)
    labels, lrange = {
        "koniq": (np.clip(rng.normal(58, 12, 3000), 0, 100), (0.0, 100.0)),
        "mos": (np.clip(rng.normal(3.4, 0.6, 800), 1, 5), (1.0, 5.0)),
        "steps": (np.round(np.clip(rng.normal(3.5, 0.8, 600), 0, 5) / 0.2) * 0.2, (0.0, 5.0)),
        "integers": (rng.choice([0, 1, 2, 3, 4], 500, p=[0.02, 0.08, 0.5, 0.35, 0.05]).astype(float), (0.0, 4.0)),
    }[scale]
    labels = np.concatenate([labels, [np.nan]])  # an unlabelled item
    a = draw_split(labels, lrange, 3, (0.7, 0.1, 0.2))
    assert (draw_split(labels, lrange, 3, (0.7, 0.1, 0.2)) == a).all()
    assert (draw_split(labels, lrange, 4, (0.7, 0.1, 0.2)) != a).any()
    assert a[-1] == "unlabelled"
    ranges = bin_of(labels[:-1], default_edges(lrange))
    checked = 0
    for r in np.unique(ranges):
        got = set(a[:-1][ranges == r])
        if (ranges == r).sum() >= 3:  # a range of one or two items cannot be in three parts (a warning says so)
            assert got == {"train", "val", "test"}, (r, got)
            checked += 1
    assert checked >= 4
    share = {p: float(np.mean(a[:-1] == p)) for p in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.02)


def test_two_methods_with_one_split_seed_see_the_same_parts(problem, tmp_path):
    from iqa_cache.train.stacked import train_many

    x, y, split, data = problem
    cfgs = [TrainConfig.from_flat({"method": m, "split": s, "epochs": 2, "hidden": 8, "blocks": 0})
            for s in (3, 4) for m in ("vanilla", "ridge", "bmc")]
    got = dict(train_many(data, cfgs))
    parts = [got[i].predictions["split"].to_numpy() for i in range(len(cfgs))]
    assert (parts[0] == parts[1]).all() and (parts[0] == parts[2]).all()  # seed 3: one split for every method
    assert (parts[3] == parts[4]).all() and (parts[3] == parts[5]).all()
    assert (parts[0] != parts[3]).any() and (parts[0] != split).any()  # another seed, not the cache's own
    assert all(got[i].config.split.seed == cfgs[i].split.seed for i in got)
    # recorded in the run, read back, and the official split by default
    out = write_run(tmp_path / "r", got[1], data.attrs, data.path)
    assert load_run(out).train_config.split.seed == 3
    assert (train_head(data, TrainConfig.from_flat({"method": "ridge"})).predictions["split"] == split).all()


# ------------------------------------------------ constructed runs for report

@pytest.fixture(scope="module")
def base_run(problem, tmp_path_factory):
    """A real (ridge) run directory, the template of the constructed runs."""
    _, _, _, data = problem
    res = train_head(data, TrainConfig.from_flat({"method": "ridge"}))
    return write_run(tmp_path_factory.mktemp("base") / "ridge_s0", res, data.attrs, data.path)


def constructed(base, dst, *, method="vanilla", lr=1e-3, seed=0, split=None, offsets=None, dataset=None):
    """A copy of ``base`` as a run of ``method`` with these settings whose
    predictions are label + offset per split (``offsets``: {split: offset})."""
    import json
    import shutil

    import pandas as pd

    shutil.copytree(base, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["train"] = TrainConfig.from_flat({"method": method, "lr": lr, "seed": seed, "split": split}).to_dict()
    if dataset is not None:
        cfg["evaluation"] = {"dataset": dataset}
    (dst / "config.json").write_text(json.dumps(cfg))
    p = pd.read_csv(dst / "predictions.csv")
    for part, off in (offsets or {}).items():
        m = p["split"] == part
        p.loc[m, "pred"] = p.loc[m, "label"] + off
    p.to_csv(dst / "predictions.csv", index=False)
    return dst


def test_select_val_picks_by_validation_where_test_would_pick_another(base_run, tmp_path):
    from iqa_cache.report import build_report, format_report, load_runs
    from iqa_cache.report.build import ReportConfig

    paths = []
    for split in (0, 1):
        # lr 0.01: better on validation, worse on test; lr 0.1 the other way round
        paths.append(constructed(base_run, tmp_path / f"lr=0.01,split={split}", lr=0.01, split=split,
                                 offsets={"val": 1.0, "test": 5.0 + split}))
        paths.append(constructed(base_run, tmp_path / f"lr=0.1,split={split}", lr=0.1, split=split,
                                 offsets={"val": 3.0, "test": 2.0}))
    paths.append(constructed(base_run, tmp_path / "ridge", method="ridge", offsets={"val": 0.5, "test": 4.0}))
    runs, _ = load_runs(paths)
    plain = build_report(runs, ReportConfig(baseline=False))
    assert any("choosing on test" in n for n in plain.notes)
    rep = build_report(runs, ReportConfig(select="val", baseline=False))
    rows = {name: vals for name, vals in rep.tables[0].rows}
    assert set(rows) == {"vanilla (best on val, 1 seed × 2 splits)", "ridge (best on val: ridge)"}
    chosen = [e for e in rep.entries if e.name.startswith("vanilla")][0].runs
    assert sorted(r.name for r in chosen) == ["lr=0.01,split=0", "lr=0.01,split=1"]
    allcol = rows["vanilla (best on val, 1 seed × 2 splits)"][-1]
    assert allcol.mean == pytest.approx(5.5) and allcol.n == 2  # the test MAE of the chosen: 5 and 6, not 2
    assert any("never on test" in n for n in rep.notes)
    assert any("among 2 runs of vanilla, split 1, seed 0: lr=0.01,split=1" in n for n in rep.notes)
    # by SRCC, the offsets tie: the first run is kept; by a named key, each lr keeps its own row
    by_lr = build_report(runs, ReportConfig(select="val", select_by=("method", "lr"), baseline=False))
    assert len(by_lr.entries) == 3
    assert "best on val" in format_report(rep, "markdown")
    # by SRCC: a run off by a constant ranks perfectly and beats a closer but noisier one that MAE prefers
    shifted = constructed(base_run, tmp_path / "shifted", method="bmc", offsets={"val": 10.0, "test": 10.0})
    noisy = constructed(base_run, tmp_path / "noisy", method="bmc", lr=0.01)
    import pandas as pd

    p = pd.read_csv(noisy / "predictions.csv")
    p["pred"] = p["label"] + np.random.default_rng(0).normal(0, 3, len(p))
    p.to_csv(noisy / "predictions.csv", index=False)
    pair, _ = load_runs([shifted, noisy])
    pick = {m: build_report(pair, ReportConfig(select="val", select_metric=m)).entries[0].runs[0].name
            for m in ("mae", "srcc", "plcc")}
    assert pick == {"mae": "noisy", "srcc": "shifted", "plcc": "shifted"}
    # few-shot MAE: the validation rows whose label bin holds fewer than --few training labels
    from iqa_cache.report.loading import run_bins, train_labels
    from iqa_cache.report.select import validation_score

    r = pair[1]
    v = r.predictions[r.predictions["split"] == "val"]
    bins = run_bins(r)
    few = bins.counts(train_labels(r))[bins.index(v["label"].to_numpy())] < 5
    assert 0 < few.sum() < len(v)
    assert validation_score(r, "few_mae", many=10, few=5) == pytest.approx(
        np.abs(v["pred"] - v["label"]).to_numpy()[few].mean())
    with pytest.raises(ConfigError, match="--select-by 'nope' is not a training option"):
        build_report(pair, ReportConfig(select="val", select_by=("nope",)))
    with pytest.raises(ConfigError, match="--select-metric 'rmse' is not one of mae, srcc, plcc, few_mae"):
        ReportConfig(select="val", select_metric="rmse")


# ------------------------------------------------------------ evaluate

def test_evaluate_gives_the_heads_own_predictions_on_identical_features(problem, base_run, tmp_path):
    from typer.testing import CliRunner

    from iqa_cache.cli.main import app
    from iqa_cache.evaluate import evaluate_run

    x, y, split, data = problem
    mlp = write_run(tmp_path / "vanilla_s0", train_head(data, TrainConfig.from_flat({"epochs": 3, "hidden": 16})),
                    data.attrs, data.path)
    for run in (base_run, mlp):
        ev = load_run(evaluate_run(run, data.path, tmp_path / "ev"))
        own = load_run(run).predictions.set_index("image_id")
        got = ev.predictions[ev.predictions["split"] == "test"].set_index("image_id")
        assert len(got) == len(x)  # every labelled item by default
        np.testing.assert_allclose(got["pred"], own.loc[got.index, "pred"], atol=2e-5)
        assert ev.name == f"{load_run(run).name} on synthetic"
        assert ev.metrics["test"]["srcc"] > 0.5 and "per_bin" in ev.metrics["test"]
    r = CliRunner().invoke(app, ["evaluate", str(base_run), "--cache", str(data.path), "--out", str(tmp_path / "cli"),
                                 "--split", "test", "--label-map", "1,0"])
    assert r.exit_code == 0, r.output
    ev = load_run(tmp_path / "cli" / "ridge_s0_on_synthetic")
    assert (ev.predictions["split"] == "test").sum() == (split == "test").sum()
    assert ev.config["evaluation"]["label_map"] == [1.0, 0.0]


def test_evaluate_refuses_a_cache_of_other_features_naming_the_attribute(problem, base_run, tmp_path):
    from typer.testing import CliRunner

    from iqa_cache.cli.main import app
    from iqa_cache.evaluate import provenance_mismatch

    x, y, split, _ = problem
    other = write_feature_cache(tmp_path / "other.h5", x, y, split, pretrained_kind="none")
    r = CliRunner().invoke(app, ["evaluate", str(base_run), "--cache", str(other), "--out", str(tmp_path / "ev")])
    assert r.exit_code != 0
    assert "pretrained_kind: 'tag' (training cache) vs 'none'" in r.output
    assert not (tmp_path / "ev").exists()
    a = {"feature_source": "imported", "feature_dim": 768, "declared_feature_source": "clip-b32"}
    assert provenance_mismatch(a, dict(a)) is None
    assert "declared_feature_source: 'clip-b32' (training cache) vs 'dinov2'" in provenance_mismatch(
        a, {**a, "declared_feature_source": "dinov2"})
    assert "feature_dim: 768" in provenance_mismatch(a, {**a, "feature_dim": 512})
    assert "iqa import --feature-source" in provenance_mismatch({**a, "declared_feature_source": None}, a)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_evaluate_refuses_a_dataset_name_that_is_not_a_folder_name(problem, base_run, tmp_path, name):
    """The evaluation's folder is named after the cache's dataset (set freely
    by `iqa import --name`): a name with a path in it would land outside --out."""
    from typer.testing import CliRunner

    from iqa_cache.cli.main import app

    x, y, split, _ = problem
    other = write_feature_cache(tmp_path / "c" / "other.h5", x, y, split, dataset=name)
    r = CliRunner().invoke(app, ["evaluate", str(base_run), "--cache", str(other), "--out", str(tmp_path / "o" / "ev")])
    assert r.exit_code != 0
    assert f"its dataset name {name!r} (attribute 'dataset') cannot name the evaluation's folder" in r.output
    assert not (tmp_path / "o").exists()  # nothing written, inside --out or beside it


# ------------------------------------------------------------ benchmark table

def test_the_benchmark_table_on_constructed_runs(base_run, tmp_path):
    import json

    import pandas as pd
    from scipy import stats

    from iqa_cache.report import build_report, format_report, load_runs
    from iqa_cache.report.benchmark import benchmark_rows
    from iqa_cache.report.build import ReportConfig

    def noisy(dst, method, seed, dataset=None, scale=1.0, agrees=True):
        d = constructed(base_run, dst, method=method, seed=seed, dataset=dataset)
        p = pd.read_csv(d / "predictions.csv")
        rng = np.random.default_rng(seed + 10 * len(method))
        p["pred"] = p["label"] * scale + rng.normal(0, 5 + seed, len(p))
        p.to_csv(d / "predictions.csv", index=False)
        if dataset is not None:
            cfg = json.loads((d / "config.json").read_text())
            cfg["evaluation"] = {"dataset": dataset, "run_name": d.name, "label_scale_agrees": agrees,
                                 "identity": {"dataset": dataset}}
            (d / "config.json").write_text(json.dumps(cfg))
        return d

    paths = [noisy(tmp_path / f"{m}_s{s}", m, s) for m in ("vanilla", "ridge") for s in (0, 1)]
    paths += [noisy(tmp_path / f"{m}_s{s}_spaq", m, s, "spaq", scale=0.05, agrees=False)
              for m in ("vanilla", "ridge") for s in (0, 1)]
    runs, _ = load_runs(paths)
    b = benchmark_rows(runs, "test", digits=3)
    assert b["datasets"] == ["synthetic", "spaq"] and [m for m, _ in b["rows"]] == ["vanilla", "ridge"]
    for (m, cells) in b["rows"]:
        for d, cell in zip(b["datasets"], cells):
            mine = [r for r in runs if r.config["train"]["method"]["name"] == m
                    and (r.config.get("evaluation") or {}).get("dataset", "synthetic") == d]
            assert len(mine) == 2
            want = []
            for fn in (stats.pearsonr, stats.spearmanr, stats.kendalltau):
                v = []
                for r in mine:
                    t = r.predictions[r.predictions["split"] == "test"]
                    v.append(fn(t["pred"], t["label"])[0])
                want.append(f"{np.mean(v):.3f}±{np.std(v, ddof=1):.3f}")
            assert cell == "/".join(want), (m, d)
    # MAE per range only where the scale agrees: synthetic's columns, not spaq's
    assert all(c.startswith("synthetic: ") for c in b["mae_columns"]) and len(b["mae_columns"]) == 6
    t = runs[0].predictions[runs[0].predictions["split"] == "test"]
    t1 = runs[1].predictions[runs[1].predictions["split"] == "test"]
    want_all = np.mean([np.abs(t["pred"] - t["label"]).mean(), np.abs(t1["pred"] - t1["label"]).mean()])
    assert b["mae_rows"][0][1][-1].startswith(f"{want_all:.3f}±")
    text = format_report(build_report(runs, ReportConfig(baseline=False)), "benchmark")
    assert "| method | synthetic | spaq |" in text and "No MAE for spaq" in text
    assert "warning: vanilla_s0_spaq on spaq, " in text and "on spaq: labels on another scale" in text


def test_a_grid_of_splits_and_methods_trains_ridge_once_per_split():
    from iqa_cache.train.grid.expand import expand
    from iqa_cache.train.grid.spec import parse_grid

    plan = expand(parse_grid("split=official,0..2; method=vanilla,ridge; lr=1e-3,1e-2; seed=0..1"), TrainConfig(),
                  (0.0, 100.0))
    ridge = [p for p in plan.points if p.config.method.name == "ridge"]
    assert [p.name for p in ridge] == ["split=official,method=ridge", "split=0,method=ridge",
                                       "split=1,method=ridge", "split=2,method=ridge"]
    assert [p.config.split.seed for p in ridge] == [None, 0, 1, 2]
    assert len(plan.points) == 4 * 2 * 2 + 4 and plan.duplicates == 4 * 3
    assert "split=1,method=vanilla,lr=0.01,seed=1" in {p.name for p in plan.points}
    with pytest.raises(ConfigError, match="grid split='x' is not valid: use official or a split seed"):
        parse_grid("split=x")


def test_the_protocol_end_to_end_through_the_cli(problem, tmp_path):
    import json

    from typer.testing import CliRunner

    from iqa_cache.cli.main import app

    runner = CliRunner()
    _, _, _, data = problem
    r = runner.invoke(app, ["train-head", "--cache", str(data.path), "--split-seed", "5", "--split-ratios",
                            "6,2,2", "--method", "ridge", "--show-config"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["train"]["split"] == {"seed": 5, "ratios": "6,2,2"}
    r = runner.invoke(app, ["train-head", "--cache", str(data.path), "--split-ratios", "0.7,0.1", "--show-config"])
    assert r.exit_code != 0 and "--split-ratios '0.7,0.1' must be three numbers" in r.output
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "--cache", str(data.path), "--out", str(out), "--grid",
                            "split=0,1; method=vanilla,ridge; lr=1e-3,1e-2", "--epochs", "2", "--hidden", "8",
                            "--blocks", "0", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 6
    r = runner.invoke(app, ["report", *map(str, runs), "--select", "val", "--no-baseline"])
    assert r.exit_code == 0, r.output
    for method in ("vanilla", "ridge"):
        assert f"{method} (best on val, 1 seed × 2 splits)" in r.stdout
    assert "never on test" in r.stdout
    r = runner.invoke(app, ["report", *map(str, runs), "--select", "val", "--format", "benchmark"])
    assert r.exit_code == 0, r.output
    assert "| method | synthetic |" in r.stdout and "| ridge |" in r.stdout
    r = runner.invoke(app, ["evaluate", str(out), "--cache", str(data.path), "--out", str(tmp_path / "ev"),
                            "--split", "test"])  # an ablation folder stands for its runs
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "ev").iterdir())) == 6
    assert "| method=ridge on synthetic (1 seed × 2 splits) |" in r.stdout
    r = runner.invoke(app, ["report", *map(str, runs), "--tables", "ranges,iqa"])
    assert r.exit_code == 0, r.output
    assert "choosing on test" in r.stdout
    # one train-mean baseline over the two drawn splits, not one per split
    assert r.stdout.count("| baseline: train mean") == 2 and "(2 splits) |" in r.stdout


def test_heads_of_different_splits_train_in_one_stack_as_one_by_one(problem):
    from iqa_cache.train.stacked import plan_stacks, train_stack

    _, _, _, data = problem
    base = {"epochs": 2, "hidden": 8, "blocks": 1, "batch_size": 128}
    cfgs = [TrainConfig.from_flat({**base, "split": 0}), TrainConfig.from_flat({**base, "split": 1, "seed": 1}),
            TrainConfig.from_flat({**base, "split": 2, "method": "bmc", "lr": 3e-3}),
            TrainConfig.from_flat({**base, "split": 1, "method": "ranksim", "ranksim_gamma": 10.0}),
            TrainConfig.from_flat({**base, "split": 0, "lds": True})]
    assert plan_stacks(cfgs, 64) == [[0, 1, 2, 3, 4]]  # one stack over three splits
    # not with FDS, the prior-fitting methods, or the cache's own split next to a drawn one
    assert len(plan_stacks([cfgs[0], TrainConfig.from_flat({**base, "split": 1, "fds": True}),
                            TrainConfig.from_flat({**base, "split": 2, "fds": True})], 64)) == 3
    assert len(plan_stacks([cfgs[0], TrainConfig.from_flat({**base, "split": 1, "method": "gai"})], 64)) == 2
    assert len(plan_stacks([cfgs[0], TrainConfig.from_flat(base)], 64)) == 2
    together = train_stack(data, cfgs)
    for cfg, res in zip(cfgs, together):
        alone = train_stack(data, [cfg])[0]
        assert (res.predictions["split"] == alone.predictions["split"]).all()
        assert res.best_epoch == alone.best_epoch
        assert [h["val_mae"] for h in res.history] == pytest.approx([h["val_mae"] for h in alone.history],
                                                                   rel=1e-4)
        np.testing.assert_allclose(res.predictions["pred"], alone.predictions["pred"], rtol=1e-4, atol=1e-3)
    assert len({round(r.best_val_mae, 4) for r in together}) == len(cfgs)


def test_seed_and_split_groups_are_named_without_their_seed_and_split():
    from iqa_cache.report.loading import seed_group_name

    assert seed_group_name(["vanilla_split3_s0", "vanilla_split4_s1"], [0, 1]) == "vanilla"
    assert seed_group_name(["split=0,method=lds,seed=0", "split=1,method=lds,seed=1"], [0, 1]) == "method=lds"
    assert seed_group_name(["method=lds,split=0,seed=0", "method=lds,split=1,seed=0"], [0, 0]) == "method=lds"
    assert seed_group_name(["split=0,seed=0", "split=1,seed=0"], [0, 0]) == ""  # named by what it trained


def test_evaluate_maps_labels_onto_the_training_scale_or_reports_correlations_only(problem, base_run, tmp_path):
    from iqa_cache.evaluate import EvaluateConfig, evaluate_run

    x, y, split, _ = problem
    mos = write_feature_cache(tmp_path / "mos.h5", x, 1 + y / 25, split, label_range=(1.0, 5.0), dataset="mos")
    plain = load_run(evaluate_run(base_run, mos, tmp_path / "ev"))
    assert plain.config["evaluation"]["label_scale_agrees"] is False
    assert "mae" not in plain.metrics["test"] and plain.metrics["test"]["srcc"] > 0.5
    mapped = load_run(evaluate_run(base_run, mos, tmp_path / "ev2", EvaluateConfig(label_map=(25.0, -25.0))))
    test = mapped.predictions[mapped.predictions["split"] == "test"]
    np.testing.assert_allclose(test["label"], y, atol=1e-3)  # back on the 0-100 scale
    assert mapped.config["evaluation"]["label_map"] == [25.0, -25.0]
    assert mapped.metrics["test"]["mae"] == pytest.approx(np.abs(test["pred"] - test["label"]).mean(), rel=1e-6)
    assert plain.metrics["test"]["srcc"] == pytest.approx(mapped.metrics["test"]["srcc"])

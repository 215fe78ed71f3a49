"""`iqa report` on runs made by `iqa train-head`: Table 1 and Table 2 forms,
shot and IQA metrics, seed groups, the baseline row, the paired bootstrap,
formats, unfinished runs and plots.  Numbers are checked against values
computed by hand (or by scipy) from the predictions written into the runs."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from iqa_cache.cli.main import app
from iqa_cache.report import lds_curves
from iqa_cache.train.imbalance import lds_weights
from iqa_cache.train.runs import load_run

from .conftest import learnable_problem, write_feature_cache

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two real runs (vanilla and LDS, seed 0) trained by `iqa train-head`."""
    root = tmp_path_factory.mktemp("trained")
    x, y, split = learnable_problem(n=400)
    cache = write_feature_cache(root / "feats.h5", x, y, split)
    for name, flags in (("vanilla_s0", []), ("lds_s0", ["--lds"])):
        r = iqa("train-head", "--cache", cache, *flags, "--epochs", 3, "--hidden", 16, "--out", root / name,
                "--device", "cpu", "--no-progress")
        assert r.exit_code == 0, r.output
    return root


def variant(src, dst, *, seed=None, train=None, preds=None):
    """A copy of run ``src`` with another seed / train settings, and
    predictions.csv replaced by ``preds`` (a DataFrame) or edited by it (a
    function of the DataFrame)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if seed is not None:
        cfg["train"]["seed"] = seed
    for k, v in (train or {}).items():
        cfg["train"][k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    if preds is not None:
        p = pd.read_csv(dst / "predictions.csv")
        p = preds(p) if callable(preds) else preds
        p.to_csv(dst / "predictions.csv", index=False)
    return dst


def offset_test(delta, noise=0.0, seed=0):
    def f(p):
        test = p["split"] == "test"
        rng = np.random.default_rng(seed)
        p.loc[test, "pred"] = p.loc[test, "label"] + delta + noise * rng.normal(size=int(test.sum()))
        return p
    return f


def rows_of(text):
    return list(csv.reader(io.StringIO(text)))


def test_table1_rows_and_the_train_mean_baseline(trained, tmp_path):
    a = variant(trained / "vanilla_s0", tmp_path / "a", preds=offset_test(2.0))
    r = iqa("report", a, "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = rows_of(r.stdout)
    assert rows[0] == ["run", "[0,20)", "[20,40)", "[40,60)", "[60,80)", "[80,100]", "All"]
    assert rows[1] == ["a"] + ["2.0000"] * 6
    p = pd.read_csv(a / "predictions.csv")
    mean = p.loc[p["split"] == "train", "label"].mean()
    test = p[p["split"] == "test"]
    assert rows[2][0] == f"baseline: train mean {mean:.4g}"
    err = (test["label"] - mean).abs()
    bins = pd.cut(test["label"], [0, 20, 40, 60, 80, 100.0001], right=False)
    want = list(err.groupby(bins, observed=False).mean()) + [err.mean()]
    got = [float(v) if v else math.nan for v in rows[2][1:]]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert rows[3][0] == "n (test images)" and int(rows[3][-1]) == len(test)
    assert iqa("report", a, "--format", "csv", "--no-baseline").stdout.count("baseline") == 0


def test_runs_that_differ_only_in_seed_are_grouped(trained, tmp_path):
    s0 = variant(trained / "vanilla_s0", tmp_path / "v_s0", preds=offset_test(1.0))
    s1 = variant(trained / "vanilla_s0", tmp_path / "v_s1", seed=1, preds=offset_test(3.0))
    other = variant(trained / "vanilla_s0", tmp_path / "lr_s0", train={"epochs": 99}, preds=offset_test(5.0))
    r = iqa("report", s0, s1, other)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[2].startswith("| v (2 seeds) | ") and lines[2].endswith(" | 2.0000 ± 1.4142 |")  # mean, std ddof 1
    assert lines[3].startswith("| lr_s0 | 5.0000")
    assert "mean ± sample std" in r.stdout
    c = rows_of(iqa("report", s0, s1, "--format", "csv").stdout)
    assert c[1][0] == "v (2 seeds) mean" and c[1][-1] == "2.0000"
    assert c[2][0] == "v (2 seeds) std" and c[2][-1] == "1.4142"
    j = json.loads(iqa("report", s0, s1, "--format", "json").stdout)
    cell = j["tables"][0]["rows"][0]["values"]["All"]
    assert cell == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n_seeds": 2}
    assert [x["seed"] for x in j["entries"][0]["runs"]] == [0, 1]
    ungrouped = iqa("report", s0, s1, "--no-group-seeds").stdout.splitlines()
    assert ungrouped[2].startswith("| v_s0 | 1.0000") and ungrouped[3].startswith("| v_s1 | 3.0000")
    # a copy with the same seed is not a second seed
    dup = variant(trained / "vanilla_s0", tmp_path / "copy", preds=offset_test(1.0))
    r = iqa("report", s0, dup)
    assert "| v_s0 |" in r.stdout and "| copy |" in r.stdout and "seeds that repeat" in r.stdout


def discrete_preds(n_train=300, n_test=200, seed=0):
    """Predictions of a 0-4 discrete-label task: labels mostly 1-2."""
    rng = np.random.default_rng(seed)
    def lab(n):
        return rng.choice([0, 1, 2, 3, 4], size=n, p=[0.1, 0.4, 0.35, 0.1, 0.05]).astype(float)
    ytr, yte = lab(n_train), lab(n_test)
    pte = yte + rng.normal(0, 0.5, n_test)
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n_train + n_test)],
                         "split": ["train"] * n_train + ["test"] * n_test,
                         "label": np.concatenate([ytr, yte]), "pred": np.concatenate([ytr, pte])})


def test_table2_mae_per_label_value_and_groups(trained, tmp_path):
    p = discrete_preds()
    a = variant(trained / "vanilla_s0", tmp_path / "a", preds=p)
    r = iqa("report", a, "--groups", "3;4;3,4", "--format", "csv")
    assert r.exit_code == 0, r.output
    blocks = r.stdout.split("\n\n")
    t2 = rows_of(blocks[1])
    assert t2[0][0].startswith("# MAE per label value") and t2[1] == ["run", "3", "4", "3&4", "All"]
    test = p[p["split"] == "test"]
    err = (test["label"] - test["pred"]).abs()
    want = [err[test["label"] == 3].mean(), err[test["label"] == 4].mean(), err[test["label"] >= 3].mean(),
            err.mean()]
    np.testing.assert_allclose([float(v) for v in t2[2][1:]], want, atol=1e-4)
    assert t2[4] == ["n (test images)"] + [str(int((test["label"] == 3).sum())), str(int((test["label"] == 4).sum())),
                                           str(int((test["label"] >= 3).sum())), str(len(test))]
    # discrete labels: --tables values without --groups gives one column per value
    r = iqa("report", a, "--tables", "values")
    assert r.stdout.splitlines()[0] == "| run | 0 | 1 | 2 | 3 | 4 | All |"
    r = iqa("report", a, "--groups", "3;x")
    assert r.exit_code == 2 and "--groups" in r.output


def shot_preds():
    """Training labels: 150 in bin 50, 30 in bin 60, 5 in bin 70; test
    images in those bins and in an empty one, with known errors."""
    ytr = np.concatenate([np.full(150, 50.5), np.full(30, 60.5), np.full(5, 70.5)])
    yte = np.array([50.2, 50.7, 60.1, 60.9, 70.3, 90.0])
    pte = yte + np.array([1.0, -3.0, 2.0, 2.0, -4.0, 8.0])
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(len(ytr) + len(yte))],
                         "split": ["train"] * len(ytr) + ["test"] * len(yte),
                         "label": np.concatenate([ytr, yte]), "pred": np.concatenate([ytr, pte])})


def test_shot_metrics_table(trained, tmp_path):
    a = variant(trained / "vanilla_s0", tmp_path / "a", preds=shot_preds())
    r = iqa("report", a, "--tables", "shots", "--format", "json", "--no-baseline")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["tables"][0]
    v = t["rows"][0]["values"]
    assert v["MAE many"] == pytest.approx(2.0) and v["MSE many"] == pytest.approx(5.0)
    assert v["G-Mean many"] == pytest.approx(math.sqrt(3.0))
    assert v["MAE medium"] == pytest.approx(2.0) and v["MSE medium"] == pytest.approx(4.0)
    assert v["MAE few"] == pytest.approx(6.0) and v["G-Mean few"] == pytest.approx(math.sqrt(32.0))
    assert v["MAE All"] == pytest.approx(20 / 6)
    assert t["counts"]["MAE many"] == 2 and t["counts"]["MAE medium"] == 2 and t["counts"]["MAE few"] == 2
    assert "1 many-, 1 medium-, 98 few-shot" in t["caption"]
    # other thresholds; an empty region is blank, never NaN, in every format
    r = iqa("report", a, "--tables", "shots", "--many", 1000, "--few", 10, "--format", "json")
    v = json.loads(r.stdout)["tables"][0]["rows"][0]["values"]
    assert v["MAE many"] is None and v["MAE medium"] == pytest.approx(2.0) and v["MAE few"] == pytest.approx(6.0)
    md = iqa("report", a, "--tables", "shots", "--many", 1000, "--few", 10, "--no-baseline").stdout
    assert md.splitlines()[2].startswith("| a | – | 2.0000 | 6.0000 |") and "nan" not in md.lower()
    c = rows_of(iqa("report", a, "--tables", "shots", "--many", 1000, "--format", "csv").stdout)
    assert c[1][1] == "" and "nan" not in str(c).lower()
    r = iqa("report", a, "--many", 10, "--few", 20)
    assert r.exit_code == 2 and "--few" in r.output


def test_iqa_metrics_table_matches_scipy(trained):
    r = iqa("report", trained / "vanilla_s0", trained / "lds_s0", "--tables", "iqa", "--format", "json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["tables"][0]
    assert t["columns"] == ["SRCC", "KRCC", "PLCC", "PLCC (logistic)", "RMSE"]
    assert t["better"] == ["higher"] * 4 + ["lower"]
    for row, name in zip(t["rows"], ("vanilla_s0", "lds_s0")):
        p = load_run(trained / name).predictions
        p = p[p["split"] == "test"]
        y, q = p["label"].to_numpy(), p["pred"].to_numpy()
        v = row["values"]
        assert v["SRCC"] == pytest.approx(stats.spearmanr(q, y)[0])
        assert v["KRCC"] == pytest.approx(stats.kendalltau(q, y)[0])
        assert v["PLCC"] == pytest.approx(stats.pearsonr(q, y)[0])
        assert v["PLCC (logistic)"] >= v["PLCC"] - 1e-3
        assert v["RMSE"] == pytest.approx(np.sqrt(np.mean((q - y) ** 2)))
    base = t["rows"][2]
    assert base["kind"] == "baseline" and base["values"]["SRCC"] is None and base["values"]["RMSE"] > 0


def test_a_missing_or_fallback_logistic_fit_is_said_not_hidden(trained, tmp_path, monkeypatch):
    # four test images are too few for a 4-parameter fit: the cell is blank and a note says why
    p = shot_preds()
    few = variant(trained / "vanilla_s0", tmp_path / "few", preds=p[p["label"] != 90.0].iloc[:-1])
    r = iqa("report", few, "--tables", "iqa")
    assert r.exit_code == 0, r.output
    row = r.stdout.splitlines()[2].split(" | ")
    assert row[0] == "| few" and row[4] == "–" and row[3] != "–"
    assert "no logistic fit for few: 4 images are too few for a 4-parameter fit" in r.stdout

    def fail(*a, **k):
        raise ValueError("x0 is infeasible")

    monkeypatch.setattr("scipy.optimize.least_squares", fail)
    r = iqa("report", trained / "vanilla_s0", "--tables", "iqa")
    row = r.stdout.splitlines()[2].split(" | ")
    assert row[4] != "–"
    assert "logistic fit for vanilla_s0: the optimiser failed (x0 is infeasible); the best grid fit is used" \
        in r.stdout


def test_compare_detects_a_real_difference_and_not_a_null_one(trained, tmp_path):
    src = trained / "vanilla_s0"
    a = variant(src, tmp_path / "a", preds=offset_test(0.0, noise=1.0, seed=1))
    worse = variant(src, tmp_path / "worse", train={"epochs": 4}, preds=offset_test(1.5, noise=1.0, seed=1))
    same = variant(src, tmp_path / "same", train={"epochs": 5}, preds=offset_test(0.0, noise=1.0, seed=2))
    r = iqa("report", a, worse, "--compare", a, worse, "--format", "json", "--n-boot", 1000)
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)["comparison"]
    assert c["a"] == "a" and c["b"] == "worse" and c["n_boot"] == 1000
    allrow = c["diffs"][0]
    assert allrow["name"] == "All" and allrow["contains_zero"] is False and allrow["high"] < 0
    assert [d["name"] for d in c["diffs"]] == ["All", "[0,20)", "[20,40)", "[40,60)", "[60,80)", "[80,100]"]
    r = iqa("report", a, same, "--compare", a, same, "--format", "json", "--n-boot", 1000)
    allrow = json.loads(r.stdout)["comparison"]["diffs"][0]
    assert allrow["contains_zero"] is True and allrow["low"] < 0 < allrow["high"]
    md = iqa("report", a, worse, "--compare", a, worse, "--n-boot", 500).stdout
    assert "| All |" in md and "| a lower |" in md and "Paired bootstrap of the MAE difference A − B" in md
    # runs named only in --compare are loaded too; seed groups are compared as groups
    a1 = variant(src, tmp_path / "a_s1", seed=1, preds=offset_test(0.0, noise=1.0, seed=3))
    r = iqa("report", a, a1, "--compare", a, worse, "--format", "json", "--n-boot", 200)
    j = json.loads(r.stdout)
    assert j["comparison"]["a"] == "a (2 seeds)" and j["comparison"]["n_seeds_a"] == 2
    r = iqa("report", a, a1, "--compare", a, a1)
    assert r.exit_code == 2 and "--no-group-seeds" in r.stderr


def test_unfinished_runs_are_named_on_stderr_and_skipped(trained, tmp_path):
    ok = variant(trained / "vanilla_s0", tmp_path / "ok")
    killed = variant(trained / "vanilla_s0", tmp_path / "killed")
    (killed / "predictions.csv").unlink()
    (killed / "metrics.json").unlink()
    r = iqa("report", ok, killed)
    assert r.exit_code == 0, r.output
    assert "| ok |" in r.stdout and "killed" not in r.stdout
    assert "skipping" in r.stderr and "killed" in r.stderr and "missing predictions.csv, metrics.json" in r.stderr
    r = iqa("report", killed, tmp_path / "nowhere")
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: none of the 2 run directories is finished")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_formats_and_split(trained, tmp_path):
    s0 = variant(trained / "vanilla_s0", tmp_path / "v_s0", preds=offset_test(1.0))
    s1 = variant(trained / "vanilla_s0", tmp_path / "v_s1", seed=1, preds=offset_test(3.0))
    runs = [s0, s1, trained / "lds_s0"]
    c = iqa("report", *runs, "--tables", "all", "--format", "csv")
    assert c.exit_code == 0 and c.stdout.startswith('run,"[0,20)",')
    heads = [line for line in c.stdout.splitlines() if line.startswith("run,")]
    assert len(heads) == 3 and any(h.startswith("run,MAE many") for h in heads)
    assert "# IQA metrics" in c.stdout
    tex = iqa("report", *runs, "--tables", "all", "--format", "latex").stdout
    assert tex.count(r"\toprule") == 3 and tex.count(r"\bottomrule") == 3
    # the best value of a column is bold (\boldmath for mean ± std cells), the others are not
    assert r"v (2 seeds) & {\boldmath$2.0000 \pm 1.4142$} &" in tex and "% MAE per label range" in tex
    assert r"\textbf{" not in tex.split("lds\\_s0 & ")[1].split(r"\\")[0]
    j = json.loads(iqa("report", *runs, "--tables", "all", "--format", "json").stdout)
    assert [t["key"] for t in j["tables"]] == ["ranges", "shots", "iqa"]
    assert "no per-value table" in " ".join(j["notes"])
    val = iqa("report", *runs, "--split", "val", "--format", "json")
    t = json.loads(val.stdout)["tables"][0]
    p = pd.read_csv(s0 / "predictions.csv")
    assert t["counts"]["All"] == int((p["split"] == "val").sum())
    assert iqa("report", *runs, "--split", "nope").exit_code == 2
    assert iqa("report", *runs, "--tables", "ranges,bogus").exit_code == 2


def test_plots_come_out_of_the_cli(trained, tmp_path):
    s1 = variant(trained / "lds_s0", tmp_path / "lds_s1", seed=1)
    out = tmp_path / "plots"
    r = iqa("report", trained / "vanilla_s0", trained / "lds_s0", s1, "--plots", out)
    assert r.exit_code == 0, r.output
    names = ["label_histogram.png", "lds_density.png", "per_bin_mae.png", "pred_vs_true.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    for n in names:
        assert f"wrote {out / n}" in r.stderr
        with Image.open(out / n) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 400
            assert len(np.unique(np.asarray(im.convert("L")))) > 20  # not a blank canvas


def test_lds_density_weights_are_the_training_weights(trained):
    run = load_run(trained / "lds_s0")
    cur = lds_curves(run)
    lds = run.config["train"]["lds"]
    p = run.predictions
    y = p.loc[p["split"] == "train", "label"].to_numpy()
    want = lds_weights(y, bin_size=1.0, lo=0.0, hi=100.0, reweight=lds["reweight"], kernel=lds["kernel"],
                       ks=lds["ks"], sigma=lds["sigma"], lds=True)
    got = cur["weight"][cur["bins"].index(y)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert cur["empirical"].sum() == pytest.approx(1.0) and cur["smoothed"].sum() == pytest.approx(1.0)
    assert np.isnan(cur["weight"][cur["counts"] == 0]).all()


def test_seed_group_names_drop_the_seed_part():
    from iqa_cache.report import seed_group_name as _group_name

    assert _group_name(["lds_s0", "lds_s1"], [0, 1]) == "lds"
    assert _group_name(["lds=on,fds=off,seed=0", "lds=on,fds=off,seed=2"], [0, 2]) == "lds=on,fds=off"
    assert _group_name(["a-seed3", "a-seed4"], [3, 4]) == "a"


def test_seed_groups_of_ablate_runs_are_named_by_their_configuration(trained, tmp_path):
    # `iqa ablate --grid 'seed=0,1,2'` names its runs 'seed=0', 'seed=1', 'seed=2': the names say nothing but
    # the seed, so the group is named by what was trained, not 'seed= (3 seeds)'
    out = tmp_path / "abl"
    r = iqa("ablate", "--cache", trained / "feats.h5", "--grid", "seed=0,1,2", "--lds", "--fds", "--epochs", 2,
            "--hidden", 16, "--out", out, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    runs = [out / f"seed={s}" for s in (0, 1, 2)]
    r = iqa("report", *runs, "--no-baseline")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[2].startswith("| lds+fds ks=5 sigma=2 (3 seeds) | "), r.stdout
    j = json.loads(iqa("report", *runs, "--format", "json").stdout)
    assert j["entries"][0]["name"] == "lds+fds ks=5 sigma=2 (3 seeds)" and j["entries"][0]["kind"] == "seeds"
    # beside other groups, a group's name also says what differs from them
    vanilla = [variant(trained / "vanilla_s0", tmp_path / "v" / f"seed={s}", seed=s) for s in (0, 1)]
    longer = [variant(trained / "vanilla_s0", tmp_path / "e" / f"seed={s}", seed=s, train={"epochs": 7})
              for s in (0, 1)]
    names = [e["name"] for e in json.loads(iqa("report", *runs, *vanilla, *longer, "--format", "json").stdout)
             ["entries"]]
    assert names == ["lds+fds ks=5 sigma=2 epochs=2 (3 seeds)", "vanilla epochs=3 (2 seeds)",
                     "vanilla epochs=7 (2 seeds)"]


def test_training_labels_say_what_was_trained():
    from iqa_cache.report import training_label
    from iqa_cache.train.config import TrainConfig

    base = TrainConfig().to_dict()
    assert training_label(base) == "vanilla"
    lds = dict(base, lds={"enabled": True, "reweight": "sqrt_inv", "kernel": "gaussian", "ks": 11, "sigma": 10.0})
    assert training_label(lds) == "lds ks=11 sigma=10"
    both = dict(lds, fds=dict(base["fds"], enabled=True, kernel="triang"))
    assert training_label(both) == "lds ks=11 sigma=10, fds kernel=triang ks=5 sigma=2"
    assert training_label(dict(base, lds=dict(base["lds"], reweight="inverse"))) == "rw-inverse"
    assert training_label(dict(lds, lds=dict(lds["lds"], reweight="inverse"))) == "lds-inverse ks=11 sigma=10"
    # settings of an LDS that is off do not matter; other differences are named
    other = dict(base, lds=dict(base["lds"], ks=9), optim=dict(base["optim"], lr=0.5))
    assert training_label(base, [other]) == "vanilla lr=0.001"

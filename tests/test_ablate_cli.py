"""`iqa ablate` through the command line: on a cache made by `iqa embed`
(tiny random-weight encoder), with inline and TOML grids, and its errors."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iqa_cache.cli.main import app

from .conftest import learnable_problem, write_feature_cache

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory, koniq_root, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("emb") / "tiny.h5"
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained", "none",
            "--device", "cpu", "--workers", "0", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    x, y, split = learnable_problem(n=400)
    return write_feature_cache(tmp_path_factory.mktemp("fc") / "feats.h5", x, y, split)


@pytest.mark.slow
def test_ablate_on_an_embedded_cache_through_the_cli(embedded_cache, tmp_path):
    out = tmp_path / "abl"
    grid = "lds=on,off; lds_kernel=gaussian,laplace; fds=on,off"
    r = subprocess.run([sys.executable, "-m", "iqa_cache.cli", "ablate", "--cache", str(embedded_cache), "--grid", grid,
                        "--out", str(out), "--epochs", "3", "--hidden", "16", "--blocks", "1", "--batch-size", "8",
                        "--lds-ks", "3", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = ["lds=on,lds_kernel=gaussian,fds=on", "lds=on,lds_kernel=gaussian,fds=off",
             "lds=on,lds_kernel=laplace,fds=on", "lds=on,lds_kernel=laplace,fds=off", "lds=off,fds=on",
             "lds=off,fds=off"]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Test MAE per label range, 6 configuration(s) sorted by validation MAE")
    assert lines[2].startswith("| run | val MAE | best epoch | [0,20) |")
    rows = [line.split("|")[1].strip() for line in lines[4:10]]
    assert sorted(rows) == sorted(names)
    assert "randomly initialised encoder" in r.stdout  # --pretrained none is said in the table
    assert "in 2 stack(s)" in r.stderr and "ablation" in r.stderr  # summary line and progress bar on stderr
    for n in names:
        cfg = json.loads((out / n / "config.json").read_text())
        assert cfg["ablation"]["name"] == n and cfg["train"]["lds"]["ks"] == 3 and cfg["train"]["epochs"] == 3
        assert cfg["train"]["fds"]["enabled"] == n.endswith("fds=on")
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(row for row in f if not row.startswith("#")))
    assert [t["run"] for t in table] == rows
    vals = [float(t["val_mae"]) for t in table]
    # 40 images of a random tiny encoder, 3 epochs: a head need not beat the training mean yet, and says so
    assert vals == sorted(vals) and all(t["status"] == "ok" or t["status"].startswith("worse-than-mean: ")
                                        for t in table), [t["status"] for t in table]
    rep = iqa("report", *[out / n for n in names], "--format", "csv", "--tables", "ranges")
    assert rep.exit_code == 0, rep.output
    got = {row[0]: row[-1] for row in csv.reader(io.StringIO(rep.stdout)) if row and row[0] in names}
    for t in table:
        assert float(got[t["run"]]) == pytest.approx(float(t["All"]), abs=1e-4)


def test_ablate_with_a_toml_grid_and_base_options(feature_cache, tmp_path):
    g = tmp_path / "grid.toml"
    g.write_text('fds = true\nfds_kernel = ["triang", "laplace"]\nfds_ks = [3, 7]\nseed = [0, 1]\n')
    r = iqa("ablate", "--cache", feature_cache, "--grid", g, "--out", tmp_path / "a", "--lds", "--lds-sigma", 3,
            "--epochs", 2, "--hidden", 16, "--blocks", 1, "--lr", 0.01, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "in 1 stack(s)" in r.stderr
    runs = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert len(runs) == 8 and "fds=on,fds_kernel=laplace,fds_ks=7,seed=1" in runs  # the constant fds=on too
    cfg = json.loads((tmp_path / "a" / "fds=on,fds_kernel=laplace,fds_ks=7,seed=1" / "config.json").read_text()
                     )["train"]
    assert cfg["lds"] == {"enabled": True, "reweight": "sqrt_inv", "kernel": "gaussian", "ks": 5, "sigma": 3.0}
    assert cfg["fds"]["kernel"] == "laplace" and cfg["fds"]["ks"] == 7 and cfg["seed"] == 1
    assert cfg["optim"]["lr"] == 0.01
    plan = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert plan["grid"]["fds_ks"] == [3, 7] and len(plan["configurations"]) == 8


@pytest.mark.parametrize("grid,needles", [
    ("lds=on; kernel=gaussian", ["grid key 'kernel'", "lds_kernel"]),
    ("lds=on; lds_ks=4", ["lds_ks='4'", "even", "ks-1 = 3"]),
    ("fds=on; fds_kernel=box", ["'box'", "gaussian, triang, laplace"]),
    ("lr=fast", ["lr='fast'", "positive number"]),
])
def test_bad_grid_is_a_one_line_error(feature_cache, tmp_path, grid, needles):
    r = iqa("ablate", "--cache", feature_cache, "--grid", grid, "--out", tmp_path / "x", "--no-progress")
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in r.output
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "x").exists()


def test_existing_results_are_not_replaced_without_overwrite(feature_cache, tmp_path):
    args = ["ablate", "--cache", feature_cache, "--grid", "lds=on,off", "--out", tmp_path / "a", "--epochs", 1,
            "--hidden", 8, "--blocks", 0, "--no-progress"]
    assert iqa(*args).exit_code == 0
    before = (tmp_path / "a" / "lds=on" / "predictions.csv").read_bytes()
    r = iqa(*args, "--seed", 5)
    assert r.exit_code == 2 and "--overwrite" in r.stderr and "lds=" in r.stderr
    assert (tmp_path / "a" / "lds=on" / "predictions.csv").read_bytes() == before
    r = iqa(*args, "--seed", 5, "--overwrite")
    assert r.exit_code == 0 and (tmp_path / "a" / "lds=on" / "predictions.csv").read_bytes() != before
    assert json.loads((tmp_path / "a" / "lds=on" / "config.json").read_text())["train"]["seed"] == 5


def test_all_configurations_diverging_exits_4(feature_cache, tmp_path):
    r = iqa("ablate", "--cache", feature_cache, "--grid", "lr=1e30,1e31", "--out", tmp_path / "a", "--epochs", 1,
            "--hidden", 8, "--blocks", 0, "--no-progress")
    assert r.exit_code == 4
    assert "2 of 2 configuration(s) diverged" in r.stderr
    assert r.stdout.count("diverged: training diverged at epoch 0") == 2
    assert not [p for p in (tmp_path / "a").iterdir() if p.is_dir()]


def test_ablate_help_shares_the_train_head_options():
    h = iqa("ablate", "--help")
    assert h.exit_code == 0
    for opt in ("--grid", "--out", "--max-stack", "--lds / --no-lds", "--fds-ks", "--lds-sigma", "--epochs",
                "--preset", "--overwrite"):
        assert opt in h.output, opt
    assert "ablate" in iqa("--help").output

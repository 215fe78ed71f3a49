"""Issue 33's first-hour paths: a licence and a citation, rerunning from a
saved run's config, and an ablation folder passed where runs are expected."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from iqa_cache.cli.main import app

from .conftest import learnable_problem, write_feature_cache

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    x, y, split = learnable_problem(n=300)
    return write_feature_cache(tmp_path_factory.mktemp("fc") / "feats.h5", x, y, split)


@pytest.fixture(scope="module")
def grid(feature_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("g") / "grid"
    r = iqa("ablate", "--cache", feature_cache, "--out", out, "--grid", "lds=on,off; seed=0,1", "--epochs", 3,
            "--hidden", 16, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    return out


def test_licence_and_citation_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in cff and f"version: {project['version']}" in cff
    assert 'title: "Imbalance Problem in Image Quality Assessment"' in cff and "license: MIT" in cff


def test_train_head_config_reruns_a_saved_run_and_options_beside_it_win(feature_cache, tmp_path):
    first = tmp_path / "first"
    r = iqa("train-head", "--cache", feature_cache, "--lds", "--lds-sigma", 3, "--lr", 0.003, "--epochs", 2,
            "--hidden", 16, "--seed", 4, "--out", first, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    saved = json.loads((first / "config.json").read_text())["train"]
    shown = iqa("train-head", "--cache", feature_cache, "--config", first / "config.json", "--show-config")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["train"] == saved  # the same configuration, not the defaults
    again = iqa("train-head", "--cache", feature_cache, "--config", first, "--epochs", 3, "--seed", 5,
                "--show-config")
    cfg = json.loads(again.stdout)["train"]
    assert cfg["epochs"] == 3 and cfg["seed"] == 5
    assert cfg["lds"] == saved["lds"] and cfg["lds"]["sigma"] == 3.0 and cfg["optim"]["lr"] == 0.003
    assert cfg["head"]["hidden_dim"] == 16


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("[1, 2]", "not a run's config.json"), ("{oops", "not a readable JSON file"),
    ('{"train": {"epochs": "many"}}', "--config"),
])
def test_a_bad_config_file_is_one_line(feature_cache, tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    r = iqa("train-head", "--cache", feature_cache, "--config", path, "--show-config")
    assert r.exit_code != 0 and "Traceback" not in r.output
    err = r.output.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0], r.output


def test_report_reads_an_ablation_folder_as_its_runs(grid):
    whole = iqa("report", grid, "--format", "csv")
    assert whole.exit_code == 0, whole.output
    rows = {ln.split(",")[0].rsplit(" ", 1)[0] for ln in whole.stdout.splitlines() if ln.startswith("lds=")}
    assert rows == {"lds=off (2 seeds)", "lds=on (2 seeds)"}, whole.stdout
    # a shell glob passes summary.csv and ablation.json too: they are no runs, and no warning is due
    globbed = iqa("report", *sorted(p for p in grid.iterdir() if not p.name.startswith(".")), "--format", "csv")
    assert globbed.exit_code == 0 and globbed.stdout == whole.stdout
    assert "skipping" not in globbed.stderr


def test_predict_on_an_ablation_folder_says_which_run_to_pass(grid, tmp_path):
    r = iqa("predict", "--run", grid, "--dir", tmp_path, "--out", tmp_path / "s.csv")
    assert r.exit_code != 0
    msg = r.output.strip()
    assert f"{grid} is an ablation folder (iqa ablate) of 4 finished runs, not a run: pass one of them, e.g. " \
        f"{grid}/" in msg and "\n" not in msg
    best = min((p for p in grid.iterdir() if (p / "metrics.json").is_file()),
               key=lambda p: json.loads((p / "metrics.json").read_text())["best_val_mae"])
    assert msg.endswith(str(best))


def test_quiet_turns_progress_bars_off(feature_cache, tmp_path):
    args = ["train-head", "--cache", feature_cache, "--epochs", 3, "--hidden", 16, "--device", "cpu"]
    loud = iqa(*args, "--out", tmp_path / "a")
    quiet = iqa("-q", *args, "--out", tmp_path / "b")
    assert loud.exit_code == quiet.exit_code == 0
    assert "training:" in loud.stderr and "epoch/s" in loud.stderr  # the epoch bar
    assert quiet.stderr == "" and quiet.stdout.count("\n") == loud.stdout.count("\n")


@pytest.mark.parametrize("labels, scale", [
    ([0.03, 0.5, 0.97], (0.0, 1.0)),  # probabilities
    ([1.2, 3.3, 4.9], (1.0, 5.0)),  # a 1-5 MOS
    ([0.0, 1.0, 2.0, 3.0, 4.0], (0.0, 4.0)),  # 0-4 integers (the paper's internal set)
    ([0.0, 0.2, 2.4, 5.0], (0.0, 5.0)),  # STS-B: 0-5 in steps of 0.2
    ([1.5, 9.5], (1.0, 10.0)), ([0.5, 9.5], (0.0, 10.0)),
    ([3.9, 50.0, 88.4], (0.0, 100.0)),  # KonIQ's MOS: ranges [0,20) ... [80,100], not [3.9, ...)
    ([-3.2, 2.5], (-4.0, 3.0)), ([120.0, 180.5], (120.0, 181.0)),  # no common scale: whole numbers around
])
def test_a_cache_without_a_declared_range_gets_a_round_scale(labels, scale):
    from iqa_cache.binning import default_label_range

    assert default_label_range(np.array(labels + [np.nan])) == scale


def test_import_and_embed_say_which_scale_the_labels_are_on(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    labels = np.round(np.linspace(4.3, 97.6, 30), 1)
    (tmp_path / "l.csv").write_text("id,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels)))
    r = iqa("import", "--features", tmp_path / "f.npy", "--labels", tmp_path / "l.csv", "--out", tmp_path / "c.h5",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"{tmp_path / 'c.h5'}: labels 4.3–97.6 on the scale 0–100 (the first common scale that holds them; " \
           "--label-range LO,HI declares another)" in r.stdout
    r = iqa("import", "--features", tmp_path / "f.npy", "--labels", tmp_path / "l.csv", "--out", tmp_path / "d.h5",
            "--label-range", "4,98", "--no-progress")
    assert "labels 4.3–97.6 on the scale 4–98 (declared by --label-range)" in r.stdout


def test_runs_on_two_imported_feature_files_are_flagged_as_different_caches(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.linspace(5, 95, 60)
    (tmp_path / "l.csv").write_text("id,label\n" + "".join(f"{i},{v:.2f}\n" for i, v in enumerate(labels)))
    runs = []
    for name in ("a", "b"):  # the same labels and ids, features from two different files
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(60, 8)).astype(np.float32))
        r = iqa("import", "--features", tmp_path / f"{name}.npy", "--labels", tmp_path / "l.csv",
                "--out", tmp_path / f"{name}.h5", "--no-progress")
        assert r.exit_code == 0, r.output
        out = tmp_path / f"run_{name}"
        r = iqa("train-head", "--cache", tmp_path / f"{name}.h5", "--epochs", 2, "--hidden", 8, "--out", out,
                "--no-progress", "--device", "cpu")
        assert r.exit_code == 0, r.output
        runs.append(out)
    r = iqa("report", *runs)
    assert r.exit_code == 0 and "these runs were trained on different caches" in r.stdout, r.stdout
    same = iqa("report", runs[0], runs[0].parent / "run_a")
    assert "different caches" not in same.stdout


def test_ablation_json_base_is_the_options_not_the_first_grid_point(grid):
    doc = json.loads((grid / "ablation.json").read_text())
    base = doc["base"]
    assert base["epochs"] == 3 and base["head"]["hidden_dim"] == 16  # the options given to ablate
    assert base["lds"]["enabled"] is False and base["fds"]["enabled"] is False  # no grid value applied
    first = json.loads((grid / doc["configurations"][0]["name"] / "config.json").read_text())["train"]
    assert first["lds"]["enabled"] is True  # the grid's first point (lds=on) is not the base


def test_report_shows_srcc_and_plcc_by_default(grid):
    r = iqa("report", grid)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("| run | [0,20) |")  # Table 1 first, as always
    assert "| run | SRCC | KRCC | PLCC | PLCC (logistic) | RMSE |" in r.stdout
    only = iqa("report", grid, "--tables", "ranges")
    assert "SRCC" not in only.stdout

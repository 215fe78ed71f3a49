"""`--out` never deletes what is not ours (issue 9, §2), through the CLI in
tmp_path: `train-head`/`ablate --overwrite` replace only directories iqa
wrote (marker `.iqa-run`, or an older version's full run layout), never a
folder of the user's, `--out runs` holding many runs, the folder holding the
cache or the current directory (refused before training); `ablate` leaves
exactly the runs of its grid, keeps finished configurations on a rerun and
refuses another grid without --overwrite; `predict --out` never replaces an
input or a file in a run; a full disk while saving leaves nothing that
passes as complete."""
from __future__ import annotations

import builtins
import csv
import errno
import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iqa_cache.cli.main import app

from .conftest import learnable_problem, write_feature_cache

runner = CliRunner()
FAST = ("--epochs", 1, "--hidden", 8, "--blocks", 0, "--no-progress", "--device", "cpu")


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, *needles, code=2):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.output, r.output
    assert sum(line.startswith("error: ") for line in lines) == 1, r.stderr
    for n in needles:
        assert str(n) in lines[-1], (n, lines[-1])
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    x, y, split = learnable_problem(n=160, d=8)
    return write_feature_cache(tmp_path_factory.mktemp("fc") / "feats.h5", x, y, split)


def train(cache, out, *extra):
    return iqa("train-head", "--cache", cache, "--out", out, *FAST, *extra)


def ablate(cache, out, grid, *extra):
    return iqa("ablate", "--cache", cache, "--grid", grid, "--out", out, *FAST, *extra)


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "photos").mkdir()
    (path / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not ours")
    return path


# ------------------------------------------------------------ train-head --out

def test_a_folder_of_the_users_files_is_never_replaced(feats, tmp_path):
    notes = user_folder(tmp_path / "notes")
    before = snapshot(notes)
    for extra in ((), ("--overwrite",)):
        one_line_error(train(feats, notes, *extra), "refusing to replace", str(notes), "not a run written by iqa",
                       "notes.txt", "photos/")
        assert snapshot(notes) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_out_runs_holding_many_runs_is_refused(feats, tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):
        assert train(feats, runs / f"r{seed}", "--seed", seed).exit_code == 0
    before = snapshot(runs)
    one_line_error(train(feats, runs, "--overwrite"), "refusing to replace", "not a run written by iqa",
                   "r0/, r1/, r2/")
    assert snapshot(runs) == before
    # one of them is ours to replace
    assert train(feats, runs / "r1", "--seed", 7, "--overwrite").exit_code == 0
    assert json.loads((runs / "r1" / "config.json").read_text())["train"]["seed"] == 7
    assert sorted(p.name for p in runs.iterdir()) == ["r0", "r1", "r2"]


def test_out_holding_the_cache_is_refused_before_training(tmp_path):
    x, y, split = learnable_problem(n=160, d=8)
    data = tmp_path / "project"
    cache = write_feature_cache(data / "feats.h5", x, y, split)
    before = cache.read_bytes()
    for out in (data, tmp_path):  # the folder holding it, and an ancestor
        r = train(cache, out, "--overwrite")
        one_line_error(r, f"refusing --out {out}", "holds the cache being trained on", "feats.h5")
        assert "best epoch" not in r.stdout  # refused before training, not after
        assert cache.read_bytes() == before
        r = ablate(cache, out, "lds=on,off", "--overwrite")
        one_line_error(r, f"refusing --out {out}", "holds the cache being trained on")
        assert cache.read_bytes() == before and sorted(p.name for p in data.iterdir()) == ["feats.h5"]


def test_out_dot_is_refused_before_training(feats, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", work):
        for extra in ((), ("--overwrite",)):
            r = train(feats, out, *extra)
            one_line_error(r, f"refusing --out {out}", "current directory")
            assert "best epoch" not in r.stdout
            one_line_error(ablate(feats, out, "lds=on,off", *extra), "current directory")
    assert work.is_dir() and not list(work.iterdir()) and feats.is_file()


def test_files_and_foreign_files_in_a_run_are_refused(feats, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me\n")
    one_line_error(train(feats, f, "--overwrite"), "refusing to replace", "is a file")
    assert f.read_text() == "keep me\n"
    run = tmp_path / "run"
    assert train(feats, run).exit_code == 0
    (run / "notes.txt").write_text("what I saw\n")
    one_line_error(train(feats, run, "--overwrite"), "not a run written by iqa", "holds notes.txt")
    assert (run / "notes.txt").read_text() == "what I saw\n"


def test_runs_of_older_versions_are_recognised_by_their_layout(feats, tmp_path):
    """A run written before the marker existed (config.json, head.pt,
    predictions.csv, metrics.json, history.csv, nothing else) is ours."""
    run = tmp_path / "old"
    assert train(feats, run).exit_code == 0
    (run / ".iqa-run").unlink()
    one_line_error(train(feats, run), "already exists", "--overwrite")
    assert train(feats, run, "--seed", 3, "--overwrite").exit_code == 0
    assert (run / ".iqa-run").is_file()
    # the same layout with a file of the user's in it is not
    (run / ".iqa-run").unlink()
    (run / "plot.png").write_bytes(b"png")
    one_line_error(train(feats, run, "--overwrite"), "not a run written by iqa", "plot.png")


def test_an_empty_folder_may_be_used(feats, tmp_path):
    (tmp_path / "empty").mkdir()
    assert train(feats, tmp_path / "empty").exit_code == 0
    assert (tmp_path / "empty" / ".iqa-run").is_file()


# ----------------------------------------------------------------- ablate --out

def test_ablate_refuses_a_folder_of_the_users_and_a_folder_of_runs(feats, tmp_path):
    notes = user_folder(tmp_path / "notes")
    before = snapshot(notes)
    for extra in ((), ("--overwrite",)):
        one_line_error(ablate(feats, notes, "lds=on,off", *extra), "refusing to write an ablation into",
                       "not an ablation folder written by iqa", "notes.txt")
    assert snapshot(notes) == before
    runs = tmp_path / "runs"
    assert train(feats, runs / "r0").exit_code == 0
    one_line_error(ablate(feats, runs, "lds=on,off", "--overwrite"), "not an ablation folder", "r0/")
    one_line_error(ablate(feats, runs / "r0", "lds=on,off", "--overwrite"), "it is a run directory")
    assert sorted(p.name for p in runs.iterdir()) == ["r0"]


def _summary_runs(out: Path) -> list[str]:
    with open(out / "summary.csv", newline="") as f:
        return [row["run"] for row in csv.DictReader(r for r in f if not r.startswith("#"))]


def test_ablate_with_another_grid_leaves_exactly_its_runs(feats, tmp_path):
    out = tmp_path / "abl"
    assert ablate(feats, out, "lds=on,off").exit_code == 0
    (out / "README.txt").write_text("my notes on this ablation\n")
    # without --overwrite: refused, naming the runs that would go
    one_line_error(ablate(feats, out, "fds=on,off"), "another grid", "lds=on (not in this grid)",
                   "lds=off (not in this grid)", "--overwrite")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lds=off", "lds=on"]
    r = ablate(feats, out, "fds=on,off", "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [".iqa-run", "README.txt", "ablation.json", "fds=off", "fds=on",
                                                     "summary.csv"]
    assert sorted(_summary_runs(out)) == ["fds=off", "fds=on"]
    assert (out / "README.txt").read_text() == "my notes on this ablation\n"
    rep = iqa("report", *sorted(p for p in out.iterdir() if p.is_dir()), "--format", "csv")
    assert rep.exit_code == 0 and "lds=" not in rep.stdout


def test_ablate_rerun_keeps_finished_configurations(feats, tmp_path):
    out = tmp_path / "abl"
    grid = "lds=on; lds_sigma=1,2,3"
    assert ablate(feats, out, grid).exit_code == 0
    names = ["lds=on,lds_sigma=1", "lds=on,lds_sigma=2", "lds=on,lds_sigma=3"]
    stamps = {n: (out / n / "head.pt").stat().st_mtime_ns for n in names}
    summary = (out / "summary.csv").read_text()
    r = ablate(feats, out, grid)
    assert r.exit_code == 0, r.output
    assert "kept 3 finished, training 0" in r.stderr
    assert {n: (out / n / "head.pt").stat().st_mtime_ns for n in names} == stamps
    assert (out / "summary.csv").read_text().splitlines()[1:] == summary.splitlines()[1:]
    # one run missing (e.g. removed by hand): only it is trained
    import shutil
    shutil.rmtree(out / "lds=on,lds_sigma=2")
    r = ablate(feats, out, grid)
    assert r.exit_code == 0 and "kept 2 finished, training 1" in r.stderr
    assert (out / "lds=on,lds_sigma=1" / "head.pt").stat().st_mtime_ns == stamps["lds=on,lds_sigma=1"]
    # values added to the grid: the finished ones are kept, the new one trained
    r = ablate(feats, out, "lds=on; lds_sigma=1,2,3,4")
    assert r.exit_code == 0 and "kept 3 finished, training 1" in r.stderr
    assert sorted(_summary_runs(out)) == names + ["lds=on,lds_sigma=4"]
    # other settings for the same names: refused without --overwrite, naming them
    one_line_error(ablate(feats, out, grid, "--seed", 4), "lds=on,lds_sigma=1 (other settings)", "--overwrite")
    r = ablate(feats, out, grid, "--seed", 4, "--overwrite")
    assert r.exit_code == 0 and "kept" not in r.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    assert json.loads((out / "lds=on,lds_sigma=1" / "config.json").read_text())["train"]["seed"] == 4


def test_ablate_rerun_on_another_cache_is_refused(feats, tmp_path):
    x, y, split = learnable_problem(n=160, d=8, seed=1)
    other = write_feature_cache(tmp_path / "other.h5", x, y, split)
    out = tmp_path / "abl"
    assert ablate(feats, out, "lds=on,off").exit_code == 0
    one_line_error(ablate(other, out, "lds=on,off"), "lds=on (another cache)", "--overwrite")


# -------------------------------------------------------------- predict --out

@pytest.fixture(scope="module")
def scored(tmp_path_factory, koniq_root, tiny_model):
    work = tmp_path_factory.mktemp("pred")
    h5, run = work / "tiny.h5", work / "run"
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained", "none",
            "--device", "cpu", "--workers", 0, "--out", h5, "--no-progress")
    assert r.exit_code == 0, r.output
    assert train(h5, run).exit_code == 0
    images = work / "images"
    images.mkdir()
    for p in sorted((koniq_root / "512x384").glob("*.jpg"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    return run, images


def predict(run, *args):
    return iqa("predict", "--run", run, *args, "--device", "cpu", "--no-progress")


def test_predict_out_never_replaces_an_input_or_a_run_file(scored, tmp_path):
    run, images = scored
    imgs = sorted(images.glob("*.jpg"))
    before = {p: p.read_bytes() for p in imgs}
    run_before = snapshot(run)
    for extra in ((), ("--overwrite",)):
        one_line_error(predict(run, *imgs, "--out", imgs[1], *extra), "refusing --out", "one of the images")
        one_line_error(predict(run, "--dir", images, "--out", imgs[0], *extra), "one of the images")
        one_line_error(predict(run, *imgs, "--out", run / "predictions.csv", *extra), "inside the run directory")
        one_line_error(predict(run, *imgs, "--out", run / "scores.csv", *extra), "inside the run directory")
    assert {p: p.read_bytes() for p in imgs} == before and snapshot(run) == run_before
    # an existing file needs --overwrite
    out = tmp_path / "scores.csv"
    out.write_text("old\n")
    one_line_error(predict(run, *imgs, "--out", out), "already exists", "--overwrite")
    assert out.read_text() == "old\n"
    r = predict(run, *imgs, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("path,score\n") and len(out.read_text().splitlines()) == 4
    one_line_error(predict(run, *imgs, "--out", tmp_path), "is a folder")


# ------------------------------------------------------------------ disk full

@pytest.fixture()
def disk_full(monkeypatch):
    """``disk_full(name)``: writing a file called ``name`` (or its temporary
    sibling ``.name.partial-PID``) stops half-way with ENOSPC, as on a full
    disk."""
    real_open = builtins.open
    targets: set[str] = set()

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax"):
            name = Path(file).name
            if any(name == t or name.startswith(f".{t}.") for t in targets):
                return Full(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    return targets.add


@pytest.mark.parametrize("name", ["config.json", "head.pt", "predictions.csv", "metrics.json", "history.csv",
                                  ".iqa-run"])
def test_disk_full_while_saving_a_run(feats, tmp_path, disk_full, name):
    new, old = tmp_path / "new", tmp_path / "old"
    assert train(feats, old).exit_code == 0
    before = snapshot(old)
    disk_full(name)
    one_line_error(train(feats, new), "cannot write", f"{new}", name, "No space left on device")
    assert not new.exists()
    one_line_error(train(feats, old, "--seed", 3, "--overwrite"), f"{old}", name, "No space left on device")
    assert snapshot(old) == before  # the old run is untouched, not half replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no half run under any name


def test_disk_full_while_saving_the_ablation_summary(feats, tmp_path, disk_full, monkeypatch):
    out = tmp_path / "abl"
    disk_full("summary.csv")
    one_line_error(ablate(feats, out, "lds=on,off"), "cannot write", str(out / "summary.csv"),
                   "No space left on device", "rerun the same command")
    assert sorted(p.name for p in out.iterdir()) == [".iqa-run", "lds=off", "lds=on"]  # no half summary
    assert json.loads((out / ".iqa-run").read_text())["status"] == "partial"
    monkeypatch.undo()
    r = ablate(feats, out, "lds=on,off")
    assert r.exit_code == 0 and "kept 2 finished, training 0" in r.stderr
    assert sorted(_summary_runs(out)) == ["lds=off", "lds=on"]
    assert json.loads((out / ".iqa-run").read_text())["status"] == "complete"


def test_disk_full_while_writing_scores(scored, tmp_path, disk_full):
    run, images = scored
    out = tmp_path / "scores.csv"
    out.write_text("old\n")
    disk_full("scores.csv")
    one_line_error(predict(run, "--dir", images, "--out", out, "--overwrite"), "cannot write", str(out),
                   "No space left on device", code=2)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]

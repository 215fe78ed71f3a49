"""Interrupted stage two resumes (issue 9, §6): a real `iqa train-head` or
`iqa ablate` process killed with SIGKILL, at a random point of training or
at the exact moments a run directory is swapped into place, leaves only
what the next run cleans up (its own leftovers, by marker); a rerun of the
same `iqa ablate` keeps the finished configurations and trains only the
missing ones, with the same numbers as an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iqa_cache.cli.main import app

from .conftest import learnable_problem, write_feature_cache

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
FAST = ["--epochs", "1", "--hidden", "8", "--blocks", "0", "--no-progress", "--device", "cpu"]

# Runs `iqa ARGS...` and SIGKILLs itself at a chosen os.replace: KILL_AT=swap when the N-th complete run
# directory (.NAME.partial-PID) is moved into place, KILL_AT=aside when the N-th old run is moved aside.
KILLER = """
import os, signal, sys
real, seen = os.replace, [0]
def replace(src, dst, **kw):
    s, d = os.path.basename(str(src)), os.path.basename(str(dst))
    hit = (os.environ["KILL_AT"] == "swap" and ".partial-" in s and os.path.isdir(src)) or \\
          (os.environ["KILL_AT"] == "aside" and ".old-" in d)
    if hit:
        seen[0] += 1
        if seen[0] == int(os.environ.get("KILL_NTH", "1")):
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, **kw)
os.replace = replace
from iqa_cache.cli.main import app
app(sys.argv[1:], prog_name="iqa")
"""


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def killed_at(point: str, *args, nth: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILL_AT=point, KILL_NTH=str(nth), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-c", KILLER, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    return r


def hidden_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.is_dir())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {row["run"]: row for row in csv.DictReader(r for r in f if not r.startswith("#"))}


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    x, y, split = learnable_problem(n=160, d=8)
    return write_feature_cache(tmp_path_factory.mktemp("fc") / "feats.h5", x, y, split)


@pytest.mark.slow
def test_train_head_killed_while_moving_its_run_into_place(feats, tmp_path):
    run = tmp_path / "run"
    killed_at("swap", "train-head", "--cache", feats, "--out", run, *FAST)
    assert not run.exists() and len(hidden_dirs(tmp_path)) == 1  # a complete but hidden .run.partial-PID
    r = iqa("train-head", "--cache", feats, "--out", run, *FAST)
    assert r.exit_code == 0, r.output
    assert hidden_dirs(tmp_path) == [] and (run / ".iqa-run").is_file()


@pytest.mark.slow
def test_train_head_killed_mid_replacement_gets_the_old_run_back(feats, tmp_path):
    run = tmp_path / "run"
    assert iqa("train-head", "--cache", feats, "--out", run, *FAST).exit_code == 0
    before = snapshot(run)
    # killed after the old run was moved aside, before the new one took its place
    killed_at("swap", "train-head", "--cache", feats, "--out", run, "--seed", 3, "--overwrite", *FAST)
    assert not run.exists() and len(hidden_dirs(tmp_path)) == 2
    r = iqa("train-head", "--cache", feats, "--out", run, "--seed", 3, *FAST)
    assert r.exit_code == 2 and "already exists" in r.stderr and "restored" in r.stderr
    assert snapshot(run) == before and hidden_dirs(tmp_path) == []
    # killed before anything was moved: the old run is simply still there
    killed_at("aside", "train-head", "--cache", feats, "--out", run, "--seed", 3, "--overwrite", *FAST)
    assert snapshot(run) == before
    r = iqa("train-head", "--cache", feats, "--out", run, "--seed", 3, "--overwrite", *FAST)
    assert r.exit_code == 0 and snapshot(run) != before and hidden_dirs(tmp_path) == []


@pytest.mark.slow
def test_ablate_killed_while_writing_its_second_run_resumes(feats, tmp_path):
    out = tmp_path / "abl"
    grid = "lds=on; lds_sigma=1,2,3,4"
    killed_at("swap", "ablate", "--cache", feats, "--grid", grid, "--out", out, "--max-stack", 1, *FAST, nth=2)
    assert [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] == ["lds=on,lds_sigma=1"]
    assert len(hidden_dirs(out)) == 1 and not (out / "summary.csv").exists()
    r = iqa("ablate", "--cache", feats, "--grid", grid, "--out", out, "--max-stack", 1, *FAST)
    assert r.exit_code == 0, r.output
    assert "kept 1 finished, training 3" in r.stderr
    assert hidden_dirs(out) == [] and sorted(summary(out)) == [f"lds=on,lds_sigma={s}" for s in (1, 2, 3, 4)]


@pytest.mark.slow
def test_ablate_killed_during_training_resumes_with_the_same_numbers(tmp_path):
    """kill -9 from outside at a random point of a grid trained one
    configuration at a time; the rerun keeps what was finished, trains the
    rest, and its summary equals an uninterrupted run's."""
    x, y, split = learnable_problem(n=400, d=16)
    feats = write_feature_cache(tmp_path / "feats.h5", x, y, split)
    grid = "seed=0,1,2,3,4,5"
    args = ["ablate", "--cache", str(feats), "--grid", grid, "--max-stack", "1", "--epochs", "20", "--hidden", "16",
            "--blocks", "1", "--batch-size", "32", "--device", "cpu", "--no-progress"]
    out = tmp_path / "abl"
    p = subprocess.Popen([sys.executable, "-m", "iqa_cache.cli", *args, "--out", str(out)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 600:
            done = [q for q in out.glob("seed=*") if (q / ".iqa-run").is_file()] if out.is_dir() else []
            if done or p.poll() is not None:
                break
            time.sleep(0.01)
        assert p.poll() is None, "finished before it could be killed: make each configuration slower"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.communicate(timeout=60)
    finished = sorted(q.name for q in out.iterdir() if q.is_dir() and not q.name.startswith("."))
    assert 1 <= len(finished) < 6 and not (out / "summary.csv").exists()
    r = iqa(*args, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"kept {len(finished)} finished, training {6 - len(finished)}" in r.stderr
    assert hidden_dirs(out) == []
    ref = tmp_path / "ref"
    assert iqa(*args, "--out", ref).exit_code == 0
    got, want = summary(out), summary(ref)
    assert sorted(got) == sorted(want) == [f"seed={s}" for s in range(6)]
    for name, row in want.items():
        for col in ("val_mae", "best_epoch", "All"):
            assert float(got[name][col]) == pytest.approx(float(row[col]), abs=1e-6), (name, col)

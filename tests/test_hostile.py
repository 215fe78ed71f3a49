"""Issue 30: nothing lost under hostile use.  Every case goes through the
CLI (CliRunner or a subprocess) and asserts the exit code, the one-line
message and what is left on disk: races between two writers of one output,
leftovers of killed writers, HDF5 files that point at other files, inputs
built to exhaust memory or hang, and values that made tracebacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app

runner = CliRunner()
FAST = ("--epochs", 1, "--hidden", 8, "--blocks", 0, "--no-progress", "--device", "cpu")


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, *needles, code=2):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.output, r.output
    assert sum(line.startswith("error: ") for line in lines) == 1, r.stderr
    assert len(lines[-1]) < 600, lines[-1][:1000]
    for n in needles:
        assert str(n) in lines[-1], (n, lines[-1])
    return lines[-1]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture()
def small_import(tmp_path):
    """Features (.npy) and a labels CSV that `iqa import` takes, 12 rows."""
    x = np.arange(36, dtype=np.float32).reshape(12, 3)
    np.save(tmp_path / "x.npy", x)
    rows = "".join(f"i{i},{1 + i % 5},{('train', 'train', 'val', 'test')[i % 4]}\n" for i in range(12))
    (tmp_path / "labels.csv").write_text("id,label,split\n" + rows)
    return tmp_path / "x.npy", tmp_path / "labels.csv"


def do_import(feats, labels, out, *extra):
    return iqa("import", "--features", feats, "--labels", labels, "--out", out, "--no-progress", *extra)


# ------------------------------------------------------- 1. import: the lock first, then the check

def test_import_checks_out_again_once_it_holds_the_lock(small_import, tmp_path, monkeypatch):
    feats, labels = small_import
    first = tmp_path / "first.h5"
    assert do_import(feats, labels, first).exit_code == 0
    out = tmp_path / "out.h5"
    real_enter = cache.WriterLock.__enter__

    def another_import_finished_meanwhile(self):
        # a second `iqa import` to the same --out completed while this one read its inputs
        if not out.exists():
            out.write_bytes(first.read_bytes())
        return real_enter(self)

    monkeypatch.setattr(cache.WriterLock, "__enter__", another_import_finished_meanwhile)
    other = tmp_path / "x2.npy"
    np.save(other, np.load(feats) + 100)
    one_line_error(do_import(other, labels, out), f"--out {out} already exists", "--overwrite")
    assert out.read_bytes() == first.read_bytes()  # the first import's cache is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.h5", "labels.csv", "out.h5", "x.npy", "x2.npy"]


def test_the_lock_message_names_the_command_that_holds_it(small_import, tmp_path):
    feats, labels = small_import
    out = tmp_path / "out.h5"
    with cache.WriterLock(out, "iqa import"):
        err = one_line_error(do_import(feats, labels, out), f"cache {out} is being written by another "
                             f"`iqa import` (pid {os.getpid()})")
    assert "iqa embed" not in err
    assert not out.exists() and not (tmp_path / "out.h5.lock").exists()


# ------------------------------------------------------- 3. leftovers of killed writers

def test_import_removes_what_killed_writers_left_and_only_theirs(small_import, tmp_path):
    feats, labels = small_import
    out = tmp_path / "out.h5"
    gone, alive = dead_pid(), os.getppid()
    left = tmp_path / f".out.h5.importing-{gone}"
    left.write_bytes(b"\x89HDF half a cache" * 1000)
    windows = tmp_path / f".out.h5.importing-{gone}.windows"
    windows.mkdir()
    (windows / "000000.rows").write_bytes(b"\0" * 4096)
    (windows / "000000.pos").write_bytes(b"\0" * 64)
    running = tmp_path / f".out.h5.importing-{alive}"  # a writer that still runs: not ours to remove
    running.write_bytes(b"busy")
    other = tmp_path / f".other.h5.importing-{gone}"  # another output's: left alone
    other.write_bytes(b"x")
    r = do_import(feats, labels, out)
    assert r.exit_code == 0, r.output
    assert "removed 2 temporary file(s) left by an interrupted writer that no longer runs" in r.stderr
    assert f".out.h5.importing-{gone}.windows" in r.stderr
    assert not left.exists() and not windows.exists()
    assert running.read_bytes() == b"busy" and other.exists()
    assert len(cache.load(out)) == 12


@pytest.mark.slow
def test_kill_9_during_import_leaves_nothing_after_the_next_one(tmp_path):
    """A real `kill -9` while windows are written; the next import removes
    the temporary cache and its windows, and writes the same cache."""
    n, d = 40_000, 64
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    perm = rng.permutation(n)
    ids = np.array([f"i{i}" for i in range(n)])
    h5 = tmp_path / "f.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("features", data=x[perm], chunks=(256, d))  # chunked, another order: by windows
        f["ids"] = ids[perm].astype(object).astype(h5py.string_dtype())
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"i{i},{i % 5}\n" for i in range(n)))
    out = tmp_path / "out.h5"
    # killed once the windows folder exists, as it is about to be filled
    code = ("import os, signal, sys, iqa_cache.cache as c\n"
            "c.disk_guard = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from iqa_cache.cli.main import main; sys.argv[0] = 'iqa'; main()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-c", code, "import", "--features", str(h5), "--labels",
                        str(tmp_path / "labels.csv"), "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == -9, p.stderr
    left = sorted(q.name for q in tmp_path.iterdir() if q.name.startswith(".out.h5.importing-"))
    assert left, "the killed import left nothing to clean"
    r = do_import(h5, tmp_path / "labels.csv", out)
    assert r.exit_code == 0, r.output
    assert any(q.endswith(".windows") for q in left), left
    assert "removed 2 temporary file(s)" in r.stderr and left[0] in r.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["f.h5", "labels.csv", "out.h5"]
    np.testing.assert_array_equal(cache.load(out).features, x)

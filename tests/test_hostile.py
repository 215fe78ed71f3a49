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

from iqa_cache import cache

from .conftest import learnable_problem, write_feature_cache
from .test_out_safety import FAST, iqa
from .test_out_safety import one_line_error as _one_line_error


def one_line_error(r, *needles, code=2):
    """test_out_safety's check, and the line is short."""
    line = _one_line_error(r, *needles, code=code)
    assert len(line) < 600, line[:1000]
    return line


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


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    x, y, split = learnable_problem(n=160, d=8)
    return write_feature_cache(tmp_path_factory.mktemp("fc") / "feats.h5", x, y, split)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def three_images(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "data"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (40 * i, 90, 200)).save(root / f"a{i}.jpg")
    return root


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


# ------------------------------------------------------- 2. one writer per ablation folder (and run directory)

@pytest.mark.slow
def test_a_second_ablate_into_one_out_is_refused_naming_the_holder(feats, tmp_path):
    from iqa_cache.train.grid.run import ablation_lock

    out = tmp_path / "abl"
    with ablation_lock(out):  # a first `iqa ablate` into OUT still runs
        one_line_error(iqa("ablate", "--cache", feats, "--grid", "lds=on,off", "--out", out, *FAST),
                       f"ablation folder {out} is being written by another `iqa ablate` (pid {os.getpid()})",
                       "another --out")
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    r = iqa("ablate", "--cache", feats, "--grid", "lds=on,off", "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abl"]


def test_a_second_train_head_into_one_run_directory_is_refused(feats, tmp_path):
    from iqa_cache.train.runs import output_lock

    out = tmp_path / "run"
    with output_lock(out, "iqa train-head", "run directory"):
        one_line_error(iqa("train-head", "--cache", feats, "--out", out, *FAST),
                       f"run directory {out} is being written by another `iqa train-head` (pid {os.getpid()})")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_ablates_at_once_leave_one_grid(feats, tmp_path):
    """A real race: the first ablate holds OUT while it trains; the second,
    with another grid, is refused; OUT ends with the first grid's runs."""
    out, ready, go = tmp_path / "abl", tmp_path / "ready", tmp_path / "go"
    code = ("import os, pathlib, sys, time, iqa_cache.train.grid.run as r\n"
            "real = r.train_and_write\n"
            "def waiting(*a, **k):\n"
            f"    pathlib.Path({str(ready)!r}).touch()\n"
            f"    while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
            "    return real(*a, **k)\n"
            "r.train_and_write = waiting\n"
            "from iqa_cache.cli.main import main; sys.argv[0] = 'iqa'; main()")
    first = subprocess.Popen([sys.executable, "-c", code, "ablate", "--cache", str(feats), "--grid", "lds=on,off",
                              "--out", str(out), *map(str, FAST)], env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if ready.exists() or first.poll() is not None:
                break
            import time
            time.sleep(0.05)
        assert ready.exists(), first.communicate()
        one_line_error(iqa("ablate", "--cache", feats, "--grid", "fds=on,off", "--out", out, *FAST),
                       f"is being written by another `iqa ablate` (pid {first.pid})")
    finally:
        go.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "ablation.json", "lds=off", "lds=on", "summary.csv"]


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
            "c.disk_guard = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from iqa_cache.cli.main import main; sys.argv[0] = 'iqa'; main()")
    env = cli_env()
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


# ------------------------------------------------------- 4. HDF5 files that point at other files

@pytest.mark.parametrize("kind", ["external raw storage", "virtual dataset", "external link"])
def test_hdf5_features_that_point_at_another_file_are_refused(small_import, tmp_path, kind):
    _, labels = small_import
    secret = tmp_path / "secret.bin"  # any file: /etc/passwd in the report
    secret.write_bytes(np.arange(36, dtype=np.float32).tobytes())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["features"] = np.ones((12, 3), np.float32)
    feats = tmp_path / "stub.h5"
    with h5py.File(feats, "w") as f:
        if kind == "external raw storage":
            f.create_dataset("features", shape=(12, 3), dtype="f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(12, 3), dtype="f4")
            layout[:] = h5py.VirtualSource(str(other), "features", shape=(12, 3))
            f.create_virtual_dataset("features", layout)
        else:
            f["group/features"] = np.zeros((12, 3), np.float32)
            f["features"] = h5py.ExternalLink(str(other), "features")
    want = {"external raw storage": "dataset 'features' stores its data in another file (external raw storage)",
            "virtual dataset": "dataset 'features' is a virtual dataset",
            "external link": f"'features' is an external link to {other}:features"}[kind]
    out = tmp_path / "out.h5"
    for extra in ((), ("--features-key", "features")):
        one_line_error(do_import(feats, labels, out, *extra), f"--features {feats}: {want}",
                       "reads only what the named file itself holds")
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------- 5. a FIFO listed as an image

@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_a_fifo_listed_as_an_image_is_a_failed_item_not_a_hang(tmp_path, tiny_model, pipeline):
    root = three_images(tmp_path)
    os.mkfifo(root / "pipe.jpg")  # opening it for reading waits for a writer that never comes
    (tmp_path / "l.csv").write_text("image,label\na0.jpg,1\npipe.jpg,2\na1.jpg,3\na2.jpg,4\n")
    out = tmp_path / "c.h5"
    p = subprocess.run([sys.executable, "-m", "iqa_cache.cli", "embed", "--dataset", "csv", "--root", str(root),
                        "--csv", str(tmp_path / "l.csv"), "--model", tiny_model, "--pretrained", "none",
                        "--device", "cpu", "--workers", "1", "--pipeline", pipeline, "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, env=cli_env(), timeout=180)
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr
    assert cache.failures(out) == [("pipe.jpg", "a FIFO (named pipe), not a regular file")]
    assert "pipe.jpg: a FIFO (named pipe), not a regular file" in p.stdout + p.stderr
    data = cache.load(out)
    assert len(data) == 3 and "pipe.jpg" not in list(data.image_id)


# ------------------------------------------------------- 7. shard patterns and labels CSVs are bounded

def test_a_shard_pattern_naming_too_many_shards_is_refused_before_it_is_expanded(tmp_path):
    import tracemalloc

    from iqa_cache.sources.wds import MAX_SHARDS

    pattern = f"{tmp_path}/x{{0..9999}}{{0..9999}}.tar"  # 10^8 names
    tracemalloc.start()
    r = iqa("embed", "--dataset", "webdataset", "--root", pattern, "--pretrained", "none", "--out",
            tmp_path / "c.h5", "--no-progress")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(r, f"--root {pattern} names more than {MAX_SHARDS:,} shards (the limit, MAX_SHARDS)")
    assert peak < 200 << 20  # about MAX_SHARDS names at most, never 10^8
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_labels_csv_over_the_limit_is_refused_unread(small_import, tmp_path):
    from iqa_cache.sources.datasets import MAX_CSV_BYTES

    feats, _ = small_import
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:  # sparse: no disk used, but 2 GiB of zeros for a reader
        f.write(b"id,label\n")
        f.truncate(MAX_CSV_BYTES + 1)
    out = tmp_path / "out.h5"
    one_line_error(do_import(feats, big, out), f"CSV file {big} is {MAX_CSV_BYTES + 1:,} bytes, over the limit of "
                   f"{MAX_CSV_BYTES:,} bytes")
    assert not out.exists()


def test_a_fifo_as_labels_is_named_as_such(small_import, tmp_path):
    feats, _ = small_import
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.h5"
    err = one_line_error(do_import(feats, fifo, out), f"CSV file {fifo} is a FIFO (named pipe), not a regular file")
    assert "does not exist" not in err and not out.exists()


# ------------------------------------------------------- 6. a grid is counted before it is expanded

def test_a_grid_of_ten_million_configurations_is_refused_before_expanding(feats, tmp_path):
    import tracemalloc

    from iqa_cache.train.grid.spec import MAX_GRID_CONFIGS

    grid = "seed=0..99999; lr=" + ",".join(f"{i + 1}e-4" for i in range(100))  # 10^7 configurations
    out = tmp_path / "abl"
    tracemalloc.start()
    r = iqa("ablate", "--cache", feats, "--grid", grid, "--out", out, *FAST)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(r, "the grid has 10,000,000 configurations (100,000 seed × 100 lr), over the limit of "
                   f"{MAX_GRID_CONFIGS:,} (MAX_GRID_CONFIGS)")
    assert peak < 300 << 20
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    many_ranges = "seed=" + ",".join(f"{i * 100_000}..{i * 100_000 + 99_999}" for i in range(1000))  # 10^8 seeds
    one_line_error(iqa("ablate", "--cache", feats, "--grid", many_ranges, "--out", out, *FAST),
                   f"grid key 'seed' has more than {MAX_GRID_CONFIGS:,} values")
    assert not out.exists()


# ------------------------------------------------------- 8. the head's size is bounded before allocating

def test_a_head_too_large_is_refused_before_allocating(feats, tmp_path):
    from iqa_cache.train.config import MAX_BLOCKS, MAX_HEAD_PARAMS, MAX_HIDDEN_DIM

    out = tmp_path / "run"
    r = iqa("train-head", "--cache", feats, "--out", out, *FAST, "--hidden", 1_000_000_000)
    assert r.exit_code == 2 and f"1<=x<={MAX_HIDDEN_DIM}" in r.output.replace(" ", "") or (
        f"less than or equal to {MAX_HIDDEN_DIM}" in r.output), r.output
    r = iqa("train-head", "--cache", feats, "--out", out, *FAST, "--blocks", 100_000)
    assert r.exit_code == 2 and str(MAX_BLOCKS) in r.output, r.output
    one_line_error(iqa("train-head", "--cache", feats, "--out", out, "--epochs", 1, "--no-progress", "--device",
                       "cpu", "--hidden", MAX_HIDDEN_DIM, "--blocks", MAX_BLOCKS),
                   f"a head with --hidden 16,384 and --blocks {MAX_BLOCKS} has 137,459,957,761 parameters (768-d "
                   f"input), over the limit of {MAX_HEAD_PARAMS:,} (MAX_HEAD_PARAMS)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def scored_run(koniq_root, tiny_model, tmp_path_factory):
    """A run of the tiny encoder (a checkpoint, so predict can rebuild it)
    and an image to score."""
    import open_clip
    import torch

    from iqa_cache.embed.encoder import resolve_model_name

    work = tmp_path_factory.mktemp("scored")
    torch.manual_seed(7)
    ckpt = work / "tiny.pt"
    torch.save(open_clip.create_model(resolve_model_name(tiny_model)[0], pretrained=None).state_dict(), ckpt)
    h5, run = work / "feats.h5", work / "run"
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained", ckpt,
            "--device", "cpu", "--workers", 0, "--out", h5, "--no-progress")
    assert r.exit_code == 0, r.output
    r = iqa("train-head", "--cache", h5, "--out", run, *FAST)
    assert r.exit_code == 0, r.output
    return run, next((koniq_root / "512x384").iterdir())


def tampered(run: Path, tmp_path: Path, edit) -> Path:
    import json
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "config.json").read_text())
    doc = edit(doc)
    (copy / "config.json").write_text(json.dumps(doc))
    return copy


def _head(**kw):
    def edit(doc):
        doc["train"]["head"].update(kw)
        return doc
    return edit


@pytest.mark.parametrize("edit,needle", [
    (_head(hidden_dim=1e9), "config.json holds a bad setting: head setting hidden_dim must be a whole number, "
                            "got 1000000000.0"),
    (_head(hidden_dim=1_000_000_000), "config.json holds a bad setting: --hidden must be from 1 to 16,384, got "
                                      "1,000,000,000"),
    (_head(n_blocks=100_000), "config.json holds a bad setting: --blocks must be from 0 to 256, got 100,000"),
    (_head(n_blocks="2"), "config.json holds a bad setting: head setting n_blocks must be a whole number, got '2'"),
    (_head(dropout=float("nan")), "config.json holds a bad setting: --dropout must be in [0, 1), got nan"),
    (lambda doc: [doc], "config.json is a JSON list, not an object of settings"),
    (lambda doc: {**doc, "train": {**doc["train"], "head": [1, 2]}}, "config.json holds a bad setting"),
    (lambda doc: {k: v for k, v in doc.items() if k != "bins"}, "config.json lacks 'bins'"),
    (_head(in_dim=999), "head.pt does not match config.json's head"),
])
def test_a_runs_config_json_that_is_wrong_is_one_line(scored_run, tmp_path, edit, needle):
    run, image = scored_run
    bad = tampered(run, tmp_path, edit)
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    one_line_error(iqa("predict", "--run", bad, image, "--device", "cpu", "--no-progress"), f"run {bad}: {needle}")
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before


# ------------------------------------------------------- 9. a full disk is one line with the space needed

HDF5_FULL = ("Unable to synchronously create dataset (file write failed: time = Sun Dec  6 22:05:36 2026\n, filename "
             "= 'x', file descriptor = 4, errno = 28, error message = 'No space left on device', buf = 0x1, total "
             "write size = 7784, bytes this sub-write = 7784, offset = 258048)")


@pytest.fixture()
def full_disk_on_create(monkeypatch):
    """h5py as it fails on a full disk (a ValueError, errno 28 in its text)
    when the cache's feature storage is allocated."""
    real = h5py.Group.create_dataset

    def create_dataset(self, name, *args, **kwargs):
        if name == "embeddings":
            raise ValueError(HDF5_FULL)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)


def test_a_full_disk_while_import_creates_the_cache_is_one_line(small_import, tmp_path, full_disk_on_create):
    feats, labels = small_import
    out = tmp_path / "out.h5"
    one_line_error(do_import(feats, labels, out), f"no space left on the device while creating the cache {out} "
                   "(it needs about 3.7 KiB)", "free some space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "x.npy"]


def test_a_full_disk_while_embed_creates_the_cache_is_one_line(koniq_root, tiny_model, tmp_path, full_disk_on_create):
    out = tmp_path / "c.h5"
    one_line_error(iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained",
                       "none", "--device", "cpu", "--workers", 0, "--out", out, "--no-progress"),
                   f"no space left on the device while creating the cache {out} (it needs about ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_full_disk_while_sorting_windows_is_one_line(tmp_path, monkeypatch):
    import builtins

    import iqa_cache.cache.importer as importer

    n, d = 300, 16
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    perm = np.random.default_rng(1).permutation(n)
    h5 = tmp_path / "f.h5"
    with h5py.File(h5, "w") as f:  # chunked and in another order than the CSV: sorted through windows
        f.create_dataset("features", data=x[perm], chunks=(32, d))
        f["ids"] = np.array([f"i{i}" for i in perm]).astype(object).astype(h5py.string_dtype())
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"i{i},{i % 5}\n" for i in range(n)))

    def full_open(path, mode="r", *args, **kwargs):  # the windows' files land on a full disk
        if str(path).endswith(".rows"):
            return builtins.open("/dev/full", "wb", buffering=0)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(importer, "open", full_open, raising=False)
    out = tmp_path / "out.h5"
    err = one_line_error(do_import(h5, tmp_path / "labels.csv", out),
                         "no space left on the device while sorting the rows of the features file into "
                         f"{tmp_path}/.out.h5.importing-", ".windows (it needs about 21.1 KiB)")
    assert "requested and" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "labels.csv"]


# ------------------------------------------------------- 10. labels beyond float32

def _rows(bad_row: int, bad: str) -> str:
    return "id,label\n" + "".join(f"{bad}\n" if i == bad_row else f"i{i},{i % 5}\n" for i in range(12))


@pytest.mark.parametrize("csv,needle", [
    (_rows(4, "i4,1e39"), "line 6 (image i4): label '1e39' in column 'label' is beyond float32 (at most 3.403e+38 "
                          "in magnitude)"),
    (_rows(2, "i2\x00,2"), "line 4: id 'i2\\x00' in column 'id' holds a NUL byte"),
    (_rows(1, "i1," + "9" * 10_000_000 + "x"), "line 3 (image i1): label '999"),
], ids=["beyond-float32", "NUL-in-id", "10-million-characters"])
def test_labels_csv_rows_refused_at_import_in_one_short_line(small_import, tmp_path, csv, needle):
    feats, _ = small_import
    labels = tmp_path / "rows.csv"
    labels.write_text(csv)
    out = tmp_path / "out.h5"
    err = one_line_error(do_import(feats, labels, out), f"CSV file {labels}, {needle}")
    if "999" in needle:  # the value is cut, saying how much more there was
        assert "... (9,999,801 more characters)" in err and "is not a number" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_label_beyond_float32_is_refused_at_embed_naming_the_row(tmp_path):
    root = three_images(tmp_path)
    csv = tmp_path / "l.csv"
    csv.write_text("image,label\na0.jpg,1\na1.jpg,-3.5e38\na2.jpg,2\n")
    out = tmp_path / "c.h5"
    one_line_error(iqa("embed", "--dataset", "csv", "--root", root, "--csv", csv, "--pretrained", "none",
                       "--out", out, "--no-progress"),
                   f"CSV file {csv}, line 3 (image a1.jpg): label '-3.5e38' in column 'label' is beyond float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "l.csv"]


# ------------------------------------------------------- 11/12. values that made tracebacks or huge lines

def test_feature_files_that_made_tracebacks_are_one_line(small_import, tmp_path):
    import pandas as pd

    _, labels = small_import
    ok = tmp_path / "ok.npy"
    np.save(ok, np.ones((12, 3), np.float32))
    neg = tmp_path / "neg.npy"
    neg.write_bytes(ok.read_bytes().replace(b"(12, 3)", b"(-12, 3)"))
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("features", shape=None, dtype="f4")  # an empty (null) dataspace
    null = tmp_path / "null.parquet"
    vectors = [[float(i), 1.0, 2.0] for i in range(12)]
    vectors[5] = None
    pd.DataFrame({"id": [f"i{i}" for i in range(12)], "embedding": vectors}).to_parquet(null)
    out = tmp_path / "out.h5"
    for feats, needle in ((neg, f"--features {neg} cannot be read as npy"),
                          (empty, f"{empty} ['features']: the dataset is empty (no dataspace)"),
                          (null, f"{null}: column 'embedding' is null on 1 row(s) (first: row 5)")):
        one_line_error(do_import(feats, labels, out), needle)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture()
def run_with_preds(feats, tmp_path):
    """A copy of a finished run whose predictions.csv the test rewrites."""
    import pandas as pd

    run = tmp_path / "run"
    r = iqa("train-head", "--cache", feats, "--out", run, *FAST)
    assert r.exit_code == 0, r.output

    def set_preds(fn):
        p = pd.read_csv(run / "predictions.csv")
        p["pred"] = fn(p["pred"].to_numpy())
        p.to_csv(run / "predictions.csv", index=False)
        return run
    return set_preds


@pytest.mark.slow
def test_report_plots_on_predictions_of_1e308(run_with_preds, tmp_path):
    def some_huge(pred):
        pred = pred.copy()
        pred[::3] = 1e308
        return pred

    run = run_with_preds(some_huge)
    plots = tmp_path / "plots"
    r = iqa("report", run, "--plots", plots)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "1e308" not in r.stdout and "0000000000" not in r.stdout
    assert sorted(p.name for p in plots.iterdir()) == ["label_histogram.png", "lds_density.png", "per_bin_mae.png",
                                                       "pred_vs_true.png"]


def test_report_on_all_inf_predictions_says_so(run_with_preds, tmp_path):
    run = run_with_preds(lambda pred: np.full_like(pred, np.inf))
    one_line_error(iqa("report", run), f"no run has a finite prediction for its test images: run {run} has ",
                   "every prediction is inf, NaN or beyond float32")


# ------------------------------------------------------- 12. SIGTERM is Ctrl-C everywhere: exit 130, one line

def _stalled(module: str, name: str, ready: Path) -> str:
    """`iqa` whose ``module.name`` says it started, then waits to be killed."""
    return (f"import pathlib, sys, time, {module} as m\n"
            f"def stalled(*a, **k):\n    pathlib.Path({str(ready)!r}).touch()\n    time.sleep(120)\n"
            f"m.{name} = stalled\n"
            "from iqa_cache.cli.main import main; sys.argv[0] = 'iqa'; main()")


def _term_when_ready(args: list[str], code: str | None, ready: Path | None, delay: float = 0.0,
                     sig: int = 15):
    import time

    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "iqa_cache.cli"]
    p = subprocess.Popen(cmd + [str(a) for a in args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    t0 = time.monotonic()
    while ready is not None and not ready.exists() and p.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    time.sleep(delay)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


@pytest.mark.slow
def test_sigterm_during_train_head_is_130_and_leaves_no_run(feats, tmp_path):
    ready, out = tmp_path / "ready", tmp_path / "run"
    code, _, err = _term_when_ready(["train-head", "--cache", feats, "--out", out, *FAST],
                                    _stalled("iqa_cache.train.fit", "train_head", ready), ready)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]


@pytest.mark.slow
def test_sigterm_during_ablate_is_130_and_a_rerun_completes(feats, tmp_path):
    ready, out = tmp_path / "ready", tmp_path / "abl"
    args = ["ablate", "--cache", feats, "--grid", "lds=on,off", "--out", out, *FAST]
    code, _, err = _term_when_ready(args, _stalled("iqa_cache.train.grid.run", "train_and_write", ready), ready)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abl", "ready"]  # the lock went with the process
    r = iqa(*args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "ablation.json", "lds=off", "lds=on", "summary.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [15, 2], ids=["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("delay", [0.2, 0.4])
def test_sigterm_or_ctrl_c_in_the_first_second_of_import_is_130_without_a_traceback(small_import, tmp_path, delay,
                                                                                    sig):
    """While the modules load and while Typer reads the commands (a
    KeyboardInterrupt there was a traceback, or SIGINT's -2)."""
    feats, labels = small_import
    out = tmp_path / "out.h5"
    code, _, err = _term_when_ready(["import", "--features", feats, "--labels", labels, "--out", out,
                                     "--no-progress"], None, None, delay, sig)
    assert code == 130, (code, err)
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "x.npy"]


def test_the_distributed_merge_checks_out_again_under_the_lock(tmp_path):
    """torchrun's rank 0 checks --out before the ranks embed and again,
    holding the lock, before it merges: a cache another process wrote
    meanwhile is not replaced (library level: the merge needs torchrun)."""
    from types import SimpleNamespace

    from iqa_cache.embed.distributed import merge_shards
    from iqa_cache.errors import CacheError

    out = tmp_path / "c.h5"
    out.write_bytes(b"another writer's cache")
    with pytest.raises(CacheError, match="was written by another process while the ranks embedded"):
        merge_shards(out, None, SimpleNamespace(overwrite=False), "cpu", 8, [], pipeline="pil", extra={})
    assert out.read_bytes() == b"another writer's cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


def test_a_label_beyond_float32_is_refused_in_a_webdataset_shard(tmp_path):
    import io
    import json
    import tarfile

    from PIL import Image

    shard = tmp_path / "s0.tar"
    with tarfile.open(shard, "w") as tar:
        for i, label in enumerate((1.5, 1e39)):
            img = io.BytesIO()
            Image.new("RGB", (40, 30), (90, 40 * i, 200)).save(img, format="JPEG")
            for name, data in ((f"k{i}.jpg", img.getvalue()), (f"k{i}.json", json.dumps({"label": label}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "c.h5"
    one_line_error(iqa("embed", "--dataset", "webdataset", "--root", shard, "--pretrained", "none", "--out", out,
                       "--no-progress"),
                   f"webdataset shard {shard}, sample k1, json key 'label': label 1e+39 is beyond float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0.tar"]

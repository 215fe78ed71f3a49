"""`iqa import`: features made elsewhere become a normal cache that
train-head, ablate and report use unchanged, trains exactly like an embedded
cache holding the same numbers, records where it came from, and is refused
by predict in one line; bad inputs are one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app

runner = CliRunner()
TRAIN = ("--lds", "--fds", "--epochs", 6, "--hidden", 32, "--blocks", 1, "--batch-size", 8, "--lr", "3e-3",
         "--seed", 3, "--device", "cpu", "--no-progress")


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, koniq_root, tiny_model):
    """An embedded cache (tiny encoder), its numbers exported to every
    format, and the labels CSV (id, label, split) in the cache's row order."""
    d = tmp_path_factory.mktemp("imp")
    h5 = d / "embedded.h5"
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained", "none",
            "--device", "cpu", "--workers", "0", "--out", h5, "--no-progress")
    assert r.exit_code == 0, r.output
    data = cache.load(h5)
    ids = np.asarray(data.image_id, dtype=str)
    x = data.features
    pd.DataFrame({"id": ids, "label": data.label.astype(np.float64), "split": data.split}).to_csv(
        d / "labels.csv", index=False)
    perm = np.random.default_rng(0).permutation(len(ids))  # formats with ids: stored in another order
    np.save(d / "f.npy", x)
    np.savez(d / "f.npz", embeddings=x[perm], ids=ids[perm])
    with h5py.File(d / "f.h5", "w") as f:
        f["features"] = x[perm]
        f["image_id"] = ids[perm].astype(object).astype(h5py.string_dtype())
    wide = pd.DataFrame(x[perm], columns=[f"f{i}" for i in range(x.shape[1])])
    wide.insert(0, "id", ids[perm])
    wide.to_parquet(d / "f.parquet")
    pd.DataFrame({"id": ids[perm], "embedding": list(x[perm])}).to_parquet(d / "list.parquet")
    return d, h5, data


def train(cache_path, out):
    r = iqa("train-head", "--cache", cache_path, *TRAIN, "--out", out)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("fmt", ["f.npy", "f.npz", "f.h5", "f.parquet", "list.parquet"])
def test_imported_cache_trains_exactly_like_the_embedded_one(embedded, tmp_path, fmt):
    d, h5, data = embedded
    out = tmp_path / "imported.h5"
    r = iqa("import", "--features", d / fmt, "--labels", d / "labels.csv", "--label-range", "0,100", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"{len(data)} items" in r.stdout and ("by id" in r.stdout) == (fmt != "f.npy")
    imp = cache.load(out)
    np.testing.assert_array_equal(imp.features, data.features)
    np.testing.assert_array_equal(imp.label, data.label)
    assert list(imp.split) == list(data.split) and list(imp.image_id) == list(data.image_id)
    # self-describing: where the features came from, and no made-up encoder or image fields
    a = imp.attrs
    assert a["feature_source"] == "imported" and a["imported_path"] == str((d / fmt).resolve())
    assert a["imported_sha256"] == cache._py(__import__("hashlib").sha256((d / fmt).read_bytes()).hexdigest())
    assert a["imported_shape"] == list(data.features.shape) and a["feature_dim"] == data.features.shape[1]
    assert a["imported_format"] == {"npy": "npy", "npz": "npz", "h5": "hdf5", "parquet": "parquet"}[fmt.split(".")[1]]
    for k in ("model", "pretrained", "image_size", "resize_mode", "mean", "std", "interpolation"):
        assert k not in a
    # the same seed gives the same metrics and predictions as the embedded cache
    train(h5, tmp_path / "emb_run")
    rep = train(out, tmp_path / "imp_run")
    m_e = json.loads((tmp_path / "emb_run" / "metrics.json").read_text())
    m_i = json.loads((tmp_path / "imp_run" / "metrics.json").read_text())
    assert m_i == m_e
    p_e = pd.read_csv(tmp_path / "emb_run" / "predictions.csv")
    p_i = pd.read_csv(tmp_path / "imp_run" / "predictions.csv")
    pd.testing.assert_frame_equal(p_e, p_i)
    assert "n (test items)" in rep.stdout and "test images" not in rep.stdout


@pytest.mark.slow
def test_report_ablate_and_predict_on_an_imported_cache(embedded, tmp_path):
    d, h5, data = embedded
    out = tmp_path / "c.h5"
    assert iqa("import", "--features", d / "f.npz", "--labels", d / "labels.csv", "--label-range", "0,100",
               "--out", out).exit_code == 0
    train(out, tmp_path / "run")
    r = iqa("report", tmp_path / "run", "--tables", "ranges,shots")
    assert r.exit_code == 0, r.output
    assert "n (test items)" in r.stdout and "image" not in r.stdout
    r = iqa("ablate", "--cache", out, "--grid", "lds=on,off", "--epochs", 2, "--hidden", 16, "--blocks", 1,
            "--device", "cpu", "--out", tmp_path / "abl", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "*n (test items)*" in r.stdout
    # predict needs the encoder, which an imported cache does not record: one line, exit 2
    img = next((Path(data.attrs["dataset_root"]) / "512x384").iterdir())
    r = iqa("predict", "--run", tmp_path / "run", img, "--device", "cpu", "--no-progress")
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "imported features" in err and "needs the encoder" in err
    # the embedded cache's tables still speak of images
    train(h5, tmp_path / "emb")
    assert "n (test images)" in iqa("report", tmp_path / "emb").stdout


def _bad(tmp_path, feats, csv_text, *extra):
    (tmp_path / "l.csv").write_text(csv_text)
    out = tmp_path / "bad.h5"
    r = iqa("import", "--features", feats, "--labels", tmp_path / "l.csv", "--out", out, *extra)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in r.output
    assert not out.exists()
    return err


def test_bad_inputs_are_one_line_errors(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    csv4 = "id,label,split\na,1,train\nb,2,train\nc,3,val\nd,4,test\n"
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "ids.npz", features=x, ids=np.array(["a", "b", "c", "e"]))
    err = _bad(tmp_path, tmp_path / "ids.npz", csv4)
    assert "have no feature row" in err and "'d'" in err
    np.savez(tmp_path / "extra.npz", features=np.vstack([x, x[:1]]), ids=np.array(["a", "b", "c", "d", "z"]))
    err = _bad(tmp_path, tmp_path / "extra.npz", csv4)
    assert "no label" in err and "'z'" in err
    np.savez(tmp_path / "dup.npz", features=x, ids=np.array(["a", "b", "b", "d"]))
    assert "appears on feature rows 1 and 2" in _bad(tmp_path, tmp_path / "dup.npz", csv4)
    assert "3 rows" in _bad(tmp_path, tmp_path / "x.npy", csv4.rsplit("d,", 1)[0])  # .npy: rows must agree
    nan = x.copy()
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert "NaN or Inf" in (e := _bad(tmp_path, tmp_path / "nan.npy", csv4)) and "row 2" in e
    np.save(tmp_path / "inf.npy", np.full((4, 3), 1e300))  # finite in float64, not in float32
    assert "NaN or Inf" in _bad(tmp_path, tmp_path / "inf.npy", csv4)
    np.save(tmp_path / "flat.npy", x.ravel())
    assert "2-D" in _bad(tmp_path, tmp_path / "flat.npy", csv4)
    np.savez(tmp_path / "short.npz", features=x, ids=np.array(["a", "b"]))
    assert "2 ids" in _bad(tmp_path, tmp_path / "short.npz", csv4)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    assert "--features-key" in _bad(tmp_path, tmp_path / "two.npz", csv4)
    assert "no array 'q'" in _bad(tmp_path, tmp_path / "two.npz", csv4, "--features-key", "q")
    (tmp_path / "x.txt").write_text("1 2 3")
    assert "unknown format" in _bad(tmp_path, tmp_path / "x.txt", csv4)
    assert "not a number" in _bad(tmp_path, tmp_path / "x.npy", csv4.replace("c,3", "c,three"))
    assert "outside the declared range" in _bad(tmp_path, tmp_path / "x.npy", csv4, "--label-range", "0,3")
    assert "no id column" in _bad(tmp_path, tmp_path / "x.npy", csv4.replace("id,", "key,"))
    assert "does not exist" in _bad(tmp_path, tmp_path / "missing.npy", csv4)


def test_an_existing_cache_is_replaced_only_with_overwrite_and_nothing_else_is(tmp_path):
    x = np.ones((3, 2), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "l.csv").write_text("id,label\na,1\nb,2\nc,3\n")
    out = tmp_path / "c.h5"
    args = ("import", "--features", tmp_path / "x.npy", "--labels", tmp_path / "l.csv", "--out", out)
    assert iqa(*args).exit_code == 0
    r = iqa(*args)
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert iqa(*args, "--overwrite").exit_code == 0
    other = tmp_path / "notes.h5"
    other.write_text("not a cache")
    r = iqa("import", "--features", tmp_path / "x.npy", "--labels", tmp_path / "l.csv", "--out", other,
            "--overwrite")
    assert r.exit_code == 2 and other.read_text() == "not a cache"
    assert cache.load(out).attrs["split_source"].startswith("seeded random split")


@pytest.mark.parametrize("layout,permuted", [("npy", False), ("h5-contiguous", False), ("h5-contiguous", True),
                                             ("h5-chunked", False), ("h5-chunked", True), ("npz", True)])
def test_import_reads_the_file_a_block_at_a_time_and_writes_the_same_cache(tmp_path, monkeypatch, layout,
                                                                             permuted):
    """Blocks of 7 rows: a .npy and a contiguous HDF5 dataset are memory-mapped,
    a chunked one is read through h5py; a file stored in another order than
    the CSV is permuted through windows of 9 cache rows in temporary files
    (an .npz is in memory: picked directly); labels out of range are dropped
    between blocks; every variant writes the same cache and leaves no
    temporary file."""
    import iqa_cache.cache.importer as importer

    monkeypatch.setattr(importer, "BLOCK_BYTES", 7 * 4 * 5)
    monkeypatch.setattr(importer, "WINDOW_BYTES", 9 * 4 * 5)  # 56 rows kept: 7 windows, the last one short
    rng = np.random.default_rng(1)
    n = 60
    x = rng.normal(size=(n, 5)) * 100  # float64 in the file: cast to float32 block by block
    ids = np.array([f"img{i:03d}" for i in range(n)])
    labels = rng.uniform(0, 100, n).round(2)
    labels[[3, 10, 11, 40]] = [120.0, -5.0, 101.0, 150.0]  # dropped with --out-of-range drop
    pd.DataFrame({"id": ids, "label": labels}).to_csv(tmp_path / "l.csv", index=False)
    perm = rng.permutation(n) if permuted else np.arange(n)
    f = tmp_path / ("x.npy" if layout == "npy" else "x.npz" if layout == "npz" else "x.h5")
    if layout == "npy":
        np.save(f, x)
    elif layout == "npz":
        np.savez(f, features=x[perm], ids=ids[perm])
    else:
        with h5py.File(f, "w") as h:
            h.create_dataset("features", data=x[perm], chunks=(4, 5) if layout == "h5-chunked" else None)
            h["ids"] = ids[perm].astype(object).astype(h5py.string_dtype())
    cfg = importer.ImportConfig(features=f, labels=tmp_path / "l.csv", out=tmp_path / "c.h5",
                                label_range=(0.0, 100.0), out_of_range="drop")
    keep = (labels >= 0) & (labels <= 100)
    with importer.open_features(f, cfg) as (src, _, _):
        kind, plan = type(src.array), src.plan(np.argsort(perm)[keep])
    assert kind is {"npy": np.memmap, "h5-contiguous": np.memmap, "npz": np.ndarray, "h5-chunked": h5py.Dataset}[layout]
    assert plan == ("in order" if not permuted else "in memory" if layout == "npz" else "by windows")
    importer.import_features(cfg)
    got = cache.load(tmp_path / "c.h5")
    assert list(got.image_id) == list(ids[keep])
    np.testing.assert_array_equal(got.features, x[keep].astype(np.float32))
    np.testing.assert_array_equal(got.label, labels[keep].astype(np.float32))
    assert got.attrs["imported_shape"] == [n, 5] and got.attrs["imported_dtype"] == "float64"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.h5", "l.csv", f.name])


def test_a_bad_row_anywhere_is_named_before_anything_is_written(tmp_path, monkeypatch):
    """Rows are checked a block at a time: the count covers every block, the
    first bad row is the first in the file, and no cache is left behind."""
    import iqa_cache.cache.importer as importer

    monkeypatch.setattr(importer, "BLOCK_BYTES", 4 * 4 * 3)  # 4 rows a block
    x = np.ones((12, 3), np.float32)
    x[5, 0], x[6, 2], x[11, 1] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "x.npy", x)
    err = _bad(tmp_path, tmp_path / "x.npy", "id,label,split\n" + "".join(f"i{i},{i},train\n" for i in range(12)))
    assert "3 feature row(s) contain NaN or Inf" in err and "first: row 5" in err
    assert not list(tmp_path.glob(".bad.h5.*"))


def test_sigterm_mid_import_keeps_the_old_cache_and_leaves_no_temporary_files(tmp_path):
    """SIGTERM (a job scheduler's stop) in the middle of sorting a permuted
    file through windows ends like Ctrl-C: exit code 130, the cache from
    before byte for byte, no `.importing-*` file or `.windows` folder."""
    import subprocess
    import sys

    n = 40
    rng = np.random.default_rng(2)
    ids = np.array([f"{i}.jpg" for i in range(n)])
    pd.DataFrame({"id": ids, "label": rng.choice([2.6, 3.85], n)}).to_csv(tmp_path / "l.csv", index=False)
    perm = rng.permutation(n)
    with h5py.File(tmp_path / "x.h5", "w") as h:
        h["features"] = rng.normal(size=(n, 4)).astype(np.float32)
        h["ids"] = ids[perm].astype(object).astype(h5py.string_dtype())
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["import", "--features", str(tmp_path / "x.h5"), "--labels", str(tmp_path / "l.csv"),
            "--out", str(out / "c.h5"), "--label-range", "1,5", "--no-progress"]
    assert iqa(*args).exit_code == 0
    before = (out / "c.h5").read_bytes()
    script = f"""
import os, signal, sys
import iqa_cache.cache.importer as imp
imp.BLOCK_BYTES = 5 * 4 * 4  # 5 rows a block
imp.WINDOW_BYTES = 8 * 4 * 4
calls, block = [0], imp.FeatureSource.block
def stopping(self, a, b):
    calls[0] += 1
    if calls[0] == 8 + 3:  # 8 blocks checked, then the third block of the windows' first pass
        assert any(p.name.endswith('.windows') for p in imp.Path({str(out)!r}).iterdir())
        os.kill(os.getpid(), signal.SIGTERM)
    return block(self, a, b)
imp.FeatureSource.block = stopping
sys.argv = ['iqa'] + {args + ['--overwrite']!r}
from iqa_cache.cli.main import main
main()
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130, p.stderr
    assert (out / "c.h5").read_bytes() == before
    assert sorted(q.name for q in out.iterdir()) == ["c.h5", "notes.txt"]

"""A rerun of `iqa embed` on an existing cache notices what changed: replaced
images, another root, new labels/splits/range, added and removed rows,
failed images retried on request; --overwrite and disk-full never leave the
user without a complete cache."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.sources.synth import SynthSpec, make_dataset

from .imagegen import jpeg_bytes, photo

runner = CliRunner()
N = 24


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upd") / "data"
    make_dataset(root, SynthSpec(n=N, size=(64, 48), seed=5, layout="csv"))
    return root


@pytest.fixture()
def data(dataset, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(dataset, dst, copy_function=shutil.copy2)
    return dst


def embed(root, out, tiny_model, *extra, csv=None):
    return iqa("embed", "--dataset", "csv", "--root", root, "--csv", csv or Path(root) / "labels.csv",
               "--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--workers", 0,
               "--batch-size", 8, "--out", out, "--no-progress", *extra)


def processed(r) -> int:
    import re

    m = re.search(r"\((\d+) processed", r.stdout)
    return int(m.group(1)) if m else 0


def feats(path) -> dict[str, np.ndarray]:
    d = cache.load(path)
    return dict(zip(d.image_id, d.features))


@pytest.fixture()
def made(data, tmp_path, tiny_model):
    out = tmp_path / "c.h5"
    r = embed(data, out, tiny_model)
    assert r.exit_code == 0, r.output
    return out


def fresh(root, tmp_path, tiny_model, csv=None) -> dict[str, np.ndarray]:
    out = tmp_path / f"fresh{len(list(tmp_path.glob('fresh*.h5')))}.h5"
    r = embed(root, out, tiny_model, csv=csv)
    assert r.exit_code in (0, 3), r.output
    return feats(out)


def test_replaced_image_is_re_embedded_alone(data, made, tmp_path, tiny_model):
    df = pd.read_csv(data / "labels.csv")
    before = feats(made)
    victim = data / df.image[5]
    victim.write_bytes(jpeg_bytes(photo(64, 48, seed=99)))
    r = embed(data, made, tiny_model)
    assert r.exit_code == 0, r.output
    assert "1 image changed, re-embedding them" in r.stdout and processed(r) == 1
    after, want = feats(made), fresh(data, tmp_path, tiny_model)
    for k in before:
        if k == df.image[5]:
            assert np.abs(after[k] - before[k]).max() > 1e-3
            np.testing.assert_allclose(after[k], want[k], rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(after[k], before[k])
    again = embed(data, made, tiny_model)
    assert "nothing to do" in again.stdout
    # touched, not changed: verified by its hash, nothing re-embedded
    victim.touch()
    r = embed(data, made, tiny_model)
    assert r.exit_code == 0 and processed(r) == 0 and "changed" not in r.stdout, r.output


def test_other_root_with_same_names(data, made, tmp_path, tiny_model):
    other = tmp_path / "other"
    shutil.copytree(data, other)  # new mtimes, same bytes
    df = pd.read_csv(data / "labels.csv")
    r = embed(other, made, tiny_model, csv=data / "labels.csv")
    assert r.exit_code == 0, r.output
    assert "dataset root changed" in r.stdout and processed(r) == 0
    assert cache.read_attrs(made)["dataset_root"] == str(other.resolve())
    (other / df.image[0]).write_bytes(jpeg_bytes(photo(64, 48, seed=7)))
    (other / df.image[9]).write_bytes(jpeg_bytes(photo(64, 48, seed=8)))
    r = embed(other, made, tiny_model, csv=data / "labels.csv")
    assert "2 images changed, re-embedding them" in r.stdout and processed(r) == 2, r.output
    want = fresh(other, tmp_path, tiny_model, csv=data / "labels.csv")
    got = feats(made)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5)


def test_new_labels_splits_and_range_update_in_place(data, made, tmp_path, tiny_model):
    df = pd.read_csv(data / "labels.csv")
    before = feats(made)
    a0 = cache.read_attrs(made)
    df.loc[:3, "label"] = df.loc[:3, "label"] + 0.5
    df.loc[4:5, "split"] = ["test", "train"] if list(df.split[4:6]) != ["test", "train"] else ["val", "val"]
    csv = tmp_path / "new.csv"
    df.to_csv(csv, index=False)
    # a range other than the one the cache chose (the common 0-100 scale of these labels)
    r = embed(data, made, tiny_model, "--label-range", "0,200", csv=csv)
    assert r.exit_code == 0, r.output
    assert "labels or splits of 6 images updated (no re-embedding)" in r.stdout and processed(r) == 0
    assert "label range updated" in r.stdout
    d = cache.load(made)
    np.testing.assert_array_equal(d.label, df.label.to_numpy(np.float32))
    assert list(d.split) == list(df.split)
    assert d.label_range == (0.0, 200.0)
    for k, v in before.items():
        np.testing.assert_array_equal(feats(made)[k], v)
    a1 = cache.read_attrs(made)
    assert a1["labels_version"] == a0["labels_version"] + 1 and a1["content_id"] != a0["content_id"]
    assert a1["manifest_sha256"] != a0["manifest_sha256"]
    # features-changing provenance still refuses
    r = embed(data, made, tiny_model, "--resize-mode", "shortest", csv=csv)
    assert r.exit_code == 2 and "made differently: resize_mode" in r.output


def test_added_and_removed_rows(data, made, tmp_path, tiny_model):
    df = pd.read_csv(data / "labels.csv")
    before = feats(made)
    (data / "images" / "new.jpg").write_bytes(jpeg_bytes(photo(64, 48, seed=3)))
    df2 = pd.concat([df.drop(index=[2, 7]), pd.DataFrame({"image": ["images/new.jpg"], "label": [50.0],
                                                          "split": ["train"]})], ignore_index=True)
    csv = tmp_path / "rows.csv"
    df2.to_csv(csv, index=False)
    r = embed(data, made, tiny_model, csv=csv)
    assert r.exit_code == 0, r.output
    assert "1 image added, embedding them" in r.stdout and "2 images removed from the cache" in r.stdout
    assert processed(r) == 1
    d = cache.load(made)
    assert list(d.image_id) == list(df2.image)
    got = feats(made)
    for k in df2.image[:-1]:
        np.testing.assert_array_equal(got[k], before[k])
    np.testing.assert_allclose(got["images/new.jpg"], fresh(data, tmp_path, tiny_model, csv=csv)["images/new.jpg"],
                               rtol=0, atol=1e-5)
    assert not list(tmp_path.glob(".c.h5.*"))


def test_retry_failed_and_fixed_files(data, tmp_path, tiny_model):
    df = pd.read_csv(data / "labels.csv")
    big = data / df.image[1]
    big.write_bytes(jpeg_bytes(photo(200, 150, seed=1)))  # over --max-pixels below
    broken = data / df.image[2]
    good = broken.read_bytes()
    broken.write_bytes(good[:200])
    out = tmp_path / "f.h5"
    r = embed(data, out, tiny_model, "--max-pixels", 10000)
    assert r.exit_code == 3 and cache.read_attrs(out)["n_failed"] == 2, r.output
    r = embed(data, out, tiny_model)  # failed and unchanged: kept as failed
    assert r.exit_code == 3 and "nothing to do" in r.stdout, r.output
    broken.write_bytes(good)  # the user fixed the file: it changed, so it is re-embedded
    r = embed(data, out, tiny_model)
    assert "1 image changed, re-embedding them" in r.stdout and processed(r) == 1, r.output
    assert r.exit_code == 3  # the big one is still failed
    r = embed(data, out, tiny_model, "--retry-failed")
    assert r.exit_code == 0 and "retrying 1 failed image" in r.stdout and processed(r) == 1, r.output
    want = fresh(data, tmp_path, tiny_model)
    got = feats(out)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5)


def test_report_warns_when_runs_saw_different_cache_contents(data, made, tmp_path, tiny_model):
    def train(name):
        out = tmp_path / name
        r = iqa("train-head", "--cache", made, "--epochs", 2, "--hidden", 8, "--out", out, "--device", "cpu",
                "--no-progress")
        assert r.exit_code == 0, r.output
        return out

    a = train("a")
    b = train("b")
    r = iqa("report", a, b)
    assert r.exit_code == 0 and "different contents" not in r.output, r.output
    (data / pd.read_csv(data / "labels.csv").image[3]).write_bytes(jpeg_bytes(photo(64, 48, seed=42)))
    assert embed(data, made, tiny_model).exit_code == 0
    c = train("c")
    r = iqa("report", a, c)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "different contents" in ln]
    assert len(lines) == 1 and "'a'" in lines[0] and "'c'" in lines[0], r.output


def test_overwrite_with_bad_pretrained_keeps_the_old_cache(data, made, tmp_path, tiny_model):
    before = made.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = iqa("embed", "--dataset", "csv", "--root", data, "--csv", data / "labels.csv", "--model", tiny_model,
            "--pretrained", bad, "--device", "cpu", "--workers", 0, "--out", made, "--overwrite", "--no-progress")
    assert r.exit_code != 0
    assert made.read_bytes() == before
    assert len(cache.load(made)) == N
    assert not list(tmp_path.glob(".c.h5.*"))


def test_interrupted_overwrite_keeps_the_old_cache(data, made, tmp_path, tiny_model, monkeypatch):
    import iqa_cache.embed.loop as embed_mod

    before = made.read_bytes()
    real = embed_mod._run_pil

    def killed(manifest, cfg, pre, encoder, writer, committer, *a, **k):
        it = writer.iter_pending_batches
        writer.iter_pending_batches = lambda: (b for i, b in enumerate(it()) if i < 1 or (_ for _ in ()).throw(
            KeyboardInterrupt))
        return real(manifest, cfg, pre, encoder, writer, committer, *a, **k)

    monkeypatch.setattr(embed_mod, "_run_pil", killed)
    r = embed(data, made, tiny_model, "--resize-mode", "shortest", "--overwrite")
    assert r.exit_code == 130, r.output
    assert made.read_bytes() == before
    assert cache.read_attrs(made)["resize_mode"] == "squash" and len(cache.load(made)) == N
    monkeypatch.setattr(embed_mod, "_run_pil", real)
    r = embed(data, made, tiny_model, "--resize-mode", "shortest", "--overwrite")
    assert r.exit_code == 0, r.output
    assert processed(r) == N - 8  # the replacement's committed batch was kept
    assert cache.read_attrs(made)["resize_mode"] == "shortest" and len(cache.load(made)) == N
    assert not list(tmp_path.glob(".c.h5.*"))


def test_disk_full_while_creating_and_finalising(data, tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "full.h5"
    real = h5py.Group.create_dataset

    def full(self, name, *a, **k):
        if name == "embeddings":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    r = embed(data, out, tiny_model)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "no space left" in r.output and str(out) in r.output
    assert not out.exists() and not list(tmp_path.glob(".full.h5.*"))
    monkeypatch.setattr(h5py.Group, "create_dataset", real)

    def full_state(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.writer, "content_id", full_state)
    r = embed(data, out, tiny_model)
    assert r.exit_code == 2 and "no space left on the device while finalising" in r.output, r.output
    assert cache.read_attrs(out)["complete"] is False
    monkeypatch.undo()
    r = embed(data, out, tiny_model)
    assert r.exit_code == 0 and processed(r) == 0 and cache.read_attrs(out)["complete"] is True, r.output


def test_finalising_needs_no_second_copy(data, tmp_path, tiny_model, monkeypatch):
    def no_copy(*a, **k):
        raise AssertionError("finalising copied the cache")

    for name in ("copyfile", "copy", "copy2"):
        monkeypatch.setattr(shutil, name, no_copy)
    r = embed(data, tmp_path / "x.h5", tiny_model)
    assert r.exit_code == 0, r.output
    assert cache.read_attrs(tmp_path / "x.h5")["complete"] is True


def test_schema_1_cache_is_read_and_upgraded(data, made, tmp_path, tiny_model):
    before = feats(made)
    attrs = cache.read_attrs(made)
    with h5py.File(made, "r+") as f:  # make it look like a cache written before schema 2
        for k in cache.STATE_KEYS:
            if k in attrs:
                f.attrs[k] = cache._attr_value(attrs[k])
        for k in ("state", "file_size", "file_mtime_ns", "file_hash"):
            del f[k]
        f.attrs["schema_version"] = 1
    assert len(cache.load(made)) == N  # still read for training
    r = embed(data, made, tiny_model)
    assert r.exit_code == 0, r.output
    assert "upgraded from schema 1" in r.stdout and processed(r) == 0
    assert cache.read_attrs(made)["schema_version"] == cache.SCHEMA_VERSION
    for k, v in feats(made).items():
        np.testing.assert_array_equal(v, before[k])
    (data / pd.read_csv(data / "labels.csv").image[0]).write_bytes(jpeg_bytes(photo(64, 48, seed=11)))
    r = embed(data, made, tiny_model)
    assert "1 image changed" in r.stdout and processed(r) == 1, r.output


def test_a_foreign_file_in_the_replacements_place_is_never_removed(data, made, tmp_path, tiny_model):
    notes = tmp_path / ".c.h5.next"
    notes.write_text("my notes")
    r = embed(data, made, tiny_model, "--overwrite")
    assert r.exit_code == 2 and "not written by `iqa embed`" in r.output, r.output
    assert notes.read_text() == "my notes" and len(cache.load(made)) == N

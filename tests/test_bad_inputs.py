"""Bad inputs across commands: each case is built in tmp_path, the real
command runs through CliRunner, and the test checks the exit code, that the
one-line message names the culprit, and that nothing valid was lost."""
from __future__ import annotations

import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app

from .conftest import learnable_problem, write_feature_cache

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, *needles, code=2):
    """Exit code, exactly one 'error:' line on stderr (the last) naming every
    needle, no traceback."""
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    err = errors[0]
    assert "Traceback" not in r.output
    for n in needles:
        assert str(n) in err, (n, err)
    return err


# ---------------------------------------------------------- dataset descriptions

@pytest.fixture()
def csv_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root


def embed_csv(root, csv, out, *extra):
    return iqa("embed", "--dataset", "csv", "--root", root, "--csv", csv, "--pretrained", "none",
               "--out", out, "--no-progress", *extra)


CSV_CASES = {
    "missing_column": ("picture,label\na.jpg,1\n", ["no image column", "picture"]),
    "empty": ("", ["is empty"]),
    "header_only": ("image,label\n", ["no rows"]),
    "not_a_number": ("image,label\na.jpg,1\nb.jpg,good\n", ["line 3", "b.jpg", "'good'", "column 'label'"]),
    "nan": ("image,label\na.jpg,NaN\n", ["line 2", "a.jpg", "not a finite number"]),
    "infinite": ("image,label\na.jpg,1\nb.jpg,-inf\n", ["line 3", "not a finite number"]),
    "duplicate": ("image,label\na.jpg,1\nb.jpg,2\na.jpg,3\n", ["line 4", "'a.jpg' already listed on line 2"]),
    "dotdot": ("image,label\nsub/../../x.jpg,1\n", ["line 2", "sub/../../x.jpg", "outside the dataset root"]),
    "absolute": ("image,label\n/etc/hosts,1\n", ["line 2", "/etc/hosts", "absolute"]),
    "bad_split": ("image,label,split\na.jpg,1,train\nb.jpg,2,holdout\n", ["line 3", "'holdout'", "train/val/test"]),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv(case, csv_root, tmp_path):
    content, needles = CSV_CASES[case]
    csv = tmp_path / f"{case}.csv"
    csv.write_text(content)
    out = tmp_path / "c.h5"
    one_line_error(embed_csv(csv_root, csv, out), csv, *needles)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_non_utf8_csv(csv_root, tmp_path):
    csv = tmp_path / "latin.csv"
    csv.write_bytes("image,label\nna\xefve.jpg,1\n".encode("latin-1"))
    one_line_error(embed_csv(csv_root, csv, tmp_path / "c.h5"), csv, "not UTF-8")


def test_symlink_leaving_root(csv_root, tmp_path):
    (tmp_path / "outside.jpg").write_bytes(b"\xff\xd8")
    os.symlink(tmp_path / "outside.jpg", csv_root / "inside.jpg")
    csv = tmp_path / "l.csv"
    csv.write_text("image,label\ninside.jpg,3\n")
    one_line_error(embed_csv(csv_root, csv, tmp_path / "c.h5"), "inside.jpg", "outside the dataset root")


def test_label_outside_declared_range_and_flags(csv_root, tmp_path, tiny_model):
    from PIL import Image

    for n in ("a", "b", "c"):
        Image.new("RGB", (16, 16), (10, 20, 30)).save(csv_root / f"{n}.jpg")
    csv = tmp_path / "r.csv"
    csv.write_text("image,label\na.jpg,2\nb.jpg,7\nc.jpg,-1\n")
    r = embed_csv(csv_root, csv, tmp_path / "x.h5", "--label-range", "0,4", "--model", tiny_model)
    one_line_error(r, "2 label(s)", "[0, 4]", "line 3", "b.jpg", "--out-of-range")
    assert not (tmp_path / "x.h5").exists()
    r = embed_csv(csv_root, csv, tmp_path / "clip.h5", "--label-range", "0,4", "--model", tiny_model,
                  "--out-of-range", "clip")
    assert r.exit_code == 0, r.output
    assert "clipped" in r.stderr
    with h5py.File(tmp_path / "clip.h5") as f:
        assert list(f["label"][...]) == [2, 4, 0]
    r = embed_csv(csv_root, csv, tmp_path / "drop.h5", "--label-range", "0,4", "--model", tiny_model,
                  "--out-of-range", "drop")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "drop.h5") as f:
        assert [x.decode() for x in f["image_id"][...]] == ["a.jpg"]


def test_missing_root_csv_and_all_images(tmp_path):
    one_line_error(iqa("embed", "--dataset", "koniq", "--root", tmp_path / "nowhere", "--pretrained", "none"),
                   "nowhere", "does not exist")
    one_line_error(iqa("embed", "--dataset", "csv", "--root", tmp_path, "--csv", tmp_path / "none.csv",
                       "--pretrained", "none"), "none.csv", "does not exist")
    (tmp_path / "l.csv").write_text("image,label\na.jpg,1\nb.jpg,2\n")
    one_line_error(iqa("embed", "--dataset", "csv", "--root", tmp_path, "--csv", tmp_path / "l.csv",
                       "--pretrained", "none", "--out", tmp_path / "c.h5"), "none of the 2 images", "a.jpg")
    assert not (tmp_path / "c.h5").exists()


def test_bad_csv_does_not_touch_an_existing_cache(csv_root, tmp_path, koniq_root, tiny_model):
    out = tmp_path / "good.h5"
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained", "none",
            "--limit", 8, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    before = out.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\na.jpg,oops\n")
    one_line_error(embed_csv(csv_root, bad, out), "oops")
    assert out.read_bytes() == before


# ------------------------------------------------------------------- caches

@pytest.fixture()
def good_cache(tmp_path):
    x, y, split = learnable_problem(n=200, d=8)
    return write_feature_cache(tmp_path / "good.h5", x, y, split)


def train(cache, out, *extra):
    return iqa("train-head", "--cache", cache, "--epochs", 2, "--hidden", 16, "--out", out, "--no-progress", *extra)


def test_truncated_and_garbage_caches(good_cache, tmp_path):
    data = good_cache.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    one_line_error(train(tmp_path / "trunc.h5", tmp_path / "r1"), "trunc.h5", "damaged")
    (tmp_path / "zero.h5").write_bytes(b"")
    one_line_error(train(tmp_path / "zero.h5", tmp_path / "r2"), "zero.h5")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_corrupted_bytes_inside_cache(good_cache, tmp_path):
    bad = tmp_path / "flipped.h5"
    data = bytearray(good_cache.read_bytes())
    data[:8] = b"GARBAGE!"  # the HDF5 signature
    bad.write_bytes(bytes(data))
    one_line_error(train(bad, tmp_path / "r"), "flipped.h5")


def test_other_schema_version(good_cache, tmp_path):
    with h5py.File(good_cache, "r+") as f:
        f.attrs["schema_version"] = 7
    one_line_error(train(good_cache, tmp_path / "r"), "schema version 7", "iqa embed")


def test_partial_cache_names_the_command_that_completes_it(good_cache, tmp_path):
    with h5py.File(good_cache, "r+") as f:
        f["status"][50:] = 0
        cache._write_state(f, f.filename, {"complete": False}, sync=False)
    err = one_line_error(train(good_cache, tmp_path / "r"), "incomplete", "150 of 200")
    assert f"iqa embed ... --out {good_cache}" in err


def test_nan_embeddings(good_cache, tmp_path):
    with h5py.File(good_cache, "r+") as f:
        f["embeddings"][3, 0] = np.nan
    one_line_error(train(good_cache, tmp_path / "r"), "NaN or Inf", "img00003.jpg")


def test_cache_not_matching_expectations(good_cache, tmp_path):
    one_line_error(train(good_cache, tmp_path / "r", "--expect", "resize_mode=shortest"),
                   "resize_mode: cache has 'squash', asked for 'shortest'")
    one_line_error(train(good_cache, tmp_path / "r", "--expect", "pretrained=none", "--expect", "image_size=336"),
                   "pretrained: cache has 'laion2b_s34b_b79k', asked for 'none'", "image_size")
    r = train(good_cache, tmp_path / "r", "--expect", "colour=blue")
    assert r.exit_code == 2 and "--expect" in r.output and "resize_mode" in r.output
    assert train(good_cache, tmp_path / "ok", "--expect", "resize_mode=squash", "--expect",
                 "model=ViT-B-32").exit_code == 0


def test_embed_over_a_cache_made_differently(koniq_root, tiny_model, tmp_path):
    out = tmp_path / "c.h5"
    base = ["embed", "--dataset", "koniq", "--root", koniq_root, "--model", tiny_model, "--pretrained", "none",
            "--limit", 8, "--out", out, "--no-progress"]
    assert iqa(*base).exit_code == 0
    before = out.read_bytes()
    one_line_error(iqa(*base, "--resize-mode", "shortest"), "made differently", "resize_mode", "--overwrite")
    assert out.read_bytes() == before


# ---------------------------------------------------------------------- runs

def test_no_training_split_and_no_validation_split(tmp_path):
    x, y, split = learnable_problem(n=120, d=8)
    no_train = write_feature_cache(tmp_path / "nt.h5", x, y, np.where(split == "train", "test", split))
    one_line_error(train(no_train, tmp_path / "r"), "no training images")
    no_val = write_feature_cache(tmp_path / "nv.h5", x, y, np.where(split == "val", "train", split))
    r = train(no_val, tmp_path / "r2")
    assert r.exit_code == 0 and "no validation images" in r.stderr and "last epoch" in r.stderr


def test_existing_run_is_not_overwritten(good_cache, tmp_path):
    out = tmp_path / "run"
    assert train(good_cache, out).exit_code == 0
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    one_line_error(train(good_cache, out, "--seed", 5), str(out), "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    assert train(good_cache, out, "--seed", 5, "--overwrite").exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} != snapshot


@pytest.mark.slow
def test_diverging_training_writes_no_run(good_cache, tmp_path):
    r = iqa("train-head", "--cache", good_cache, "--epochs", 5, "--lr", "1e12", "--loss", "mse", "--lds",
            "--out", tmp_path / "div", "--no-progress")
    one_line_error(r, "diverged at epoch", "lr 1e+12", "lds=on", code=4)
    assert not (tmp_path / "div").exists() and not list(tmp_path.glob(".div*"))


@pytest.mark.parametrize("args,needle", [
    (["--lds", "--lds-ks", "4"], "--lds-ks"),
    (["--fds", "--fds-ks", "0"], "--fds-ks"),
    (["--lds", "--lds-sigma", "-1"], "--lds-sigma"),
    (["--fds", "--fds-sigma", "0"], "--fds-sigma"),
    (["--bin-size", "0"], "--bin-size"),
    (["--bin-size", "-2"], "--bin-size"),
    (["--fds", "--fds-momentum", "1.5"], "--fds-momentum"),
    (["--epochs", "0"], "--epochs"),
])
def test_nonsense_options_rejected_at_the_cli(good_cache, tmp_path, args, needle):
    r = train(good_cache, tmp_path / "r", *args)
    assert r.exit_code == 2 and needle in r.output
    assert not (tmp_path / "r").exists()


def test_bin_size_larger_than_label_range(good_cache, tmp_path):
    one_line_error(train(good_cache, tmp_path / "r", "--bin-size", "500"), "--bin-size 500", "larger than")


def test_fds_start_smooth_not_after_start_update(good_cache, tmp_path):
    one_line_error(train(good_cache, tmp_path / "r", "--fds", "--fds-start-update", "3", "--fds-start-smooth", "2"),
                   "--fds-start-smooth")


# ------------------------------------------------------------ untrusted files

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_head_pickle_is_refused(good_cache, tmp_path):
    from iqa_cache.errors import RunError
    from iqa_cache.train.runs import load_head

    out = tmp_path / "run"
    assert train(good_cache, out).exit_code == 0
    marker = tmp_path / "pwned"
    with open(out / "head.pt", "wb") as f:
        pickle.dump({"fc.weight": _Evil(marker)}, f)
    with pytest.raises(RunError, match="head.pt cannot be loaded safely"):
        load_head(out)
    assert not marker.exists()


@pytest.mark.slow
def test_crafted_checkpoint_is_refused(koniq_root, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    with open(ckpt, "wb") as f:
        pickle.dump({"visual.proj": _Evil(marker)}, f)
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--pretrained", ckpt, "--limit", 2,
            "--out", tmp_path / "c.h5", "--no-progress")
    one_line_error(r, str(ckpt), "refused", "run code")
    assert not marker.exists()


def test_hdf5_string_attributes_are_only_data(good_cache, tmp_path):
    # a cache whose attributes name paths must never make a command write there
    target = tmp_path / "victim"
    with h5py.File(good_cache, "r+") as f:
        f.attrs["dataset_root"] = str(target)
        f.attrs["dataset_source"] = str(target / "x.csv")
        f.attrs["pretrained_file"] = "../../victim.pt"
    assert train(good_cache, tmp_path / "run").exit_code == 0
    assert iqa("report", tmp_path / "run").exit_code == 0
    assert not target.exists()
    shutil.rmtree(tmp_path / "run")

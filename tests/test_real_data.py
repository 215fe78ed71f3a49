"""Real data, real folders (issue 9 §4, §5): one file listed twice under
another spelling, numbers Python's float takes but a CSV should not hold,
seeds, nonsense model configs, names too long for the file system, a full
disk while saving plots, and files that are not caches.  Each case is built
in tmp_path and run through the real command."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iqa_cache.cli.main import app

from .conftest import TINY_MODEL, learnable_problem, write_feature_cache
from .test_bad_inputs import one_line_error

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def img_root(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    for n in ("a", "b", "c", "d"):
        Image.new("RGB", (16, 16), (10 * ord(n) % 255, 20, 30)).save(root / "img" / f"{n}.jpg")
    return root


def embed_csv(root, csv, out, tiny_model, *extra):
    return iqa("embed", "--dataset", "csv", "--root", root, "--csv", csv, "--pretrained", "none",
               "--model", tiny_model, "--out", out, "--no-progress", *extra)


# ------------------------------------------------------------- §4 leakage

@pytest.mark.parametrize("spelling", ["./img/a.jpg", "img//a.jpg", "img/./a.jpg", "img/../img/a.jpg", "symlink",
                                      "hardlink"])
def test_one_file_written_differently_is_a_duplicate(spelling, img_root, tmp_path, tiny_model):
    if spelling == "symlink":
        os.symlink("a.jpg", img_root / "img" / "same.jpg")
        spelling = "img/same.jpg"
    elif spelling == "hardlink":
        os.link(img_root / "img" / "a.jpg", img_root / "img" / "same.jpg")
        spelling = "img/same.jpg"
    csv = tmp_path / "l.csv"
    csv.write_text(f"image,label,split\nimg/a.jpg,1,train\nimg/b.jpg,2,train\n{spelling},3,test\n")
    out = tmp_path / "c.h5"
    one_line_error(embed_csv(img_root, csv, out, tiny_model), csv, "line 4", spelling, "line 2", "'img/a.jpg'",
                   "same file")
    assert not out.exists()


@pytest.mark.parametrize("label", ["1_5", "\uff11\uff15", "\uff11.5", "1.5\u0660", "0x1p3", "1,5"])
def test_labels_python_reads_but_a_csv_should_not_hold(label, img_root, tmp_path, tiny_model):
    csv = tmp_path / "l.csv"
    csv.write_text(f"image,score\nimg/a.jpg,1\nimg/b.jpg,\"{label}\"\n", encoding="utf-8")
    out = tmp_path / "c.h5"
    one_line_error(embed_csv(img_root, csv, out, tiny_model), csv, "line 3", "img/b.jpg", f"'{label}'",
                   "column 'score'", "not a number")
    assert not out.exists()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    x, y, split = learnable_problem(n=120, d=8)
    cache = write_feature_cache(tmp / "c.h5", x, y, split)
    r = iqa("train-head", "--cache", cache, "--epochs", 2, "--hidden", 8, "--out", tmp / "run", "--no-progress",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    return tmp / "run"


@pytest.mark.parametrize("edges", ["0,nan,100", "0,inf", "-inf,0,100", "0,50,50,100", "100,50,0", "0,1_0,100",
                                   "0,\uff15\uff10,100"])
def test_bad_range_edges_are_refused(edges, run_dir):
    r = iqa("report", run_dir, "--bins", edges)
    assert r.exit_code == 2, r.output
    assert "--bins" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("rng", ["nan,5", "0,inf", "0,1_0", "5,0", "0,1,2"])
def test_bad_label_range_is_refused(rng, run_dir, tmp_path):
    cache = run_dir.parent / "c.h5"
    r = iqa("train-head", "--cache", cache, "--epochs", 1, "--out", tmp_path / "r", "--label-range", rng)
    assert r.exit_code == 2 and "--label-range" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------- §5 clean errors

def test_nul_byte_in_an_image_path(img_root, tmp_path, tiny_model):
    csv = tmp_path / "l.csv"
    csv.write_bytes(b"image,label\nimg/a.jpg,1\nimg/b\x00.jpg,2\n")
    one_line_error(embed_csv(img_root, csv, tmp_path / "c.h5", tiny_model), csv, "line 3", "NUL byte")
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("seed", [-1, 2 ** 63, 2 ** 64, 2 ** 70])
def test_seeds_outside_0_to_2_63_are_refused_alike(seed, run_dir, tmp_path):
    cache = run_dir.parent / "c.h5"
    one_line_error(iqa("train-head", "--cache", cache, "--epochs", 1, "--out", tmp_path / "r", "--seed", seed,
                       "--no-progress"), "--seed", str(seed), "2**63-1")
    one_line_error(iqa("ablate", "--cache", cache, "--epochs", 1, "--out", tmp_path / "a", "--grid",
                       f"seed=0,{seed}", "--no-progress"), "seed", str(seed), "2**63-1")
    one_line_error(iqa("report", run_dir, "--boot-seed", seed), "--boot-seed", "2**63-1")
    assert not (tmp_path / "r").exists() and not (tmp_path / "a").exists()


def test_largest_seed_trains(run_dir, tmp_path):
    cache = run_dir.parent / "c.h5"
    r = iqa("train-head", "--cache", cache, "--epochs", 1, "--hidden", 8, "--out", tmp_path / "r",
            "--seed", 2 ** 63 - 1, "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output


def test_split_seed_is_checked(img_root, tmp_path, tiny_model):
    csv = tmp_path / "l.csv"
    csv.write_text("image,label\nimg/a.jpg,1\nimg/b.jpg,2\n")
    one_line_error(embed_csv(img_root, csv, tmp_path / "c.h5", tiny_model, "--split-seed", -3), "--split-seed",
                   "2**63-1")


@pytest.mark.parametrize("section,key,value", [("vision_cfg", "width", -48), ("vision_cfg", "patch_size", 0),
                                               ("vision_cfg", "layers", "two"), ("", "embed_dim", -16),
                                               ("text_cfg", "heads", 1.5), ("vision_cfg", "mlp_ratio", -4.0)])
def test_model_config_with_nonsense_sizes(section, key, value, img_root, tmp_path):
    cfg = json.loads(json.dumps(TINY_MODEL))
    (cfg[section] if section else cfg)[key] = value
    model = tmp_path / "bad-model.json"
    model.write_text(json.dumps(cfg))
    csv = tmp_path / "l.csv"
    csv.write_text("image,label\nimg/a.jpg,1\nimg/b.jpg,2\n")
    name = f"{section}.{key}" if section else key
    one_line_error(embed_csv(img_root, csv, tmp_path / "c.h5", str(model)), "bad-model.json", f"'{name}'")
    assert not (tmp_path / "c.h5").exists()


def test_file_name_too_long_is_a_failed_image(img_root, tmp_path, tiny_model):
    long = "x" * 300 + ".jpg"
    csv = tmp_path / "l.csv"
    csv.write_text(f"image,label\nimg/a.jpg,1\nimg/b.jpg,2\nimg/{long},3\nimg/c.jpg,4\nimg/d.jpg,5\n")
    out = tmp_path / "c.h5"
    r = embed_csv(img_root, csv, out, tiny_model)
    assert r.exit_code == 3, r.output  # embed's exit code when some images failed
    assert "4 of 5 images embedded, 1 failed" in r.output and "File name too long" in r.output
    import h5py

    with h5py.File(out) as f:
        ids, status = [x.decode() for x in f["image_id"][...]], list(f["status"][...])
    assert status == [1, 1, 2, 1, 1], (ids, status)


def test_disk_full_while_saving_a_plot_leaves_no_png(run_dir, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    real = Figure.savefig
    calls = []

    def full_disk(self, fname, *a, **kw):
        calls.append(fname)
        if len(calls) == 2:  # the second plot: half written, then the disk is full
            if hasattr(fname, "write"):
                fname.write(b"\x89PNG\r\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", full_disk)
    plots = tmp_path / "plots"
    r = iqa("report", run_dir, "--plots", plots)
    err = one_line_error(r, "lds_density.png", "No space left on device")
    assert sorted(p.name for p in plots.iterdir()) == ["label_histogram.png"], err
    assert (plots / "label_histogram.png").stat().st_size > 1000


def test_no_delete_advice_for_files_that_are_not_caches(run_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my thesis notes\n" * 50)
    photo = tmp_path / "photo.h5"
    Image.new("RGB", (16, 16)).save(photo, format="JPEG")
    for path, what in ((notes, "looks like text"), (photo, "looks like a JPEG image"),
                       (tmp_path, "is a folder")):
        err = one_line_error(iqa("train-head", "--cache", path, "--out", tmp_path / "r"), str(path), what,
                             "not an HDF5 file")
        advice = err.replace(str(path), "PATH")
        assert "delete" not in advice and "rm " not in advice and "--overwrite" not in advice, err
    data = (run_dir.parent / "c.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])  # a real cache, cut short
    one_line_error(iqa("train-head", "--cache", tmp_path / "trunc.h5", "--out", tmp_path / "r"), "damaged",
                   "delete it")
    assert notes.read_text() == "my thesis notes\n" * 50
    assert not (tmp_path / "r").exists()


def test_real_koniq_like_mos_text_round_trips_to_its_bins(img_root, tmp_path, tiny_model):
    """MOS written as KonIQ-10k's CSV writes them (10 decimals) and short
    decimals on bin edges: the cache made by `iqa embed` bins them as their
    decimal values, for bins of 1, 2 and 0.5."""
    from decimal import ROUND_FLOOR, Decimal

    from iqa_cache.cache import load
    from iqa_cache.train.imbalance import Bins

    mos = ["77.3836206897", "68.7285714286", "57.0", "57.5", "56.9999", "70.125", "50.5", "2.0", "99.9999", "1.4"]
    for i in range(len(mos)):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(img_root / "img" / f"m{i}.jpg")
    csv = tmp_path / "l.csv"
    csv.write_text("image,MOS,split\n" + "".join(f"img/m{i}.jpg,{m},train\n" for i, m in enumerate(mos)))
    out = tmp_path / "c.h5"
    r = embed_csv(img_root, csv, out, tiny_model, "--label-range", "0,100")
    assert r.exit_code == 0, r.output
    data = load(out)
    for size in ("1", "2", "0.5"):
        want = [int((Decimal(m) / Decimal(size)).to_integral_value(ROUND_FLOOR)) for m in mos]
        np.testing.assert_array_equal(Bins(0.0, 100.0, float(size)).index(data.label), want)

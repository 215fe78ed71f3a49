"""Dataset loaders: KonIQ-10k's two CSV forms, plain CSV datasets, and the
one-line errors for bad descriptions."""
from __future__ import annotations

import os

import numpy as np
import pytest

from iqa_cache.errors import DatasetError
from iqa_cache.sources.datasets import KONIQ_SPLIT_SIZES, load_csv, load_koniq, seeded_split
from iqa_cache.sources.dispatch import load_dataset


def test_koniq_official_split_and_labels(koniq_root):
    m = load_koniq(koniq_root)
    assert len(m) == 40 and m.name == "koniq" and m.label_range == (0.0, 100.0)
    assert set(m.split) <= {"train", "val", "test"}
    assert all(p.startswith("512x384/") for p in m.path)
    assert all((koniq_root / p).is_file() for p in m.path)
    assert "official" in m.split_source
    import pandas as pd

    df = pd.read_csv(koniq_root / "koniq10k_distributions_sets.csv")
    np.testing.assert_allclose(m.label, df["MOS"].to_numpy(np.float32))
    assert list(m.split) == [{"training": "train", "validation": "val", "test": "test"}[s] for s in df["set"]]


def test_koniq_scores_file_gives_seeded_split(koniq_copy):
    import pandas as pd

    df = pd.read_csv(koniq_copy / "koniq10k_distributions_sets.csv")
    os.remove(koniq_copy / "koniq10k_distributions_sets.csv")
    df["MOS_zscore"] = df["MOS"]
    df["MOS"] = 1 + df["MOS"] / 25
    df.drop(columns=["set"]).to_csv(koniq_copy / "koniq10k_scores_and_distributions.csv", index=False)
    a = load_koniq(koniq_copy, split_seed=5)
    b = load_koniq(koniq_copy, split_seed=5)
    np.testing.assert_allclose(a.label, df["MOS_zscore"].to_numpy(np.float32))
    assert list(a.split) == list(b.split) and "seed 5" in a.split_source
    assert list(load_koniq(koniq_copy, split_seed=6).split) != list(a.split)


def test_seeded_split_has_koniq_proportions():
    s = seeded_split(10073, 0)
    assert {k: int((s == k).sum()) for k in ("train", "val", "test")} == KONIQ_SPLIT_SIZES
    s = seeded_split(100, 0)
    assert (s == "train").sum() == 70 and (s == "val").sum() == 10


def test_koniq_resolution_choice(koniq_copy):
    with pytest.raises(DatasetError, match="1024x768"):
        load_koniq(koniq_copy, resolution="1024x768")
    os.rename(koniq_copy / "512x384", koniq_copy / "1024x768")
    assert load_koniq(koniq_copy).path[0].startswith("1024x768/")
    with pytest.raises(DatasetError, match="not one of"):
        load_koniq(koniq_copy, resolution="800x600")


def test_csv_dataset_defaults_and_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "d.csv").write_text("filename,score,set\nimgs/a.jpg,1.5,training\nimgs/b.jpg,3,test\n"
                                    "imgs/c.jpg,4,valid\n")
    m = load_csv(tmp_path, tmp_path / "d.csv")
    assert list(m.image_id) == ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"]
    assert list(m.split) == ["train", "test", "val"]
    assert m.label_range == (1.0, 5.0)  # labels 1.5-4: the 1-5 MOS scale (binning.default_label_range)
    m2 = load_csv(tmp_path, tmp_path / "d.csv", label_range=(0, 4))
    assert m2.label_range == (0.0, 4.0)
    (tmp_path / "e.csv").write_text("img,q\nimgs/a.jpg,0\nimgs/b.jpg,2\n")
    m3 = load_csv(tmp_path, tmp_path / "e.csv", image_col="img", label_col="q")
    assert "seeded" in m3.split_source


@pytest.mark.parametrize("content,match", [
    ("image,label\na.jpg,1\nb.jpg,abc\n", r"line 3 \(image b.jpg\): label 'abc' in column 'label' is not a number"),
    ("image,label\na.jpg,1\nb.jpg,nan\n", "line 3.*not a finite number"),
    ("image,label\na.jpg,1\nb.jpg,inf\n", "line 3.*not a finite number"),
    ("image,quality_x\na.jpg,1\n", "no label column"),
    ("picture,label\na.jpg,1\n", "no image column"),
    ("image,label\na.jpg,1\na.jpg,2\n", "line 3: image 'a.jpg' already listed on line 2"),
    ("image,label\n../x.jpg,1\n", "leads outside the dataset root"),
    ("image,label\n/etc/passwd,1\n", "absolute"),
    ("image,label,split\na.jpg,1,holdout\n", "split 'holdout'.*not one of train/val/test"),
    ("", "empty"),
    ("image,label\n", "no rows"),
])
def test_bad_csv_gives_one_line_error(tmp_path, content, match):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(DatasetError, match=match) as e:
        load_csv(tmp_path, f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_non_utf8_csv(tmp_path):
    f = tmp_path / "latin1.csv"
    f.write_bytes("image,label\ncaf\xe9.jpg,1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_csv(tmp_path, f)


def test_symlink_out_of_root_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    (root / "d.csv").write_text("image,label\nlink.jpg,1\n")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        load_csv(root, root / "d.csv")


def test_out_of_range_labels(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("image,label\na.jpg,-2\nb.jpg,50\nc.jpg,120\n")
    with pytest.raises(DatasetError, match=r"2 label\(s\).*outside the declared range \[0, 100\].*line 2"):
        load_csv(tmp_path, f, label_range=(0, 100))
    clipped = load_csv(tmp_path, f, label_range=(0, 100), out_of_range="clip")
    assert list(clipped.label) == [0, 50, 100]
    dropped = load_csv(tmp_path, f, label_range=(0, 100), out_of_range="drop")
    assert list(dropped.image_id) == ["b.jpg"]


def test_missing_things(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_koniq(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no image folder"):
        load_koniq(tmp_path)
    (tmp_path / "512x384").mkdir()
    with pytest.raises(DatasetError, match="neither"):
        load_koniq(tmp_path)
    with pytest.raises(DatasetError, match="CSV file .* does not exist"):
        load_csv(tmp_path, tmp_path / "x.csv")
    with pytest.raises(DatasetError, match="needs --csv"):
        load_dataset("csv", tmp_path)
    with pytest.raises(DatasetError, match="needs --root"):
        load_dataset("koniq", None)


def test_limit_and_fingerprint(koniq_root):
    m = load_koniq(koniq_root)
    h = m.head(10)
    assert len(h) == 10 and list(h.image_id) == list(m.image_id[:10])
    assert h.fingerprint() != m.fingerprint() and m.fingerprint() == load_koniq(koniq_root).fingerprint()

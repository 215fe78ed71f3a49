"""--dataset webdataset: img2dataset-style tar shards read in place (labels
and splits from each sample's json, ids from the keys) give the cache that
the same images as folder + CSV give, bit for bit, through both pipelines."""
from __future__ import annotations

import io
import json
import tarfile

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.errors import DatasetError
from iqa_cache.sources.wds import expand_braces, load_webdataset

from .wdsgen import write_shards

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_brace_expansion():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("x{0..10..5}") == ["x0", "x5", "x10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_webdataset_cache_equals_folder_and_csv_cache(koniq_root, tiny_model, tmp_path, pipeline):
    pattern, folder, csv = write_shards(koniq_root, tmp_path / "shards", per_shard=15)  # 3 shards: 15, 15, 10
    common = ["--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--batch-size", "8",
              "--pipeline", pipeline, "--workers", "1", "--no-progress"]
    r = iqa("embed", "--dataset", "csv", "--root", folder, "--csv", csv, "--image-col", "image", "--out",
            tmp_path / "csv.h5", *common)
    assert r.exit_code == 0, r.output
    r = iqa("embed", "--dataset", "webdataset", "--root", pattern, "--out", tmp_path / "wds.h5", *common)
    assert r.exit_code == 0, r.output
    assert "40 of 40 images embedded, 0 failed" in r.output
    keys = dict(pd.read_csv(csv, dtype=str)[["key", "image"]].values)
    with h5py.File(tmp_path / "csv.h5") as a, h5py.File(tmp_path / "wds.h5") as b:
        np.testing.assert_array_equal(a["embeddings"][...], b["embeddings"][...])
        np.testing.assert_array_equal(a["label"][...], b["label"][...])
        np.testing.assert_array_equal(a["split"][...], b["split"][...])
        np.testing.assert_array_equal(a["status"][...], b["status"][...])
        assert [keys[x.decode()] for x in b["image_id"][...]] == [x.decode() for x in a["image_id"][...]]
        assert b["path"][0].decode() == "00000.tar/000000000.jpg"
        np.testing.assert_array_equal(a["file_size"][...], b["file_size"][...])
        np.testing.assert_array_equal(a["file_hash"][...], b["file_hash"][...])  # same bytes, same identity
    attrs = cache.read_attrs(tmp_path / "wds.h5")
    assert attrs["dataset"] == "webdataset" and attrs["label_name"] == "mos"
    assert attrs["split_source"] == "json key 'split' of each sample"
    # a rerun finds nothing changed (the members' identities hold)
    r = iqa("embed", "--dataset", "webdataset", "--root", pattern, "--out", tmp_path / "wds.h5", *common)
    assert r.exit_code == 0 and "already complete" in r.output, r.output


def test_labels_from_cls_members_seeded_split_and_qualified_ids(tmp_path):
    from .imagegen import jpeg_bytes, photo

    img = jpeg_bytes(photo(16, 12))
    for s in range(2):  # the same keys in both shards: ids get the shard's name
        _tar(tmp_path / f"{s}.tar", {f"k{i}.jpg": img for i in range(3)} | {f"k{i}.cls": f"{i + s}".encode()
                                                                              for i in range(3)}
             | {"k9.json": b"{}"})  # a sample without an image: skipped
    m = load_webdataset(tmp_path / "{0..1}.tar", split_seed=1)
    assert list(m.image_id) == [f"{s}.tar/k{i}" for s in range(2) for i in range(3)]
    np.testing.assert_array_equal(m.label, [0, 1, 2, 1, 2, 3])
    assert m.label_name == "cls" and m.split_source.startswith("seeded random split, seed 1")
    assert m.reader.shard_starts == [0, 3] and bytes(m.reader.read(m.path[4])) == img


def test_webdataset_errors_name_the_shard_and_sample(tmp_path, tiny_model):
    from .imagegen import jpeg_bytes, photo

    img = jpeg_bytes(photo(16, 12))
    _tar(tmp_path / "00000.tar", {"x.jpg": img, "x.json": b'{"mos": 3}'})
    with pytest.raises(DatasetError, match=r"webdataset shard .*00001.tar does not exist"):
        load_webdataset(tmp_path / "{00000..00001}.tar")
    _tar(tmp_path / "a.tar", {"x.jpg": img, "x.json": json.dumps({"mos": "high"}).encode()})
    with pytest.raises(DatasetError, match=r"a.tar, sample x, json key 'mos': label 'high' is not a number"):
        load_webdataset(tmp_path / "a.tar")
    _tar(tmp_path / "b.tar", {"x.jpg": img, "x.json": b'{"q": 3}'})
    with pytest.raises(DatasetError, match="sample x has no label .*name it with --label-col"):
        load_webdataset(tmp_path / "b.tar")
    assert load_webdataset(tmp_path / "b.tar", label_key="q").label.tolist() == [3.0]
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tf:
        ti = tarfile.TarInfo("x.jpg")
        ti.size = len(img)
        tf.addfile(ti, io.BytesIO(img))
    r = iqa("embed", "--dataset", "webdataset", "--root", tmp_path / "c.tar.gz", "--model", tiny_model,
            "--pretrained", "none", "--out", tmp_path / "c.h5")
    assert r.exit_code == 2 and "is not an uncompressed tar file" in r.output
    assert not (tmp_path / "c.h5").exists()

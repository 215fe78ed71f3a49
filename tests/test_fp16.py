"""`--dtype float16`: features stored at half the size, recorded, read back
as float32, refused where float16 cannot hold them, and part of the cache's
identity (a rerun with another dtype follows the change rules)."""
from __future__ import annotations

import numpy as np
import pytest

from iqa_cache import cache
from iqa_cache.errors import CacheError
from iqa_cache.train.fit import TrainConfig, train_head

from .conftest import learnable_problem, write_feature_cache
from .test_cache_update import data, dataset, embed, iqa  # noqa: F401  (fixtures)


def write(path, x, y, split, dtype: str):
    """write_feature_cache with a features dtype (the provenance's feature_dtype)."""
    import iqa_cache.cache.writer as writer

    real = writer.create

    def create(p, manifest, prov, **kw):
        return real(p, manifest, {**prov, "feature_dtype": dtype}, **kw)

    writer.create, cache.create = create, create
    try:
        return write_feature_cache(path, x, y, split)
    finally:
        writer.create, cache.create = real, real


def test_a_float16_cache_is_half_the_features_and_reads_back_as_float32(tmp_path):
    x, y, split = learnable_problem(n=400, d=64)
    p32 = write(tmp_path / "a.h5", x, y, split, "float32")
    p16 = write(tmp_path / "b.h5", x, y, split, "float16")
    import h5py

    with h5py.File(p32) as f32, h5py.File(p16) as f16:
        assert f32["embeddings"].dtype == np.float32 and f16["embeddings"].dtype == np.float16
        assert f16["embeddings"].id.get_storage_size() * 2 == f32["embeddings"].id.get_storage_size()
    d32, d16 = cache.load(p32), cache.load(p16)
    assert d16.feature_dtype == "float16" and d32.feature_dtype == "float32"
    assert d16.features.dtype == np.float32 and d16.features.shape == d32.features.shape
    np.testing.assert_allclose(d16.features, d32.features, rtol=1e-3, atol=1e-4)
    assert not np.array_equal(d16.features, d32.features)  # really rounded to float16
    cfg = TrainConfig(epochs=15, batch_size=64, device="cpu")
    m32 = train_head(d32, cfg).metrics["test"]["mae"]
    m16 = train_head(d16, cfg).metrics["test"]["mae"]
    assert m32 < 1.5 and abs(m16 - m32) < 0.15  # label units, on a 0-100 scale


def test_the_blockwise_read_keeps_the_embedded_rows_only(tmp_path):
    from iqa_cache.cache.read import read_rows_float32

    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    p = write(tmp_path / "c.h5", x, np.full(50, 50.0, np.float32), np.array(["train"] * 50, dtype=object),
              "float16")
    import h5py

    rows = np.array([0, 3, 4, 17, 18, 49])
    with h5py.File(p) as f:
        got = read_rows_float32(f["embeddings"], rows, block=7)
    np.testing.assert_array_equal(got, x[rows].astype(np.float16).astype(np.float32))


def test_features_beyond_float16_are_refused_naming_the_row(tmp_path):
    x, y, split = learnable_problem(n=30, d=8)
    x[17, 3] = 1e5
    with pytest.raises(CacheError, match=r"image img00017.jpg \(row 17\) has a feature of 1e\+05, beyond float16"):
        write(tmp_path / "big.h5", x, y, split, "float16")


def test_embed_and_import_store_float16_and_a_rerun_with_another_dtype_is_refused(data, tmp_path, tiny_model):  # noqa: F811
    out = tmp_path / "e.h5"
    r = embed(data, out, tiny_model, "--dtype", "float16")
    assert r.exit_code == 0, r.output
    assert cache.read_attrs(out)["feature_dtype"] == "float16" and cache.load(out).features.dtype == np.float32
    r = embed(data, out, tiny_model)  # default float32: the features would be made differently
    assert r.exit_code == 2 and "feature_dtype" in r.output and "\n" not in r.output.strip(), r.output
    r = embed(data, out, tiny_model, "--dtype", "float16")
    assert r.exit_code == 0 and "already complete" in r.output, r.output
    r = embed(data, tmp_path / "x.h5", tiny_model, "--dtype", "bfloat")
    assert r.exit_code == 2 and "'bfloat' is not one of 'float32', 'float16'" in r.output
    # import: the same features as a float16 cache
    d = cache.load(out)
    np.save(tmp_path / "f.npy", d.features)
    import pandas as pd

    pd.DataFrame({"image": d.image_id, "label": d.label, "split": d.split}).to_csv(tmp_path / "l.csv", index=False)
    r = iqa("import", "--features", tmp_path / "f.npy", "--labels", tmp_path / "l.csv", "--out", tmp_path / "i.h5",
            "--dtype", "float16")
    assert r.exit_code == 0, r.output
    imported = cache.load(tmp_path / "i.h5")
    assert imported.feature_dtype == "float16"
    np.testing.assert_array_equal(imported.features, d.features)  # float16 values survive a float16 round trip


def test_a_cache_from_before_dtype_reads_as_float32(tmp_path):
    import h5py

    x, y, split = learnable_problem(n=20, d=4)
    p = write_feature_cache(tmp_path / "old.h5", x, y, split)
    with h5py.File(p, "r+") as f:
        del f.attrs["feature_dtype"]
    assert cache.read_attrs(p)["feature_dtype"] == "float32" and cache.load(p).feature_dtype == "float32"

"""The HDF5 cache: self-description, checks on reading, crash-safe commits."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from iqa_cache import cache
from iqa_cache.errors import CacheError

from .conftest import learnable_problem, write_feature_cache


@pytest.fixture()
def small_cache(tmp_path):
    x, y, split = learnable_problem(n=50, d=8)
    return write_feature_cache(tmp_path / "s.h5", x, y, split), x, y, split


def test_cache_describes_itself(small_cache):
    path, x, y, split = small_cache
    a = cache.read_attrs(path)
    for key in ("schema", "schema_version", "dataset", "dataset_root", "model", "pretrained", "pretrained_sha256",
                "open_clip_version", "image_size", "resize_mode", "interpolation", "mean", "std", "feature",
                "label_name", "label_range", "split_source", "n_images", "n_embedded", "n_failed", "complete",
                "torch_version"):
        assert key in a, key
    assert a["n_embedded"] == 50 and a["complete"] is True and a["label_range"] == [0.0, 100.0]
    with h5py.File(path) as f:
        emb = f["embeddings"]
        assert emb.dtype == np.float32 and emb.shape == (50, 8) and emb.chunks is not None
        assert emb.maxshape == (None, 8)
        assert f["label"].dtype == np.float32
    d = cache.load(path)
    np.testing.assert_array_equal(d.features, x)
    np.testing.assert_array_equal(d.label, y)
    assert list(d.split) == list(split)


def test_other_schema_version_refused(small_cache):
    path = small_cache[0]
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match="schema version 99"):
        cache.load(path)


def test_not_a_cache_and_truncated_file(small_cache, tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(CacheError, match="not an iqa-cache|no 'embeddings'"):
        cache.load(tmp_path / "other.h5")
    data = small_cache[0].read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(CacheError, match="damaged"):
        cache.load(tmp_path / "trunc.h5")


def test_nan_embeddings_refused(small_cache):
    path = small_cache[0]
    with h5py.File(path, "r+") as f:
        f["embeddings"][7, 3] = np.inf
    with pytest.raises(CacheError, match=r"1 embedding\(s\) contain NaN or Inf \(first: image img00007.jpg\)"):
        cache.load(path)


def test_expectations_are_checked(small_cache):
    path = small_cache[0]
    with pytest.raises(CacheError, match="resize_mode: cache has 'squash', asked for 'shortest'"):
        cache.load(path, expect={"resize_mode": "shortest"})
    assert len(cache.load(path, expect={"resize_mode": "squash", "model": "ViT-B-32"})) == 50


def test_commit_order_status_is_the_commit_point(tmp_path):
    x, y, split = learnable_problem(n=20, d=4)
    path = write_feature_cache(tmp_path / "c.h5", x, y, split)
    with h5py.File(path, "r+") as f:  # pretend nothing was committed
        f["status"][:] = cache.PENDING
    with cache.CacheWriter(path, sync=False) as w:
        assert [b.tolist() for b in w.pending_batches()] == [list(range(20))]
        w.f["embeddings"][0:5] = 0.0  # rows written, status not yet: still pending
        assert w.n_pending() == 20
        w.commit(0, x, np.r_[np.full(19, cache.OK), cache.FAILED].astype(np.int8), [""] * 19 + ["bad"])
        assert w.pending_batches() == []
        counts = w.finalize()
    assert counts == {"n_embedded": 19, "n_failed": 1, "n_pending": 0}
    assert cache.failures(path) == [("img00019.jpg", "bad")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_default_cache_path(tmp_path):
    p = cache.default_cache_path("cache", "koniq", "ViT-B-32", "laion2b_s34b_b79k", "squash")
    assert str(p) == "cache/koniq_ViT-B-32_laion2b_s34b_b79k_squash.h5"
    ck = tmp_path / "my ckpt.pt"
    ck.write_bytes(b"x")
    p = cache.default_cache_path("cache", "csv", "cfg/tiny.json", str(ck), "shortest", limit=100, precision="bf16")
    assert p.name == "csv_tiny_my-ckpt_shortest_bf16_n100.h5"

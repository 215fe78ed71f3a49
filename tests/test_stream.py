"""Training from a cache larger than memory (issue 18): the chunked order is
a pure function, a streamed cache trains exactly as the same cache in
memory (same seed and order, to float rounding), and it never holds more
than a window of rows."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cache import RowReader
from iqa_cache.cli.main import app
from iqa_cache.errors import CacheError, ConfigError
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.order import chunk_order, chunk_windows
from iqa_cache.train.stacked import train_many, train_stack
from iqa_cache.train.stacked.data import TrainingRows, to_device

from .conftest import learnable_problem, write_feature_cache

runner = CliRunner()
SMALL = {"shuffle": "chunks", "chunk_rows": 50, "shuffle_buffer": 3, "epochs": 6, "batch_size": 64, "hidden": 32,
         "blocks": 1}


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    x, y, split = learnable_problem(900, 24)
    # interleave the splits as a real cache does (KonIQ's split is per image, not per file region)
    path = write_feature_cache(tmp_path_factory.mktemp("stream") / "c.h5", x, y, split)
    return path, x


def test_the_chunked_order_is_whole_chunks_per_window_and_pure():
    n, c, b = 1037, 40, 4  # a short last chunk
    windows = chunk_windows(n, epoch=3, seed=7, chunk_rows=c, buffer=b)
    order = np.concatenate(windows)
    assert np.array_equal(np.sort(order), np.arange(n))  # every row once
    n_chunks = -(-n // c)
    assert len(windows) == -(-n_chunks // b)
    for w in windows:  # a window is the rows of `buffer` whole chunks (the last: what is left)
        chunks = np.unique(w // c)
        assert len(chunks) <= b and len(w) == sum(min(c, n - k * c) for k in chunks)
        assert not np.array_equal(w, np.sort(w))  # shuffled within
    # pure: the same (seed, epoch) gives the same order, another epoch or seed another one
    assert np.array_equal(order, chunk_order(n, 3, 7, c, b))
    assert not np.array_equal(order, chunk_order(n, 4, 7, c, b))
    assert not np.array_equal(order, chunk_order(n, 3, 8, c, b))
    # a chunk and window as large as the set: one full permutation
    assert len(chunk_windows(n, 0, 0, 4096, 8)) == 1
    assert chunk_order(0, 0, 0, c, b).size == 0


@pytest.mark.parametrize("batch_size", [64, 150, 400, 2000])
def test_streamed_batches_are_the_in_memory_batches(problem, batch_size):
    """Windows of 150 rows: batches inside one window, exactly one, spanning
    several windows, and the whole set in one batch."""
    path, _ = problem
    mem, st = cache.load(path), cache.load(path, features=False)
    cfg = TrainConfig.from_flat({**SMALL, "batch_size": batch_size})
    bins = cfg.bins(mem.label_range)
    dm, ds = to_device(mem, "cpu", 150), to_device(st, "cpu", 150)
    try:
        rm, rs = TrainingRows.of(mem, dm, [cfg, cfg], bins), TrainingRows.of(st, ds, [cfg, cfg], bins)
        assert rs.x is None
        windows = chunk_windows(len(rm), 0, 0, 50, 3)
        got = list(rs.batches(windows))
        want = list(rm.batches(windows))
        assert len(got) == len(want) == -(-len(rm) // batch_size)
        for g, w in zip(got, want):
            assert g[0].shape == w[0].shape and torch.equal(g[0], w[0])
            assert torch.equal(g[1], w[1]) and torch.equal(g[2], w[2]) and g[4] == w[4]
    finally:
        ds.close()


GRID = [{}, {"lds": True, "fds": True}, {"lds": True, "fds": True, "fds_ks": 3, "lr": 3e-3},
        {"method": "bmc"}, {"method": "ranksim"}]


def test_streamed_training_equals_in_memory_training_in_a_stack(problem):
    """Plain, LDS+FDS (two FDS windows in one stack), Balanced MSE and
    RankSim: the same best epochs, predictions, weights and FDS statistics,
    bit for bit (the same rows in the same blocks; FDS+LDS training is
    chaotic enough that 1e-6 apart in the FDS statistics ends 0.02 apart in
    validation MAE on a 200,000-row cache, so nothing less would hold)."""
    path, _ = problem
    cfgs = [TrainConfig.from_flat({**SMALL, **e}) for e in GRID]
    mem = dict(train_many(cache.load(path), cfgs))
    st = dict(train_many(cache.load(path, features=False), cfgs))
    for i, c in enumerate(cfgs):
        a, b = mem[i], st[i]
        assert a.best_epoch == b.best_epoch and a.best_val_mae == b.best_val_mae, c.tag
        assert a.history == b.history, c.tag
        np.testing.assert_array_equal(a.predictions["pred"], b.predictions["pred"])
        for name, t in a.head.state_dict().items():
            assert torch.equal(t, b.head.state_dict()[name]), (c.tag, name)
    # and the chunked order is an order of its own: not the --shuffle rows run
    rows = dict(train_many(cache.load(path), [TrainConfig.from_flat({**SMALL, "shuffle": "rows"})]))
    assert not np.allclose(rows[0].predictions["pred"], mem[0].predictions["pred"])


def test_a_stream_never_holds_more_than_a_window(problem, monkeypatch):
    path, _ = problem
    st = cache.load(path, features=False)
    assert st.features is None and st.feature_dim == 24
    sizes = []
    read = RowReader.read

    def spy(self, positions):
        sizes.append(len(positions))
        return read(self, positions)

    monkeypatch.setattr(RowReader, "read", spy)
    cfg = TrainConfig.from_flat({**SMALL, "lds": True, "fds": True, "epochs": 3})
    (res,) = train_stack(st, [cfg])
    window = 50 * 3
    n_tr, n = int((st.split == "train").sum()), len(st)
    assert max(sizes) == window  # training windows and evaluation blocks alike
    # per epoch: the training rows for the batches and for FDS, the validation rows; then every row once
    n_va = int((st.split == "val").sum())
    assert sum(sizes) == 3 * (2 * n_tr + n_va) + n
    assert len(res.predictions) == n


def test_a_float16_cache_streams_as_it_loads(tmp_path):
    x, y, split = learnable_problem(400, 16, seed=3)
    path = write_feature_cache(tmp_path / "h.h5", x, y, split)
    with h5py.File(path, "a") as f:  # store the features as float16, as --dtype float16 does
        emb = f["embeddings"][...]
        del f["embeddings"]
        f.create_dataset("embeddings", data=emb.astype(np.float16), chunks=(64, 16), maxshape=(None, 16))
        f.attrs["feature_dtype"] = "float16"
    mem, st = cache.load(path), cache.load(path, features=False)
    with RowReader(st) as r:
        np.testing.assert_array_equal(r.read(np.arange(len(st))), mem.features)
        np.testing.assert_array_equal(r.read(np.array([3, 4, 300])), mem.features[[3, 4, 300]])


def test_a_damaged_row_is_named_when_the_stream_reaches_it(tmp_path):
    x, y, split = learnable_problem(300, 8, seed=1)
    x[123, 2] = np.nan
    path = write_feature_cache(tmp_path / "bad.h5", x, y, split)
    with pytest.raises(CacheError, match="img00123.jpg"):
        cache.load(path)
    st = cache.load(path, features=False)  # not read yet
    with pytest.raises(CacheError, match="img00123.jpg.*NaN or Inf"):
        train_stack(st, [TrainConfig.from_flat({**SMALL, "epochs": 1})])


def test_streaming_needs_the_chunked_order(problem):
    path, _ = problem
    with pytest.raises(ConfigError, match="--stream .*--shuffle chunks"):
        next(train_many(cache.load(path, features=False), [TrainConfig.from_flat({"epochs": 1})]))
    with pytest.raises(ConfigError, match="--chunk-rows must be a whole number of at least 1, got 0"):
        TrainConfig.from_flat({"chunk_rows": 0})
    with pytest.raises(ConfigError, match="--shuffle 'files' is not one of rows, chunks"):
        TrainConfig.from_flat({"shuffle": "files"})


def _iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_head_and_ablate_stream_through_the_cli(problem, tmp_path):
    path, _ = problem
    opts = ["--shuffle", "chunks", "--chunk-rows", 50, "--shuffle-buffer", 3, "--epochs", 4, "--hidden", 32,
            "--blocks", 1, "--batch-size", 64, "--no-progress"]
    r = _iqa("train-head", "--cache", path, "--stream", "--epochs", 2, "--out", tmp_path / "x", "--no-progress")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "--shuffle chunks" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    for stream in ("--stream", "--no-stream"):
        r = _iqa("train-head", "--cache", path, *opts, "--lds", "--fds", stream, "--out", tmp_path / stream)
        assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "--stream" / "config.json").read_text())["train"]
    assert cfg["order"] == {"shuffle": "chunks", "chunk_rows": 50, "buffer": 3}
    a, b = (pd.read_csv(tmp_path / s / "predictions.csv") for s in ("--stream", "--no-stream"))
    np.testing.assert_array_equal(a["pred"], b["pred"])
    # the streamed run's head, rebuilt from its directory (as `iqa predict` does), scores as it was trained
    from iqa_cache.train.fit import predict
    from iqa_cache.train.runs import load_head

    head = load_head(tmp_path / "--stream")
    feats = cache.load(path).features[[int(i[3:8]) for i in a["image_id"]]]
    np.testing.assert_allclose(predict(head, torch.from_numpy(feats)).numpy(), a["pred"], rtol=1e-5, atol=1e-4)
    # a grid streamed, then resumed in memory: the streamed runs are the same runs, kept
    r = _iqa("ablate", "--cache", path, *opts, "--grid", "lds=on,off; fds=on", "--stream", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    r = _iqa("ablate", "--cache", path, *opts, "--grid", "lds=on,off; fds=on", "--out", tmp_path / "g")
    assert r.exit_code == 0 and "kept 2 finished, trained 0" in r.stderr, r.output


def test_images_that_failed_are_skipped_as_in_memory(tmp_path):
    """A real cache has images that could not be embedded (NaN rows, status
    failed) between the others: the stream reads past them."""
    x, y, split = learnable_problem(500, 12, seed=5)
    failed = [0, 5, 77, 78, 79, 400, 499]
    x[failed] = np.nan
    path = write_feature_cache(tmp_path / "f.h5", x, y, split)
    with h5py.File(path, "a") as f:
        st = f["status"][...]
        st[failed] = cache.FAILED
        f["status"][...] = st
    mem, streamed = cache.load(path), cache.load(path, features=False)
    assert len(mem) == len(streamed) == 500 - len(failed) and list(streamed.rows[:4]) == [1, 2, 3, 4]
    with RowReader(streamed) as r:
        np.testing.assert_array_equal(r.read(np.arange(len(streamed))), mem.features)
    cfg = TrainConfig.from_flat({**SMALL, "lds": True, "fds": True, "epochs": 3})
    (a,), (b,) = train_stack(mem, [cfg]), train_stack(streamed, [cfg])
    np.testing.assert_array_equal(a.predictions["pred"], b.predictions["pred"])

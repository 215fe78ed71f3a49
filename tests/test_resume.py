"""Resumable and exclusive: a real `iqa embed` process killed at several
points (kill -9, Ctrl-C) and run again completes the cache bit-identically
to an uninterrupted run; a second writer is refused; crashes inside a commit
or while creating/finalising leave nothing a rerun cannot fix."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from iqa_cache import cache
from iqa_cache.embed.encoder import EncoderConfig
from iqa_cache.embed.loop import EmbedConfig, embed
from iqa_cache.sources.datasets import load_koniq

REPO = Path(__file__).resolve().parents[1]


# A mid-sized image tower (random weights): ~0.1-0.3 s a batch of 2 on a 2-core CPU, slow enough to kill a
# run at a chosen point, quick to build.
MID_MODEL = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 96, "layers": 3, "width": 512, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}
N = 24


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory) -> str:
    import json

    p = tmp_path_factory.mktemp("models") / "iqa-mid-vit.json"
    p.write_text(json.dumps(MID_MODEL))
    return str(p)


def _embed_cmd(root, model, out, *extra) -> list[str]:
    return [sys.executable, "-m", "iqa_cache.cli", "embed", "--dataset", "koniq", "--root", str(root),
            "--limit", str(N),
            "--model", model, "--pretrained", "none", "--device", "cpu", "--batch-size", "2", "--out", str(out),
            "--no-progress", *extra]


def _reference(root, model, out, pipeline) -> np.ndarray:
    """An uninterrupted run of the same configuration (in this process)."""
    cfg = EmbedConfig(encoder=EncoderConfig(model=model, pretrained="none"), device="cpu", batch_size=2, workers=0,
                      sync=False, pipeline=pipeline)
    embed(load_koniq(root).head(N), cfg, out, progress=False)
    return cache.load(out).features


def _start(cmd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed(out: Path) -> int:
    """Rows committed so far, read without taking HDF5's file lock (the
    writer holds it); -1 while the file does not exist or cannot be read."""
    try:
        with h5py.File(out, "r", locking=False) as f:
            return int((f["status"][...] != cache.PENDING).sum())
    except (OSError, KeyError):
        return -1


def _run_until(cmd, out: Path, rows: int, sig: int, timeout: float = 120) -> tuple[int, str, int]:
    """Start the command, wait until at least ``rows`` rows are committed
    (rows=0: until the cache file exists), send ``sig``; return (exit code,
    stderr, rows committed when the signal was sent)."""
    p = _start(cmd)
    t0 = time.monotonic()
    try:
        while True:
            n = _committed(out)
            if n >= rows:
                break
            if p.poll() is not None:
                raise AssertionError(f"finished before {rows} rows were committed: {p.communicate()}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError("no progress")
            time.sleep(0.02)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, err, n


def _complete_and_compare(cmd, out, reference) -> None:
    with h5py.File(out, "r", locking=False) as f:
        status = f["status"][...]
        assert not cache._read_state(f)["complete"] and 0 < (status != cache.PENDING).sum() < N
        # committed rows come in whole batches: a batch is all pending or all done
        assert {tuple(b) for b in status.reshape(-1, 2).tolist()} <= {(0, 0), (1, 1)}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{N} of {N} images embedded, 0 failed" in r.stdout
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporaries left behind
    b = cache.load(out)
    np.testing.assert_array_equal(b.features, reference)  # bit-identical to an uninterrupted run
    assert b.attrs["complete"] and b.attrs["n_embedded"] == N


@pytest.mark.slow
def test_killed_at_several_points_then_rerun_equals_uninterrupted(koniq_root, mid_model, tmp_path):
    """PIL pipeline with a decoding worker process: kill -9 after a quarter,
    Ctrl-C after half, kill -9 after three quarters, then the same command."""
    reference = _reference(koniq_root, mid_model, tmp_path / "reference.h5", "pil")
    out = tmp_path / "killed.h5"
    cmd = _embed_cmd(koniq_root, mid_model, out, "--pipeline", "pil", "--workers", "1")
    code, _, n1 = _run_until(cmd, out, N // 4, signal.SIGKILL)
    assert code == -signal.SIGKILL and n1 >= N // 4
    code, err, _ = _run_until(cmd, out, N // 2, signal.SIGINT)
    assert code == 130, err
    assert "interrupted" in err and "run the same command again" in err
    code, _, _ = _run_until(cmd, out, 3 * N // 4, signal.SIGKILL)
    assert code == -signal.SIGKILL
    _complete_and_compare(cmd, out, reference)


@pytest.mark.slow
def test_tensor_pipeline_killed_then_rerun_equals_uninterrupted(koniq_root, mid_model, tmp_path):
    """Reading threads and the writer thread die with the process; the rerun
    completes the cache bit-identically."""
    reference = _reference(koniq_root, mid_model, tmp_path / "reference.h5", "tensor")
    out = tmp_path / "killed.h5"
    cmd = _embed_cmd(koniq_root, mid_model, out, "--pipeline", "tensor", "--workers", "2")
    code, _, _ = _run_until(cmd, out, N // 3, signal.SIGKILL)
    assert code == -signal.SIGKILL
    _complete_and_compare(cmd, out, reference)


@pytest.mark.slow
def test_second_writer_process_is_refused(koniq_root, mid_model, tmp_path):
    out = tmp_path / "shared.h5"
    cmd = _embed_cmd(koniq_root, mid_model, out, "--workers", "0")
    first = _start(cmd)
    try:
        t0 = time.monotonic()
        while _committed(out) < 2:  # the first writer is under way
            assert first.poll() is None, first.communicate()
            assert time.monotonic() - t0 < 120
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # keep it mid-run (holding the cache) while the second one starts
        try:
            second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        assert f"cache {out} is being written by another `iqa embed` (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    data = cache.load(out)  # the first writer's cache is whole
    assert len(data) == N and np.isfinite(data.features).all()


# ---------------------------------------------------------- in-process crashes

def _cfg(tiny_model, **kw):
    return EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none"), device="cpu",
                       batch_size=kw.pop("batch_size", 4), workers=kw.pop("workers", 0), sync=False, **kw)


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_crash_between_embeddings_and_status_is_redone(koniq_root, tiny_model, tmp_path, monkeypatch, pipeline):
    m = load_koniq(koniq_root).head(16)
    embed(m, _cfg(tiny_model, pipeline=pipeline), tmp_path / "ref.h5", progress=False)
    reference = cache.load(tmp_path / "ref.h5").features

    real_commit = cache.CacheWriter.commit

    def dying_commit(self, start, emb, status, reasons):
        first = int(np.atleast_1d(start)[0])  # a start row, or the batch's rows
        if first == 8:  # third batch: rows written, status not yet
            self.f["embeddings"][first:first + len(status)] = emb
            self.f.flush()
            raise Crash
        real_commit(self, start, emb, status, reasons)

    out = tmp_path / "crash.h5"
    monkeypatch.setattr(cache.CacheWriter, "commit", dying_commit)
    with pytest.raises(Crash):
        embed(m, _cfg(tiny_model, pipeline=pipeline), out, progress=False)
    monkeypatch.setattr(cache.CacheWriter, "commit", real_commit)
    with h5py.File(out, "r") as f:
        assert f["status"][...].tolist() == [1] * 8 + [0] * 8  # the written rows do not count
        assert np.isfinite(f["embeddings"][8:12]).all()
    s = embed(m, _cfg(tiny_model, pipeline=pipeline), out, progress=False)
    assert s.n_processed_now == 8 and s.n_embedded == 16
    np.testing.assert_array_equal(cache.load(out).features, reference)


def test_temporaries_of_a_killed_writer_are_removed(koniq_root, tiny_model, tmp_path):
    m = load_koniq(koniq_root).head(8)
    out = tmp_path / "c.h5"
    embed(m, _cfg(tiny_model), out, progress=False)
    with h5py.File(out, "r+") as f:  # killed inside finalize: every row done, not marked complete
        cache._write_state(f, f.filename, {"complete": False}, sync=False)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # their writer no longer runs
    ended.wait()
    stale = [tmp_path / f".c.h5.final-{ended.pid}", tmp_path / f".c.h5.creating-{ended.pid}"]
    for p in stale:
        p.write_bytes(b"half a copy")
    keep = tmp_path / ".c.h5.notes"
    keep.write_text("not ours")
    s = embed(m, _cfg(tiny_model), out, progress=False)
    assert s.n_processed_now == 0 and not s.already_complete and cache.read_attrs(out)["complete"]
    assert not any(p.exists() for p in stale) and keep.exists()


def test_create_streams_fill_values_and_allocates_everything(tmp_path):
    """Creating a cache for 50,000 images allocates no N x D array in
    Python (numpy allocations are traced), yet all storage exists on disk
    at once, so later writes only overwrite raw data."""
    import tracemalloc

    from iqa_cache.sources.datasets import Manifest

    n, d = 50_000, 768
    ids = np.array([f"{i}.jpg" for i in range(n)], dtype=object)
    m = Manifest(name="big", root=tmp_path, image_id=ids, path=ids, label=np.zeros(n, np.float32),
                 split=np.array([""] * n, dtype=object), label_range=(0.0, 1.0))
    prov = {"feature_dim": d, "feature": "test"}
    tracemalloc.start()
    cache.create(tmp_path / "big.h5", m, prov, batch_size=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * 2**20  # the manifest's strings, not the 154 MB of embeddings
    with h5py.File(tmp_path / "big.h5", "r") as f:
        e = f["embeddings"]
        n_chunks = -(-n // cache.CHUNK_ROWS)
        assert e.id.get_storage_size() == n_chunks * cache.CHUNK_ROWS * d * 4  # every chunk allocated at creation
        assert f["status"].id.get_storage_size() == n and f["error"].id.get_storage_size() == n * cache.REASON_BYTES
        assert np.isnan(e[0]).all() and np.isnan(e[n - 1]).all() and (f["status"][...] == cache.PENDING).all()
        assert e.chunks == (cache.CHUNK_ROWS, d) and e.maxshape == (None, d)
    with cache.CacheWriter(tmp_path / "big.h5", sync=False) as w:
        assert w.n_pending_batches() == -(-n // 256) and w.n_pending_rows_in_batches() == n
        first = next(w.iter_pending_batches())
        assert first.tolist() == list(range(256))

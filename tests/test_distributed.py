"""`iqa embed` under torchrun (2 CPU ranks, gloo): each rank embeds its own
part into a shard cache, rank 0 merges them into one ordinary cache that
equals a single-process run bit for bit; a rank killed with SIGKILL is
resumed by rerunning the same command, finished ranks are not redone."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.embed.distributed import part_attrs, part_bounds, rows, shard_path
from iqa_cache.embed.encoder import EncoderConfig
from iqa_cache.embed.loop import EmbedConfig, embed
from iqa_cache.sources.datasets import load_csv, load_koniq

from .test_resume import MID_MODEL
from .wdsgen import write_shards

REPO = Path(__file__).resolve().parents[1]
VOLATILE = {"created_at", "finished_at", "distributed_world_size", "seq", "history"}


def torchrun(*args, timeout=300, command="embed", **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "iqa_cache.cli",
           command, *map(str, args), "--device", "cpu", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if kw.pop("popen", False):
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_cache(a: Path, b: Path, *, ids_b=None) -> None:
    """Every dataset equal bit for bit (``ids_b``: b's image ids mapped to
    a's, paths and file times not compared), every attribute equal except
    the times and the rank count."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert set(fa) == set(fb)
        for name in fa:
            if name == "state" or (ids_b is not None and name in ("path", "file_mtime_ns")):
                continue  # state: compared below, parsed; paths and times: tar members vs files
            x, y = fa[name][...], fb[name][...]
            if name == "image_id" and ids_b is not None:
                y = np.array([ids_b[v.decode()].encode() for v in y], dtype=object)
            np.testing.assert_array_equal(x, y, err_msg=name)
    aa, ab = cache.read_attrs(a), cache.read_attrs(b)
    skip = VOLATILE | ({"dataset", "dataset_root", "dataset_source", "label_name", "split_source",
                        "manifest_sha256", "manifest_notes", "label_range", "content_id"} if ids_b is not None
                       else set())
    for k in sorted((set(aa) | set(ab)) - skip):
        assert k in aa and k in ab, k
        np.testing.assert_array_equal(aa[k], ab[k], err_msg=k)


def test_part_bounds_are_whole_batches_and_follow_shards():
    assert part_bounds(40, 4, 2) == [(0, 20), (20, 40)]
    assert part_bounds(41, 4, 2) == [(0, 20), (20, 41)]  # 11 batches: 5 + 6
    assert part_bounds(5, 4, 3) == [(0, 0), (0, 4), (4, 5)]  # more ranks than batches: some have nothing
    # shards of 10 samples, batches of 4: cuts on the batch boundary at or before a shard start
    assert part_bounds(40, 4, 2, [0, 10, 20, 30]) == [(0, 20), (20, 40)]
    assert part_bounds(40, 4, 4, [0, 10, 20, 30]) == [(0, 8), (8, 20), (20, 28), (28, 40)]
    for b in part_bounds(1000, 7, 5, list(range(0, 1000, 33))):
        assert b[0] % 7 == 0
    assert part_bounds(40, 4, 3, [0]) == [(0, 40), (40, 40), (40, 40)]  # one shard: one rank


def test_distributed_flag_needs_torchrun(koniq_root, tiny_model, tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    r = CliRunner().invoke(app, ["embed", "--dataset", "koniq", "--root", str(koniq_root), "--model", tiny_model,
                                 "--pretrained", "none", "--out", str(tmp_path / "x.h5"), "--distributed"])
    assert r.exit_code == 2 and "--distributed needs torchrun's environment" in r.output
    assert not (tmp_path / "x.h5").exists()


def test_merge_names_a_shard_that_is_no_part_of_the_job(koniq_root, tiny_model, tmp_path):
    """A complete cache in a shard's place that no rank of this job wrote
    (no part_rows, or another part's): the merge says so and how to go on
    (a rerun alone would find it 'already complete' and fail the same way)."""
    from iqa_cache.embed.distributed import merge_shards

    m = load_koniq(koniq_root).head(8)
    cfg = EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none"), device="cpu", batch_size=4,
                      workers=0, sync=False)
    out = tmp_path / "dist.h5"
    s0, s1 = shard_path(out, 0, 2), shard_path(out, 1, 2)
    embed(rows(m, 0, 4), cfg, s0, progress=False)  # no part attributes
    embed(rows(m, 4, 8), cfg, s1, progress=False, extra_attrs=part_attrs(m, 0, 4, 1, 2))  # the wrong part
    for parts, held in ([(0, 4, s0), (4, 8, s1)], "no part of a torchrun job"), ([(4, 8, s1)], "rows 0..3"):
        with pytest.raises(cache.CacheError, match=rf"shard .*{parts[0][2].name} holds {held}, not the part "
                                                   rf"{parts[0][0]}..{parts[0][1] - 1} of this job; delete it"):
            merge_shards(out, m, cfg, "cpu", 4, parts, pipeline="pil", extra={})
    assert not out.exists() and s0.exists() and s1.exists()  # nothing merged, nothing deleted


@pytest.mark.slow
def test_torchrun_over_webdataset_shards_equals_one_process_over_the_folder(koniq_root, tiny_model, tmp_path):
    """2 ranks over 4 webdataset shards = 1 process over the same images as
    folder + CSV, bit for bit; the shard files are gone; a single-process
    rerun finds the merged cache complete.  Then `iqa predict` on 2 ranks
    over the shards (Parquet out) = one process over the files."""
    pattern, folder, csv = write_shards(koniq_root, tmp_path / "shards", per_shard=10)
    ref = tmp_path / "ref.h5"
    embed(load_csv(folder, csv, image_col="image"),
          EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none"), device="cpu", batch_size=4,
                      workers=0, sync=False), ref, progress=False)
    out = tmp_path / "wds.h5"
    r = torchrun("--dataset", "webdataset", "--root", pattern, "--model", tiny_model, "--pretrained", "none",
                 "--batch-size", "4", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 of 40 images embedded, 0 failed" in r.stdout and r.stdout.count("images embedded") == 1
    keys = {k: img for k, img in zip(*np.loadtxt(csv, dtype=str, delimiter=",", skiprows=1,
                                                  usecols=(3, 0), unpack=True))}
    assert_same_cache(ref, out, ids_b=keys)
    attrs = cache.read_attrs(out)
    assert attrs["complete"] and attrs["distributed_world_size"] == 2 and attrs["dataset"] == "webdataset"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.h5", "shards", "wds.h5"]  # no shards, no temporaries
    again = CliRunner().invoke(app, ["embed", "--dataset", "webdataset", "--root", pattern, "--model", tiny_model,
                                     "--pretrained", "none", "--batch-size", "4", "--out", str(out)])
    assert again.exit_code == 0 and "already complete (40 embedded, 0 failed)" in again.output

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train-head", "--cache", str(out), "--epochs", "5", "--hidden", "8", "--device",
                                 "cpu", "--out", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    pq = "parquet" if importlib.util.find_spec("pyarrow") else "csv"
    r = torchrun("--run-dir", run, "--shards", pattern, "--out", tmp_path / f"scores.{pq}", "--batch-size", "8",
                 command="predict")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 40 scores" in r.stderr and r.stderr.count("wrote 40 scores") == 1
    import pandas as pd

    from iqa_cache.predict import PredictConfig, predict_images

    got = pd.read_parquet(tmp_path / "scores.parquet") if pq == "parquet" else pd.read_csv(tmp_path / "scores.csv")
    want = predict_images(run, sorted(folder.glob("*.jpg")), PredictConfig(device="cpu", workers=0),
                          progress=False).scores
    by_image = {keys[p.split("/")[-1].split(".")[0]]: v for p, v in zip(got["path"], got["score"])}
    np.testing.assert_allclose([by_image[Path(p).name] for p in want["path"]], want["score"], rtol=0,
                               atol=0 if pq == "parquet" else 1e-6)  # CSV: 6 decimals
    assert list(got["score"]) == sorted(got["score"], reverse=True)


def _committed(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int((f["status"][...] != cache.PENDING).sum())
    except (OSError, KeyError):
        return -1


@pytest.mark.slow
def test_torchrun_rank_killed_then_rerun_equals_one_process(koniq_root, tmp_path):
    """kill -9 of rank 1 mid-part; torchrun stops rank 0; the same command
    again completes both shards (a finished shard is not redone) and the
    merged cache equals a single-process run bit for bit."""
    model = tmp_path / "iqa-mid-vit.json"
    model.write_text(json.dumps(MID_MODEL))
    n = 24
    ref = tmp_path / "ref.h5"
    embed(load_koniq(koniq_root).head(n), EmbedConfig(encoder=EncoderConfig(model=str(model), pretrained="none"),
                                                      device="cpu", batch_size=2, workers=0, sync=False),
          ref, progress=False)
    out = tmp_path / "out" / "dist.h5"
    args = ("--dataset", "koniq", "--root", koniq_root, "--limit", n, "--model", model, "--pretrained", "none",
            "--batch-size", "2", "--workers", 0, "--out", out)
    s0, s1 = shard_path(out, 0, 2), shard_path(out, 1, 2)
    p = torchrun(*args, popen=True)
    try:
        t0 = time.monotonic()
        while _committed(s1) < 2:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() - t0 < 180, "no progress"
            time.sleep(0.02)
        pid = int(s1.with_name(s1.name + ".lock").read_text().split()[0])  # "PID iqa embed"
        os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0 and not out.exists()
    assert 2 <= _committed(s1) < n // 2
    # rank 0's part: complete it here if the kill came first (before rank 0 even created it, on a loaded
    # machine), so that the rerun must find it finished
    if not (s0.exists() and cache.read_attrs(s0).get("complete")):
        m = load_koniq(koniq_root).head(n)
        embed(rows(m, 0, n // 2), EmbedConfig(encoder=EncoderConfig(model=str(model), pretrained="none"),
                                              device="cpu", batch_size=2, workers=0, sync=False), s0,
              progress=False, extra_attrs=part_attrs(m, 0, n // 2, 0, 2))  # as rank 0 writes it
    before = s0.stat().st_mtime_ns
    r = torchrun(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{s0} is already complete" in r.stderr  # rank 0's finished part was not redone
    assert f"resuming {s1}" in r.stderr
    assert f"{n} of {n} images embedded, 0 failed" in r.stdout
    assert_same_cache(ref, out)
    assert not s0.exists() and not s1.exists() and before
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == ["dist.h5"]

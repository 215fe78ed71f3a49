"""`iqa ablate` under torchrun: 2 gloo ranks on CPU leave OUT exactly as one
process does (predictions bit for bit), resume with another number of
ranks, and split the work by whole stacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from iqa_cache.train.grid import assign_stacks

from .conftest import learnable_problem, write_feature_cache

REPO = Path(__file__).resolve().parents[1]
GRID = "method=vanilla,bmc,ranksim; fds=on,off; seed=0,1"
TRAIN = ["--epochs", "3", "--hidden", "16", "--blocks", "1", "--batch-size", "64", "--max-stack", "3",
         "--device", "cpu", "--no-progress"]


def ablate(cache, out, *, ranks: int = 1, extra: tuple = ()):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] \
        if ranks > 1 else [sys.executable]
    cmd = [*launch, "-m", "iqa_cache.cli", "ablate", "--cache", str(cache), "--out", str(out), "--grid", GRID,
           *TRAIN, *extra]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def runs(out: Path) -> dict[str, bytes]:
    return {p.name: (p / "predictions.csv").read_bytes() for p in sorted(out.iterdir()) if p.is_dir()}


def test_stacks_are_assigned_whole_balanced_and_deterministically():
    sizes = [3, 3, 2, 1, 3, 1]
    parts = assign_stacks(sizes, 2)
    assert sorted(j for p in parts for j in p) == list(range(6))  # every stack exactly once
    assert parts == assign_stacks(sizes, 2) and parts == [[0, 4, 5], [1, 2, 3]]
    assert [sum(sizes[j] for j in p) for p in parts] == [7, 6]
    assert assign_stacks(sizes, 1) == [list(range(6))] and assign_stacks([], 3) == [[], [], []]
    assert assign_stacks([2], 3) == [[0], [], []]  # more ranks than stacks: some idle


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_bit_for_bit_and_resume_with_another_count(tmp_path):
    x, y, split = learnable_problem(n=300)
    cache = write_feature_cache(tmp_path / "f.h5", x, y, split)
    one, two = tmp_path / "one", tmp_path / "two"
    ablate(cache, one)
    r = ablate(cache, two, ranks=2)
    assert r.stdout.count("Test MAE per label range") == 1  # rank 0 prints the summary, once
    a, b = runs(one), runs(two)
    assert len(a) == 12 and a == b  # every run's predictions, bit for bit
    pd.testing.assert_frame_equal(pd.read_csv(one / "summary.csv", comment="#"),
                                  pd.read_csv(two / "summary.csv", comment="#"))
    # a rank killed: some runs missing (one run half written); the rerun trains only those, on 1 rank
    import shutil

    kept = {n: (two / n / "predictions.csv").stat().st_mtime_ns for n in b}
    lost = sorted(b)[:5]
    for n in lost[:4]:
        shutil.rmtree(two / n)
    (two / lost[4] / "predictions.csv").unlink()
    (two / "summary.csv").unlink()
    r = ablate(cache, two, ranks=1)
    assert "kept 7 finished, trained 5" in r.stderr, r.stderr
    assert runs(two) == a
    assert all((two / n / "predictions.csv").stat().st_mtime_ns == t for n, t in kept.items() if n not in lost)
    assert (two / "summary.csv").is_file()


def test_streamed_ranks_equal_one_process_in_memory_bit_for_bit(tmp_path):
    """Caches larger than memory on many ranks: 2 gloo ranks streaming the
    features from the file leave the runs of one process holding them."""
    x, y, split = learnable_problem(n=300)
    cache = write_feature_cache(tmp_path / "f.h5", x, y, split)
    chunked = ("--shuffle", "chunks", "--chunk-rows", "40", "--shuffle-buffer", "2")
    ablate(cache, tmp_path / "memory", extra=chunked)
    ablate(cache, tmp_path / "streamed", ranks=2, extra=(*chunked, "--stream"))
    a, b = runs(tmp_path / "memory"), runs(tmp_path / "streamed")
    assert len(a) == 12 and a == b

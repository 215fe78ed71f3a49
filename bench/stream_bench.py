#!/usr/bin/env python3
"""Training from memory against training streamed from the HDF5 file, on a
cache several times the memory the streamed run is given: peak resident
memory (VmHWM) and seconds per epoch, each variant in a fresh process.

    python bench/stream_bench.py                        # 1,000,000 x 768 (a 3.1 GB cache), 1 GB limit
    python bench/stream_bench.py --rows 100000 --limit-mb 200

Variants (one LDS+FDS head, --shuffle chunks, the same seed and order):
in memory without a limit; in memory under the limit (expected to die);
streamed under the limit.  The limit is a memory cgroup (resident memory
and page cache together: the streamed run really reads from disk) where
this machine lets a process make one, else RLIMIT_AS above the
interpreter's own address space (resident memory only; reads may then come
from the page cache).  Before each run the file's pages are dropped from
the page cache (posix_fadvise), so epoch 1 reads from disk either way.

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make(path: Path, rows: int, dim: int, block: int = 65536) -> None:
    """A complete cache of ``rows`` learnable features, written block by block."""
    import numpy as np

    from iqa_cache import cache
    from iqa_cache.sources.datasets import Manifest, seeded_split
    from iqa_cache.sources.synth import sample_koniq_like_labels

    rng = np.random.default_rng(0)
    y = sample_koniq_like_labels(rows, rng).astype(np.float32)
    ids = np.array([f"{i:08d}.jpg" for i in range(rows)], dtype=object)
    m = Manifest(name="bench", root=Path("/nonexistent"), image_id=ids, path=ids.copy(), label=y,
                 split=np.asarray(seeded_split(rows, 0), dtype=object), label_range=(0.0, 100.0), label_name="MOS",
                 source="generated", split_source="generated")
    prov = {"model": "ViT-B-32", "model_config_json": "", "pretrained": "none", "pretrained_kind": "none",
            "pretrained_sha256": "", "init_seed": -1, "precision": "fp32", "feature": "bench", "feature_dim": dim,
            "image_size": 224, "resize_mode": "squash", "interpolation": "bicubic", "mean": [0.5] * 3,
            "std": [0.5] * 3, "exif_transpose": True, "open_clip_version": "bench", "torch_version": "bench"}
    cache.create(path, m, prov, batch_size=block)
    basis = rng.normal(size=(4, dim)).astype(np.float32)
    with cache.CacheWriter(path, sync=False) as w:
        for a in range(0, rows, block):
            t = (y[a:a + block] - 58.0) / 15.0
            x = np.stack([t, np.sin(2 * t), t ** 2 - 1, np.cos(t)], 1) @ basis
            x += rng.normal(scale=0.3, size=x.shape).astype(np.float32)
            n = len(t)
            w.commit(a, x.astype(np.float32), np.full(n, cache.OK, np.int8), [""] * n)
        w.finalize()


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child(args) -> None:
    """One variant: load, train, print one JSON line."""
    if args.cgroup:
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    import numpy as np

    import iqa_cache.train.stacked.engine as engine
    from iqa_cache import cache
    from iqa_cache.train.config import TrainConfig

    stamps = []
    record = engine.BestEpochs.record

    def timed(self, *a, **kw):  # an epoch ends where its numbers are recorded
        stamps.append(time.perf_counter())
        return record(self, *a, **kw)

    engine.BestEpochs.record = timed
    drop_page_cache(Path(args.cache))
    t0 = time.perf_counter()
    data = cache.load(args.cache, features=not args.stream)
    t_load = time.perf_counter() - t0
    cfg = TrainConfig.from_flat({"lds": True, "fds": True, "shuffle": "chunks", "epochs": args.epochs,
                                 "batch_size": args.batch_size, "hidden": args.hidden, "blocks": args.blocks,
                                 "device": "cpu"})
    t1 = time.perf_counter()
    (res,) = engine.train_stack(data, [cfg])
    t_end = time.perf_counter()
    epochs = [b - a for a, b in zip([t1] + stamps[:-1], stamps)]
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    np.save(args.pred, res.predictions["pred"].to_numpy())
    print(json.dumps({"load_s": t_load, "epoch_s": epochs, "final_s": t_end - stamps[-1], "peak_rss_mb": hwm / 1024,
                      "val_mae": res.best_val_mae}))


def _cgroup(limit_mb: int) -> Path | None:
    """A child memory cgroup of this process's own, limited to ``limit_mb``; None if not allowed."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrl, rel = line.split(":", 2)
        if "memory" in ctrl.split(","):  # cgroup v1
            base, limit_file = Path("/sys/fs/cgroup/memory") / rel.lstrip("/"), "memory.limit_in_bytes"
            break
    else:
        rel = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
        if rel is None:
            return None
        base, limit_file = Path("/sys/fs/cgroup") / rel.lstrip("/"), "memory.max"
    d = base / f"iqa-stream-bench-{os.getpid()}"
    try:
        d.mkdir()
        (d / limit_file).write_text(str(limit_mb << 20))
        return d
    except OSError:
        try:
            d.rmdir()
        except OSError:
            pass
        return None


def run_limited(cmd: list[str], *, limit_mb: int | None, cgroup: Path | None, imports: str) -> dict:
    """Run a child benchmark command under the memory limit (the cgroup when
    there is one, else RLIMIT_AS above an interpreter that imported
    ``imports``); its last stdout line is JSON.  Returns that JSON with
    ``limit`` (how it was limited), or ``failed`` (why it did not finish)."""
    preexec, how = None, "none"
    if limit_mb is not None and cgroup is not None:
        cmd = cmd + ["--cgroup", str(cgroup)]
        how = f"cgroup {limit_mb} MB"
    elif limit_mb is not None:
        base = _baseline_vm_kb(imports)

        def preexec():
            import resource

            lim = (base << 10) + (limit_mb << 20)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

        how = f"RLIMIT_AS {limit_mb} MB above {base >> 10} MB"
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec)
    out = {"limit": how}
    if p.returncode == 0:
        out.update(json.loads(p.stdout.strip().splitlines()[-1]))
    else:
        killed = p.returncode < 0 and -p.returncode == signal.SIGKILL
        err = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        out["failed"] = "killed (out of memory)" if killed else (err or f"exit {p.returncode}")[:120]
    return out


def run(args, *, stream: bool, limit_mb: int | None, cgroup: Path | None, pred: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--cache", str(args.cache), "--pred", str(pred), "--epochs",
           str(args.epochs), "--batch-size", str(args.batch_size), "--hidden", str(args.hidden), "--blocks",
           str(args.blocks)] + (["--stream"] if stream else [])
    return {"stream": stream, **run_limited(cmd, limit_mb=limit_mb, cgroup=cgroup,
                                            imports="torch, h5py, numpy, pandas, iqa_cache.train.stacked.engine, "
                                                    "iqa_cache.cache")}


def _baseline_vm_kb(imports: str) -> int:
    """The address space of an interpreter that imported what the child imports (RLIMIT_AS counts it)."""
    code = (f"import {imports}; "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmPeak:')))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--limit-mb", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where the cache is written [default: a temporary "
                                                            "folder]")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--pred", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cgroup", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import numpy as np

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        args.cache = Path(tmp) / "big.h5"
        t = time.perf_counter()
        make(args.cache, args.rows, args.dim)
        size_mb = args.cache.stat().st_size / 2 ** 20
        print(f"cache: {args.rows} x {args.dim} float32, {size_mb:.0f} MB ({time.perf_counter() - t:.0f} s to "
              f"write); limit {args.limit_mb} MB: the file is {size_mb / args.limit_mb:.2f}x the limit", flush=True)
        cg = _cgroup(args.limit_mb)
        try:
            rows = [("in memory", run(args, stream=False, limit_mb=None, cgroup=None, pred=Path(tmp) / "m.npy")),
                    ("in memory, limited", run(args, stream=False, limit_mb=args.limit_mb, cgroup=cg,
                                               pred=Path(tmp) / "ml.npy")),
                    ("streamed, limited", run(args, stream=True, limit_mb=args.limit_mb, cgroup=cg,
                                              pred=Path(tmp) / "s.npy"))]
        finally:
            if cg is not None:
                cg.rmdir()
        print(f"{'variant':<20} {'limit':<34} {'load s':>7} {'epoch 1 s':>9} {'later s':>8} {'peak RSS MB':>11}")
        for name, r in rows:
            if "failed" in r:
                print(f"{name:<20} {r['limit']:<34} {r['failed']}")
                continue
            later = r["epoch_s"][1:] or [float("nan")]
            print(f"{name:<20} {r['limit']:<34} {r['load_s']:7.1f} {r['epoch_s'][0]:9.1f} "
                  f"{sum(later) / len(later):8.1f} {r['peak_rss_mb']:11.0f}")
        m, s = rows[0][1], rows[2][1]
        summary = {"rows": args.rows, "dim": args.dim, "file_mb": size_mb, "limit_mb": args.limit_mb,
                   "variants": {n: r for n, r in rows}}
        if "failed" not in m and "failed" not in s:
            diff = float(np.abs(np.load(Path(tmp) / "m.npy") - np.load(Path(tmp) / "s.npy")).max())
            mean_m, mean_s = (sum(r["epoch_s"]) / len(r["epoch_s"]) for r in (m, s))
            summary.update(rss_ratio=s["peak_rss_mb"] / m["peak_rss_mb"], epoch_ratio=mean_s / mean_m,
                           max_pred_diff=diff)
            print(f"streamed / in memory: peak RSS {summary['rss_ratio']:.2f}x, time per epoch "
                  f"{summary['epoch_ratio']:.2f}x; predictions differ by at most {diff:.2e}")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

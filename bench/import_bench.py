#!/usr/bin/env python3
"""`iqa import` of a feature file several times the memory it is given:
peak resident memory (VmHWM) and seconds, the file streamed a block at a
time (what `iqa import` does for .npy and HDF5) against the same import
with the matrix held in memory (what it does for .npz and .parquet, and
what every format did before), each variant in a fresh process.

    python bench/import_bench.py                         # 2,000,000 x 768 float32 (.npy, 5.7 GiB), 1.5 GB limit
    python bench/import_bench.py --rows 200000 --limit-mb 300 --permute

``--permute`` stores the rows in another order than the labels CSV, with an
id array (.h5, contiguous: memory-mapped), so the cache's rows are read
scattered across the file.  The limit is a memory cgroup where this machine
lets a process make one (see bench/stream_bench.py), else RLIMIT_AS above
the interpreter's own address space.  The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stream_bench import _cgroup, drop_page_cache, run_limited  # noqa: E402


def make(tmp: Path, rows: int, dim: int, permute: bool, block: int = 65536) -> Path:
    """A feature file (.npy in the CSV's order, or .h5 with ids in another
    order) and labels.csv, written block by block."""
    import h5py
    import numpy as np
    import pandas as pd

    from iqa_cache.sources.datasets import seeded_split
    from iqa_cache.sources.synth import sample_koniq_like_labels

    rng = np.random.default_rng(0)
    ids = np.array([f"{i:08d}.jpg" for i in range(rows)])
    y = sample_koniq_like_labels(rows, rng).round(2)
    pd.DataFrame({"image_name": ids, "MOS": y, "set": seeded_split(rows, 0)}).to_csv(tmp / "labels.csv", index=False)
    perm = rng.permutation(rows) if permute else np.arange(rows)
    if permute:
        path = tmp / "features.h5"
        with h5py.File(path, "w") as f:
            d = f.create_dataset("features", shape=(rows, dim), dtype=np.float32)  # contiguous: h5py's default
            for a in range(0, rows, block):
                d[a:a + block] = rng.normal(size=(min(block, rows - a), dim)).astype(np.float32)
            f["ids"] = ids[perm].astype(object).astype(h5py.string_dtype())
    else:
        path = tmp / "features.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        for a in range(0, rows, block):
            mm[a:a + block] = rng.normal(size=(min(block, rows - a), dim)).astype(np.float32)
        mm.flush()
        del mm
    return path


def child(args) -> None:
    if args.cgroup:
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    import numpy as np

    import iqa_cache.cache.importer as importer

    if args.hold:  # the matrix read into memory first, as for .npz and .parquet
        opened = importer.open_features

        @contextlib.contextmanager
        def holding(path, cfg):
            with opened(path, cfg) as (src, ids, info):
                yield importer.FeatureSource(np.array(src.array[...]), where=src.where), ids, info  # a copy

        importer.open_features = holding
    peak_anon = [0]

    def sample() -> None:  # resident anonymous memory (VmHWM also counts pages of the memory-mapped files)
        while True:
            kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))
            peak_anon[0] = max(peak_anon[0], kb)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    drop_page_cache(Path(args.features))
    cfg = importer.ImportConfig(features=Path(args.features), labels=Path(args.labels), out=Path(args.out),
                                label_range=(0.0, 100.0), overwrite=True)
    t0 = time.perf_counter()
    s = importer.import_features(cfg)
    dt = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"import_s": dt, "peak_rss_mb": hwm / 1024, "peak_anon_mb": peak_anon[0] / 1024, "n": s.n_items}))


def run(args, features: Path, out: Path, *, hold: bool, limit_mb: int | None, cgroup: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--features", str(features), "--labels",
           str(features.parent / "labels.csv"), "--out", str(out)] + (["--hold"] if hold else [])
    return {"hold": hold, **run_limited(cmd, limit_mb=limit_mb, cgroup=cgroup,
                                        imports="h5py, numpy, pandas, iqa_cache.cache.importer")}


def same_features(a: Path, b: Path, block: int = 65536) -> bool:
    import h5py
    import numpy as np

    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        x, y = f["embeddings"], g["embeddings"]
        return x.shape == y.shape and all(np.array_equal(x[i:i + block], y[i:i + block])
                                          for i in range(0, x.shape[0], block))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--limit-mb", type=int, default=1536)
    ap.add_argument("--permute", action="store_true", help="rows in another order than the CSV (.h5 with ids)")
    ap.add_argument("--dir", type=Path, default=None, help="where the files are written [default: a temporary "
                                                            "folder]")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--cgroup", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(dir=args.dir) as t:
        tmp = Path(t)
        t0 = time.perf_counter()
        feats = make(tmp, args.rows, args.dim, args.permute)
        size_mb = feats.stat().st_size / 2 ** 20
        order = "another order than" if args.permute else "the order of"
        print(f"features: {args.rows} x {args.dim} float32 ({feats.suffix}, {order} the CSV), {size_mb:.0f} MB "
              f"({time.perf_counter() - t0:.0f} s to write); limit {args.limit_mb} MB: "
              f"the file is {size_mb / args.limit_mb:.2f}x the limit", flush=True)
        cg = _cgroup(args.limit_mb)
        try:
            rows = [("held in memory", run(args, feats, tmp / "held.h5", hold=True, limit_mb=None, cgroup=None)),
                    ("held, limited", run(args, feats, tmp / "held_l.h5", hold=True, limit_mb=args.limit_mb,
                                          cgroup=cg)),
                    ("streamed, limited", run(args, feats, tmp / "stream.h5", hold=False, limit_mb=args.limit_mb,
                                              cgroup=cg))]
        finally:
            if cg is not None:
                cg.rmdir()
        print(f"{'variant':<20} {'limit':<34} {'import s':>9} {'peak RSS MB':>11} {'peak anon MB':>12}")
        for name, r in rows:
            tail = r["failed"] if "failed" in r else \
                f"{r['import_s']:9.1f} {r['peak_rss_mb']:11.0f} {r['peak_anon_mb']:12.0f}"
            print(f"{name:<20} {r['limit']:<34} {tail}")
        summary = {"rows": args.rows, "dim": args.dim, "permute": args.permute, "file_mb": size_mb,
                   "limit_mb": args.limit_mb, "variants": dict(rows)}
        m, s = rows[0][1], rows[2][1]
        if "failed" not in m and "failed" not in s:
            summary.update(rss_ratio=s["peak_rss_mb"] / m["peak_rss_mb"],
                           anon_ratio=s["peak_anon_mb"] / m["peak_anon_mb"], time_ratio=s["import_s"] / m["import_s"],
                           same_cache=same_features(tmp / "held.h5", tmp / "stream.h5"))
            print(f"streamed / held: peak RSS {summary['rss_ratio']:.2f}x, peak anonymous memory "
                  f"{summary['anon_ratio']:.2f}x, time {summary['time_ratio']:.2f}x; "
                  f"the two caches' features are {'identical' if summary['same_cache'] else 'DIFFERENT'}")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""float32 against float16 stored features, side by side: file size, and
the time and peak resident memory of `cache.load` (which returns float32
either way), each load in a fresh process.

    python bench/dtype_bench.py              # 200,000 x 768 (a 590 MB float32 cache), about a minute
    python bench/dtype_bench.py --rows 20000

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from iqa_cache import cache
t = time.perf_counter(); d = cache.load({path!r}); s = time.perf_counter() - t
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(s, hwm, d.features.dtype, d.features.nbytes)
"""


def make(path: Path, rows: int, dim: int, dtype: str) -> None:
    import numpy as np

    import iqa_cache.cache as cache
    import iqa_cache.cache.writer as writer
    from tests.conftest import write_feature_cache

    real = writer.create

    def create(p, manifest, prov, **kw):
        return real(p, manifest, {**prov, "feature_dtype": dtype}, **kw)

    writer.create = cache.create = create
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(rows, dim)).astype(np.float32)
        y = rng.uniform(0, 100, rows).astype(np.float32)
        split = np.array(["train"] * rows, dtype=object)
        write_feature_cache(path, x, y, split)
    finally:
        writer.create = cache.create = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            p = Path(tmp) / f"{dtype}.h5"
            make(p, args.rows, args.dim, dtype)
            r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(p))], check=True,
                               capture_output=True, text=True)
            secs, rss_kb, _, nbytes = r.stdout.split()
            out[dtype] = {"file_mb": p.stat().st_size / 2**20, "load_s": float(secs),
                          "peak_rss_mb": int(rss_kb) / 1024, "features_mb": int(nbytes) / 2**20}
    print(f"{args.rows} x {args.dim} features; load = iqa_cache.cache.load (float32 in memory either way)")
    print(f"{'':<10} {'file MB':>9} {'load s':>8} {'peak RSS MB':>12} {'in memory MB':>13}")
    for k, v in out.items():
        print(f"{k:<10} {v['file_mb']:>9.1f} {v['load_s']:>8.2f} {v['peak_rss_mb']:>12.1f} {v['features_mb']:>13.1f}")
    a, b = out["float32"], out["float16"]
    print(f"float16 / float32: file {b['file_mb'] / a['file_mb']:.2f}x, load time {b['load_s'] / a['load_s']:.2f}x, "
          f"peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

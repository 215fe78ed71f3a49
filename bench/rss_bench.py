#!/usr/bin/env python3
"""Memory of stage one does not grow with the dataset.

Generates 20,000 small JPEGs (64x48, seeded) and embeds the first 2,000 and
then all 20,000 of them, each run in a fresh process, with both pipelines,
and reports each process's peak resident memory (``ru_maxrss``; the decoding
worker processes of the pil pipeline separately).  The encoder is a one-layer
image tower of width 768 (random weights): the same 768-d features as
ViT-B/32, so a cache or buffer that held every embedding in memory would
show up (20,000 x 768 float32 = 61 MB), while the compute stays negligible.

    python bench/rss_bench.py            # ~2-3 minutes on a 2-core CPU
    python bench/rss_bench.py --quick    # 200 vs 2,000 images

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDE_MODEL = {  # 768-d features, almost no compute
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 768, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    csv = root / "labels.csv"
    if csv.is_file() and len(csv.read_text().splitlines()) == n + 1:
        return csv
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:64]
    lines = ["image,label"]
    for i in range(n):
        base = rng.integers(0, 256, 3)
        a = (base + 60 * np.sin(xx[..., None] * rng.uniform(0.05, 0.5) + yy[..., None] * rng.uniform(0.05, 0.5))
             + rng.normal(0, 10, (48, 64, 3)))
        buf = io.BytesIO()
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        (root / "img" / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        lines.append(f"img/{i:06d}.jpg,{rng.uniform(0, 100):.3f}")
    csv.write_text("\n".join(lines) + "\n")
    return csv


def child(args) -> None:
    """One run in this fresh process; prints one JSON line."""
    import logging

    from iqa_cache.embed.encoder import EncoderConfig
    from iqa_cache.embed.loop import EmbedConfig, embed
    from iqa_cache.sources.datasets import load_csv

    logging.basicConfig(level=logging.WARNING)
    m = load_csv(args.root, args.root / "labels.csv", label_range=(0.0, 100.0)).head(args.n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = EmbedConfig(encoder=EncoderConfig(model=str(args.model), pretrained="none"), device="cpu",
                      batch_size=64, workers=1, pipeline=args.pipeline, sync=False)
    t0 = time.perf_counter()
    s = embed(m, cfg, args.out, progress=False)
    print(json.dumps({"n": args.n, "pipeline": args.pipeline, "n_embedded": s.n_embedded,
                      "seconds": round(time.perf_counter() - t0, 2),
                      "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "maxrss_before_embed_mb": round(rss_before / 1024, 1),
                      "workers_maxrss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                      "cache_mb": round(os.path.getsize(args.out) / 2**20, 1)}))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "iqa-rss-bench")
    ap.add_argument("--note", default="")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--pipeline", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return {}
    small, large = (200, 2000) if args.quick else (2000, 20000)
    t0 = time.perf_counter()
    make_images(args.data, large)
    print(f"{large} images of 64x48 in {args.data} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="iqa-rss-"))
    model = work / "wide768.json"
    model.write_text(json.dumps(WIDE_MODEL))
    rows = []
    for pipeline in ("pil", "tensor"):
        for n in (small, large):
            cmd = [sys.executable, __file__, "--child", "--root", str(args.data), "--n", str(n), "--pipeline",
                   pipeline, "--model", str(model), "--out", str(work / f"{pipeline}-{n}.h5")]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"child failed: {r.stderr[-2000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"  {rows[-1]}", file=sys.stderr)
    print(f"\npeak resident memory of `embed` (fresh process each), 768-d features, {small:,} vs {large:,} images"
          + (f"; {args.note}" if args.note else ""))
    print(f"{'pipeline':<10}{'images':>8}{'peak RSS MB':>13}{'before embed':>14}{'workers MB':>12}{'cache MB':>10}"
          f"{'s':>8}")
    for r in rows:
        print(f"{r['pipeline']:<10}{r['n']:>8}{r['maxrss_mb']:>13}{r['maxrss_before_embed_mb']:>14}"
              f"{r['workers_maxrss_mb']:>12}{r['cache_mb']:>10}{r['seconds']:>8}")
    growth = {}
    for pipeline in ("pil", "tensor"):
        a, b = [r for r in rows if r["pipeline"] == pipeline]
        growth[pipeline] = {"peak_rss_growth_mb": round(b["maxrss_mb"] - a["maxrss_mb"], 1),
                            "peak_rss_ratio": round(b["maxrss_mb"] / a["maxrss_mb"], 3),
                            "embeddings_if_held_mb": round((large - small) * 768 * 4 / 2**20, 1)}
        print(f"{pipeline}: {large:,} vs {small:,} images: peak RSS {growth[pipeline]['peak_rss_growth_mb']:+.1f} MB "
              f"(x{growth[pipeline]['peak_rss_ratio']}); holding the extra embeddings alone would be "
              f"+{growth[pipeline]['embeddings_if_held_mb']} MB")
    report = {"bench": "rss", "small": small, "large": large, "runs": rows, "growth": growth, "note": args.note}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

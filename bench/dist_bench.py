#!/usr/bin/env python3
"""Stage one on one process against N torchrun ranks, on the same images.

Generates --n KonIQ-like JPEGs (512x384, seeded; kept in --data for reuse)
and runs the real command twice with random ViT-B-32 weights
(``--pretrained none``: the same cost as trained ones):

  single   python -m iqa_cache.cli embed ...
  ranks    python -m torch.distributed.run --standalone --nproc-per-node N -m iqa_cache.cli embed ...

Reported: the embedding throughput each command prints (images / seconds
of the embedding loop, model loading excluded; for the ranks: all images
over the slowest rank's loop), the whole command's wall time, the ratio, and
whether the two caches hold the same features bit for bit.  The last line
printed is JSON.  On a GPU machine pass --device cuda (one GPU per rank).

    python bench/dist_bench.py                     # 128 images, 2 ranks, CPU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RATE = re.compile(r"(\d+) processed in ([\d.]+) s, ([\d.]+) images/s")


def run(cmd: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    m = RATE.search(r.stdout)
    return {"images": int(m.group(1)), "embed_s": float(m.group(2)), "images_per_s": float(m.group(3)),
            "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "iqa-dist-bench")
    ap.add_argument("--note", default="")
    a = ap.parse_args()

    from iqa_cache import cache
    from iqa_cache.sources.synth import SynthSpec, ensure_dataset

    root = a.data / f"koniq-{a.n}"
    ensure_dataset(root, SynthSpec(n=a.n, size=(512, 384), seed=11), progress=False)
    out = a.data / "out"
    out.mkdir(parents=True, exist_ok=True)
    common = ["-m", "iqa_cache.cli", "embed", "--dataset", "koniq", "--root", str(root), "--model", a.model,
              "--pretrained",
              "none", "--device", a.device, "--no-progress", "--overwrite"]
    single = run([sys.executable, *common, "--out", str(out / "single.h5")])
    ranks = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.ranks),
                 *common, "--out", str(out / "ranks.h5")])
    import numpy as np

    same = bool(np.array_equal(cache.load(out / "single.h5").features, cache.load(out / "ranks.h5").features))
    res = {"n": a.n, "ranks": a.ranks, "device": a.device, "model": a.model, "cores": os.cpu_count(),
           "load_avg_1min": round(os.getloadavg()[0], 2), "single": single, "distributed": ranks,
           "ratio_images_per_s": round(ranks["images_per_s"] / single["images_per_s"], 2),
           "ratio_wall": round(single["wall_s"] / ranks["wall_s"], 2), "bit_identical": same, "note": a.note}
    print(f"single process: {single['images_per_s']:.1f} images/s ({single['wall_s']} s wall)")
    print(f"{a.ranks} ranks:        {ranks['images_per_s']:.1f} images/s ({ranks['wall_s']} s wall); "
          f"ratio {res['ratio_images_per_s']}x; bit-identical: {same}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

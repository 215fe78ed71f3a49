"""Head-training benchmark on KonIQ-shaped cached features, three variants
side by side in one process:

  (a) reference style: a DataLoader over the features (batch 256), FDS as a
      Python loop over labels, one configuration at a time (tests/reference.py);
  (b) our single-run path: iqa_cache.train.fit.train_head, one configuration at a time;
  (c) our grid path: iqa_cache.train.stacked.train_many, K configurations in stacks.

All configurations are LDS+FDS (the most expensive kind), 7,058 / 1,000 /
2,015 features of 768 dimensions, labels drawn from KonIQ-10k's MOS
distribution (seeded).  Prints seconds per configuration, ratios, and as the
last line one JSON object.

    python bench/head_bench.py --quick                 # CPU smoke run (seconds)
    python bench/head_bench.py --device cuda           # the issue's GPU setting: 200 epochs, K = 64
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout, not an installed copy
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from iqa_cache.cache import CacheData  # noqa: E402
from iqa_cache.device import resolve_device  # noqa: E402
from iqa_cache.sources.synth import sample_koniq_like_labels  # noqa: E402
from iqa_cache.train.fit import OptimConfig, TrainConfig, train_head  # noqa: E402
from iqa_cache.train.grid import expand, parse_grid  # noqa: E402
from iqa_cache.train.imbalance import FDSConfig, LDSConfig  # noqa: E402
from iqa_cache.train.stacked import plan_stacks, train_many  # noqa: E402
from tests.reference import ref_train  # noqa: E402

SPLITS = {"train": 7058, "val": 1000, "test": 2015}
GRID = ("lds=on; fds=on; lds_kernel=gaussian,triang,laplace; fds_kernel=gaussian,laplace,triang; "
        "lds_sigma=2,1,5; fds_sigma=2,1,5; seed=0,1")


def koniq_like_features(seed: int, dim: int = 768) -> CacheData:
    """KonIQ-shaped features: a smooth function of a noisy copy of the label
    (noise 7 on the 0-100 scale, like rater noise), so the best reachable MAE
    is about KonIQ's (~5), plus feature noise."""
    rng = np.random.default_rng(seed)
    n = sum(SPLITS.values())
    y = sample_koniq_like_labels(n, rng).astype(np.float32)
    t = (y + 7.0 * rng.normal(size=n) - 58.0) / 15.0
    basis = rng.normal(size=(4, dim)) / np.sqrt(dim)
    x = np.stack([t, np.sin(2 * t), t ** 2 - 1, np.cos(t)], 1) @ basis + 0.5 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    split = np.array([s for s, k in SPLITS.items() for _ in range(k)], dtype=object)[rng.permutation(n)]
    return CacheData(path=Path("koniq-like-in-memory"), attrs={"label_range": [0.0, 100.0]},
                     features=np.ascontiguousarray(x, dtype=np.float32), label=y, split=split,
                     image_id=np.array([f"{i:05d}" for i in range(n)], dtype=object))


def configurations(k: int, epochs: int, lr: float, device: str) -> list[TrainConfig]:
    base = TrainConfig(lds=LDSConfig(enabled=True, reweight="sqrt_inv"), fds=FDSConfig(enabled=True),
                       optim=OptimConfig(lr=lr), epochs=epochs, batch_size=256, device=device)
    points = expand(parse_grid(GRID), base, (0.0, 100.0)).points
    if k > len(points):
        raise SystemExit(f"--configs {k}: the benchmark grid has {len(points)} configurations")
    return [p.config for p in points[:k]]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: 3 epochs, 4 configurations")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--epochs", type=int, help="epochs per configuration [200; 3 with --quick]")
    ap.add_argument("--configs", type=int, help="K, configurations of the grid path (c) [64; 4 with --quick]")
    ap.add_argument("--ref-configs", type=int, default=1, help="configurations run by (a) and (b) [1]")
    ap.add_argument("--max-stack", type=int, default=64, help="largest stack of (c)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic features")
    ap.add_argument("--threads", type=int, help="torch CPU threads [torch's default]; 1 avoids OpenMP stalls when "
                                                "other processes share the cores")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or (3 if args.quick else 200)
    k = args.configs or (4 if args.quick else 64)
    r = min(args.ref_configs, k)
    device = resolve_device(args.device)
    data = koniq_like_features(args.seed)
    cfgs = configurations(k, epochs, args.lr, device)
    load0 = os.getloadavg()
    print(f"machine: {machine(device)}; device {device}; load average before {load0[0]:.2f}", flush=True)
    print(f"data: {SPLITS['train']}/{SPLITS['val']}/{SPLITS['test']} x 768 features, KonIQ-like labels (seed "
          f"{args.seed}); {epochs} epochs, batch 256, LDS+FDS, head 768-512-2 blocks; (a)/(b): {r} config(s), "
          f"(c): {k} configs in {len(plan_stacks(cfgs, args.max_stack))} stack(s)", flush=True)

    # warm-up: imports (torch.optim pulls in dynamo), threads, CUDA context
    train_head(data, replace(cfgs[0], epochs=2))
    sync(device)

    res_a = []
    t = time.perf_counter()
    for c in cfgs[:r]:
        res_a.append(ref_train(data.features, data.label, data.split, epochs=c.epochs, lr=c.optim.lr,
                               lds=True, reweight=c.lds.reweight, lds_kernel=c.lds.kernel, lds_ks=c.lds.ks,
                               lds_sigma=c.lds.sigma, fds=True, fds_kernel=c.fds.kernel, fds_ks=c.fds.ks,
                               fds_sigma=c.fds.sigma, seed=c.seed, device=device))
        print(f"  (a) {len(res_a)}/{r} done", file=sys.stderr, flush=True)
    sync(device)
    sec_a = (time.perf_counter() - t) / r

    t = time.perf_counter()
    res_b = [train_head(data, c) for c in cfgs[:r]]
    sync(device)
    sec_b = (time.perf_counter() - t) / r

    t = time.perf_counter()
    res_c = dict(train_many(data, cfgs, max_stack=args.max_stack, progress=True))
    sync(device)
    total_c = time.perf_counter() - t
    sec_c = total_c / k
    load1 = os.getloadavg()

    rows = [("(a) reference style: DataLoader, per-label FDS loop", r, sec_a),
            ("(b) train_head, one run at a time", r, sec_b),
            (f"(c) stacked grid, {k} configurations", k, sec_c)]
    print("\n| variant | configs | s per config | s per config-epoch | speed-up vs (a) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, s in rows:
        print(f"| {name} | {n} | {s:.3f} | {s / epochs:.4f} | {sec_a / s:.1f}x |")
    print(f"\n(c) in all: {total_c:.2f} s for {k} configurations; (c) vs (b) per configuration: {sec_b / sec_c:.2f}x")
    diffs, agree = [], []
    for i in range(r):
        c = res_c[i]
        vb = np.array([h["val_mae"] for h in res_b[i].history])
        vc = np.array([h["val_mae"] for h in c.history]) if not isinstance(c, Exception) else np.full_like(vb, np.nan)
        d = np.abs(vb - vc)
        diffs.append(float(np.nanmax(d)) if np.isfinite(d).any() else float("nan"))
        agree.append(int(np.argmax(~(d < 1e-3))) if not (d < 1e-3).all() else len(d))
        print(f"config {i}: best val MAE (a) {res_a[i]['best_val_mae']:.4f} (its own batch order), "
              f"(b) {res_b[i].best_val_mae:.4f}, (c) {getattr(c, 'best_val_mae', float('nan')):.4f}; "
              f"(b) vs (c): val MAE within 1e-3 for {agree[-1]} of {len(d)} epochs, max difference {diffs[-1]:.2e}")
    print(f"load average after {load1[0]:.2f} (other processes share this machine's cores)")
    result = {
        "device": device, "machine": machine(device), "epochs": epochs, "k": k, "ref_configs": r,
        "n_train": SPLITS["train"], "dim": 768, "a_s_per_config": round(sec_a, 4), "b_s_per_config": round(sec_b, 4),
        "c_s_per_config": round(sec_c, 4), "c_total_s": round(total_c, 3), "speedup_b_vs_a": round(sec_a / sec_b, 2),
        "speedup_c_vs_a": round(sec_a / sec_c, 2), "speedup_c_vs_b": round(sec_b / sec_c, 2),
        "b_c_max_val_mae_diff": max(diffs), "b_c_epochs_within_1e-3": min(agree),
        "load_before": round(load0[0], 2), "load_after": round(load1[0], 2),
        "quick": bool(args.quick),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""The imbalance methods' cost, side by side in one process: for each method
a stack of K configurations (seeds) trained for a few epochs on a
10,073 x 768 KonIQ-shaped cache (7,058 training rows) at batch 256, then all methods x K seeds in
one stack (the grid ``method=...; seed=...`` as ``iqa ablate`` trains it).
Prints seconds per configuration-epoch and the ratio to vanilla; the issue's
bound is 3x vanilla for every method.  An epoch's cost is the difference
between a run of ``--epochs`` epochs and one of a single epoch (so the
per-run set-up, such as GAI's mixture fit or DenseWeight's density, is left
out; it is printed apart).  The last line is one JSON object.

    python bench/methods_bench.py                 # CPU: K = 10, 1 and 3 epochs (about 8 minutes on 2 cores)
    python bench/methods_bench.py --device cuda --epochs 20
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.head_bench import koniq_like_features, machine, sync  # noqa: E402
from iqa_cache.device import resolve_device  # noqa: E402
from iqa_cache.train.config import TrainConfig  # noqa: E402
from iqa_cache.train.methods import METHODS  # noqa: E402
from iqa_cache.train.stacked import train_stack  # noqa: E402


def configs(method: str, k: int, epochs: int, device: str) -> list[TrainConfig]:
    return [TrainConfig.from_flat({"method": method, "seed": s, "epochs": epochs, "batch_size": 256,
                                   "device": device}) for s in range(k)]


def timed(data, cfgs, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    train_stack(data, cfgs)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=10, help="seeds per method (K)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = koniq_like_features(0)
    print(f"methods bench: {len(data.label)} x {data.features.shape[1]} features, K = {args.configs} per method, "
          f"{args.epochs} epochs, batch 256, {machine(device)}")
    timed(data, configs("vanilla", 2, 1, device), device)  # warm-up
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (an epoch's cost is a difference to a 1-epoch run)")
    extra = args.epochs - 1

    def per_epoch(make) -> tuple[float, float]:
        one, many = timed(data, make(1), device), timed(data, make(args.epochs), device)
        k = len(make(1))
        return (many - one) / (k * extra), max(0.0, one - (many - one) / extra) / k

    per, setup = {}, {}
    for m in METHODS:
        per[m], setup[m] = per_epoch(lambda e, m=m: configs(m, args.configs, e, device))
    s_all, _ = per_epoch(lambda e: [c for m in METHODS for c in configs(m, args.configs, e, device)])
    everything = len(METHODS) * args.configs
    print(f"{'method':<12} {'s / config-epoch':>17} {'x vanilla':>10} {'set-up s / config':>18}")
    for m, s in per.items():
        print(f"{m:<12} {s:>17.4f} {s / per['vanilla']:>10.2f} {setup[m]:>18.3f}")
    print(f"{'all, 1 stack':<12} {s_all:>17.4f} {s_all / per['vanilla']:>10.2f}   "
          f"({everything} configurations in one stack)")
    worst = max(per, key=lambda m: per[m] / per["vanilla"])
    print(f"most expensive: {worst} at {per[worst] / per['vanilla']:.2f}x vanilla (bound: 3x)")
    print(json.dumps({"device": machine(device), "k": args.configs, "epochs": args.epochs,
                      "seconds_per_config_epoch": per, "setup_seconds_per_config": setup,
                      "all_in_one_stack": s_all}))


if __name__ == "__main__":
    main()

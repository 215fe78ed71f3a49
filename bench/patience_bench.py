"""Early stopping (``--patience``), side by side in one process: the
paper-koniq preset (200 epochs, lr 0.1) on a 10,073 x 768 KonIQ-shaped
generated cache, every method x ``--seeds`` seeds trained as ``iqa ablate``
trains the grid ``method=...; seed=...``, three ways:

  (a) no patience: every configuration trains every epoch (one stack);
  (b) ``--patience N``, one stack: each configuration stops N epochs after its
      best validation epoch, the stack when all have;
  (c) ``--patience N``, a stack per method (``--max-stack`` = seeds): a stack
      stops as soon as its method's seeds have.

Prints, per variant, the wall time and its ratio to (a), the epochs run,
and the test MAE per method (mean over the seeds) with the best epochs;
the last line is one JSON object.

    python bench/patience_bench.py                          # the full setting: 8 methods x 5 seeds, 200 epochs
    python bench/patience_bench.py --seeds 1 --epochs 60    # a fraction for a shared 2-core CPU
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.head_bench import koniq_like_features, machine, sync  # noqa: E402
from iqa_cache.device import resolve_device, set_threads  # noqa: E402
from iqa_cache.train.config import TrainConfig  # noqa: E402
from iqa_cache.train.methods import METHODS  # noqa: E402
from iqa_cache.train.stacked import train_many  # noqa: E402


def configs(seeds: int, epochs: int, patience: int | None, device: str) -> list[TrainConfig]:
    return [TrainConfig.from_flat({"method": m, "seed": s, "epochs": epochs, "patience": patience,
                                   "device": device}, preset="paper-koniq")
            for m in METHODS for s in range(seeds)]


def run(data, cfgs: list[TrainConfig], max_stack: int, device: str) -> dict:
    sync(device)
    t0 = time.perf_counter()
    results = dict(train_many(data, cfgs, max_stack=max_stack))
    sync(device)
    seconds = time.perf_counter() - t0
    per_method: dict[str, dict] = {}
    ran = []
    for i, c in enumerate(cfgs):
        r = results[i]
        m = per_method.setdefault(c.method.name, {"test_mae": [], "best_epoch": [], "diverged": 0})
        if isinstance(r, Exception):
            m["diverged"] += 1
            continue
        m["test_mae"].append(r.metrics["test"]["mae"])
        m["best_epoch"].append(r.best_epoch)
        ran.append(len(r.history))
    return {"seconds": seconds, "config_epochs": int(sum(ran)), "methods": per_method}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    set_threads(args.threads or None)
    device = resolve_device(args.device)
    data = koniq_like_features(0)
    n = len(METHODS) * args.seeds
    print(f"patience bench: {len(data.label)} x {data.features.shape[1]} features, paper-koniq, {len(METHODS)} "
          f"methods x {args.seeds} seeds = {n} configurations, {args.epochs} epochs, patience {args.patience}, "
          f"{machine(device)}")
    variants = {
        "(a) no patience, one stack": (None, 64),
        f"(b) patience {args.patience}, one stack": (args.patience, 64),
        f"(c) patience {args.patience}, a stack per method": (args.patience, args.seeds),
    }
    out = {}
    for name, (patience, max_stack) in variants.items():
        out[name] = run(data, configs(args.seeds, args.epochs, patience, device), max_stack, device)
        print(f"  {name}: {out[name]['seconds']:.1f} s", flush=True)
    base = out[next(iter(out))]["seconds"]
    print()
    print("| variant | wall time | vs (a) | configuration-epochs run |")
    print("|---|---:|---:|---:|")
    for name, r in out.items():
        print(f"| {name} | {r['seconds']:.1f} s | {base / r['seconds']:.2f}x | {r['config_epochs']:,} of "
              f"{n * args.epochs:,} |")
    print()
    print("| method | " + " | ".join(f"test MAE {k.split(')')[0]})" for k in out) + " | best epochs (a) | "
          "best epochs (b) |")
    print("|---|" + "---:|" * (len(out) + 2))
    for m in METHODS:
        cells = []
        for r in out.values():
            v = r["methods"][m]
            mae = f"{np.mean(v['test_mae']):.3f}" if v["test_mae"] else "–"
            cells.append(mae + (f" ({v['diverged']} diverged)" if v["diverged"] else ""))
        ep = [",".join(map(str, r["methods"][m]["best_epoch"])) for r in list(out.values())[:2]]
        print(f"| {m} | " + " | ".join(cells) + f" | {ep[0]} | {ep[1]} |")
    print(json.dumps({"args": vars(args), "machine": machine(device), "threads": torch.get_num_threads(),
                      "variants": out}))


if __name__ == "__main__":
    main()

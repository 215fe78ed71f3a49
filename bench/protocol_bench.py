"""The protocol's cost (docs/protocol.md): splits x {vanilla, lds, bmc, ridge}
x seeds on a 10,073 x 768 KonIQ-shaped cache, as one grid (``split=0..S-1;
method=...; seed=...``) through the stacked engine (``train_many``, as
``iqa ablate`` trains it).  Prints the wall time, the time inside the
training steps (``train_epoch``) and the share spent outside them (split
draws, loss weights, the features' row selection per split, validation,
selecting the best epoch, packaging predictions, ridge solves), then one
JSON line.

    python bench/protocol_bench.py                                  # the issue's size: 10 x 4 x 3 at 80 epochs
    python bench/protocol_bench.py --splits 2 --seeds 1 --epochs 5  # a fraction, for a shared 2-core CPU
    python bench/protocol_bench.py --splits 2 --seeds 1 --epochs 3 --per-split   # + the same heads, a stack per split
    python bench/protocol_bench.py --precision auto --patience 10                 # bf16 where fast, early stopping

``--per-split`` then trains the same heads again with one stack per split
(as before drawn splits could share a stack) and prints the ratio of the two
wall times, side by side in this process.
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

from bench.head_bench import koniq_like_features, machine, sync  # noqa: E402
from iqa_cache.device import resolve_device, resolve_precision  # noqa: E402
from iqa_cache.errors import TrainingDiverged  # noqa: E402
from iqa_cache.train.config import TrainConfig  # noqa: E402
from iqa_cache.train.stacked import engine  # noqa: E402

METHODS = ("vanilla", "lds", "bmc", "ridge")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto (docs/scaling.md)")
    ap.add_argument("--patience", type=int, default=None, help="early stopping on validation MAE [off]")
    ap.add_argument("--per-split", action="store_true", help="also train the heads with one stack per split")
    a = ap.parse_args()
    device = resolve_device(a.device)
    data = koniq_like_features(0)
    precision = resolve_precision(a.precision, device)
    cfgs = [TrainConfig.from_flat({"method": m, "split": s, "seed": k, "epochs": a.epochs, "batch_size": 256,
                                   "device": device, "precision": precision, "patience": a.patience})
            for s in range(a.splits) for m in METHODS for k in range(a.seeds)]
    inside = [0.0]
    step = engine.train_epoch

    def timed_epoch(*args, **kw):
        sync(device)
        t = time.perf_counter()
        out = step(*args, **kw)
        sync(device)
        inside[0] += time.perf_counter() - t
        return out

    engine.train_epoch = timed_epoch
    t0 = time.perf_counter()
    results = dict(engine.train_many(data, cfgs))
    sync(device)
    wall = time.perf_counter() - t0
    engine.train_epoch = step
    ridge_s = sum(r.seconds for i, r in results.items() if cfgs[i].method.name == "ridge"
                  and not isinstance(r, TrainingDiverged))
    heads = sum(1 for c in cfgs if c.method.name != "ridge")
    epochs_run = sum(len(r.history) for i, r in results.items() if cfgs[i].method.name != "ridge"
                     and not isinstance(r, TrainingDiverged))
    out = {"device": machine(device), "splits": a.splits, "seeds": a.seeds, "epochs": a.epochs,
           "precision": precision, "patience": a.patience, "configuration_epochs": epochs_run,
           "configurations": len(cfgs), "heads": heads, "ridge_runs": len(cfgs) - heads,
           "stacks": len(engine.plan_stacks(cfgs, 64)), "wall_s": round(wall, 2),
           "train_steps_s": round(inside[0], 2), "outside_share": round(1 - inside[0] / wall, 4),
           "ridge_s": round(ridge_s, 2),
           "diverged": sum(isinstance(r, TrainingDiverged) for r in results.values())}
    print(f"{out['configurations']} configurations ({heads} heads, {out['ridge_runs']} ridge) in {out['stacks']} "
          f"stacks on {out['device']}, {precision}: {epochs_run} configuration-epochs, wall {wall:.1f} s, "
          f"training steps {inside[0]:.1f} s, outside them "
          f"{100 * out['outside_share']:.1f} % (ridge solves {ridge_s:.2f} s)")
    if a.per_split:
        heads_idx = [i for i, c in enumerate(cfgs) if c.method.name != "ridge"]
        shared = engine.plan_stacks([cfgs[i] for i in heads_idx], 64)
        per_split: dict = {}
        for j in range(len(heads_idx)):
            c = cfgs[heads_idx[j]]
            per_split.setdefault((engine.stack_key(c), c.split), []).append(j)
        times = {}
        for name, stacks in (("shared", shared), ("per_split", list(per_split.values()))):
            sync(device)
            t = time.perf_counter()
            list(engine.train_many(data, [cfgs[i] for i in heads_idx], stacks=stacks))
            sync(device)
            times[name] = time.perf_counter() - t
            out[f"heads_{name}_s"] = round(times[name], 2)
            out[f"heads_{name}_stacks"] = len(stacks)
        out["per_split_over_shared"] = round(times["per_split"] / times["shared"], 3)
        print(f"heads only: splits sharing stacks {times['shared']:.1f} s ({len(shared)} stacks), a stack per "
              f"split {times['per_split']:.1f} s ({len(per_split)} stacks): ratio {out['per_split_over_shared']:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

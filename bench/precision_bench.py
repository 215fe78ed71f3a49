"""Stage two's precision and shared GEMM, side by side in one process, on
10,073 x 768 KonIQ-shaped generated features (bench/head_bench.py's):

  1. seconds per configuration-epoch of the training steps for a stack of
     K = 1, 8, 32, 64 configurations (one seed, K learning rates,
     ``--shuffle chunks``: every configuration sees the same rows in the same
     order), for fp32 / bf16 x bmm (K batched products in the first layer) /
     shared (one [B, 768] @ [768, K*H] product).  The variants run
     interleaved (repeat after repeat, each variant once per repeat, median
     kept), a few steps each, scaled to an epoch of 7,058 training rows;
  2. the test MAE of fp32 against bf16 over 5 seeds (one stack each, the
     library's engine), with the paired interval of ``iqa report --versus``
     (the report's own code on run directories written by ``write_run``),
     next to fp32 over 5 other seeds against fp32: the same interval for a
     change that is seed noise only, to read bf16's row against.

The CPU's flags (lscpu: avx512*, amx*) and torch's CPU capability head the
output; the last line is one JSON object with every number.

    python bench/precision_bench.py                                 # CPU: ~7 minutes on an idle 2-core machine
    python bench/precision_bench.py --threads 1 --note "shared"    # a machine other processes share
    python bench/precision_bench.py --quick                         # a smoke run
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/precision_bench.py --skip-mae --steps 1
                                                                    # AVX2 kernels only: bf16 is slow there
    python bench/precision_bench.py --device cuda                   # on a GPU (bench/gpu_check.sh)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout, not an installed copy
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.head_bench import koniq_like_features, sync  # noqa: E402
from iqa_cache.device import cpu_has_amx, resolve_device, resolve_precision  # noqa: E402
from iqa_cache.train.config import OptimConfig, TrainConfig  # noqa: E402
from iqa_cache.train.order import chunk_windows  # noqa: E402
from iqa_cache.train.stacked import GroupedAdam, TrainingRows, init_stack, to_device, train_epoch  # noqa: E402
from iqa_cache.train.stacked.heads import AUTOCAST_DTYPES  # noqa: E402
from iqa_cache.train.stacked.methods import StackLoss  # noqa: E402

VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]  # (precision, shared GEMM)


def cpu_flags() -> dict[str, object]:
    """What the CPU offers for these products: lscpu's model and AVX-512 /
    AMX flags, torch's capability, and the kernel-limiting variables."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            if key.strip() == "Flags":
                flags = [f for f in value.split() if f.startswith(("avx512", "amx", "avx2"))]
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": model, "flags": flags, "amx": cpu_has_amx(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "load_average": os.getloadavg()}


def stack_configs(k: int, device: str, hidden: int) -> list[TrainConfig]:
    base = TrainConfig.from_flat({"shuffle": "chunks", "device": device, "hidden": hidden})
    return [replace(base, optim=OptimConfig(lr=float(lr))) for lr in np.geomspace(1e-4, 1e-2, k)]


def time_steps(data, dev, k: int, steps: int, repeats: int, hidden: int) -> dict[str, float]:
    """Seconds per configuration-epoch of each variant at stack size ``k``
    (median over ``repeats`` interleaved timings of ``steps`` steps)."""
    cfgs = stack_configs(k, dev.device, hidden)
    head_cfg = replace(cfgs[0].head, in_dim=data.feature_dim)
    cfgs = [replace(c, head=head_cfg) for c in cfgs]

    bins = cfgs[0].bins(data.label_range)
    rows = TrainingRows.of(data, dev, cfgs, bins)
    bs = cfgs[0].batch_size
    steps_per_epoch = -(-len(rows) // bs)
    order = np.concatenate(chunk_windows(len(rows), 0, 0, cfgs[0].order.chunk_rows, cfgs[0].order.buffer))
    part = [order[:steps * bs]]
    runs = {}
    for prec, shared in VARIANTS:
        stack = init_stack(cfgs, head_cfg, dev.y_mean, dev.device, AUTOCAST_DTYPES[prec])
        stack.shared_gemm = shared
        loss = StackLoss(cfgs, data.label[dev.tr], bins, dev.device)
        runs[(prec, shared)] = (stack, GroupedAdam(stack, cfgs), loss)
    times: dict = {v: [] for v in VARIANTS}
    for rep in range(repeats + 1):  # the first round warms up
        for v in VARIANTS:
            stack, opt, loss = runs[v]
            sync(dev.device)
            t = time.perf_counter()
            train_epoch(stack, opt, rows, part, None, loss)
            sync(dev.device)
            if rep:
                times[v].append(time.perf_counter() - t)
    return {f"{p}/{'shared' if s else 'bmm'}": statistics.median(times[(p, s)]) / steps * steps_per_epoch / k
            for p, s in VARIANTS}


def mae_versus(data, device: str, epochs: int, seeds: int, hidden: int, tmp: Path) -> tuple[str, dict]:
    """fp32 and bf16 over seeds 0..seeds-1, and fp32 over as many other seeds
    (the noise reference: what another draw of seeds alone changes), written
    as runs and compared with fp32 by the report's --versus code; returns a
    table of the differences and the numbers."""
    from iqa_cache.report.compare import versus_entries
    from iqa_cache.report.loading import load_runs
    from iqa_cache.report.types import Entry
    from iqa_cache.train.runs import write_run
    from iqa_cache.train.stacked import train_stack

    groups = {"fp32": ("fp32", range(seeds)), "bf16": ("bf16", range(seeds)),
              "fp32, other seeds": ("fp32", range(seeds, 2 * seeds))}
    out, entries = {}, []
    for name, (prec, seed_list) in groups.items():
        cfgs = [TrainConfig.from_flat({"seed": s, "epochs": epochs, "lr": 1e-3, "hidden": hidden, "device": device,
                                       "precision": prec}) for s in seed_list]
        t = time.perf_counter()
        results = train_stack(data, cfgs)
        out[name] = {"test_mae": [r.metrics["test"]["mae"] for r in results], "seconds": time.perf_counter() - t}
        paths = [write_run(tmp / f"{prec}_s{s}", r, data.attrs, tmp / "cache.h5") for s, r in zip(seed_list, results)]
        runs, _ = load_runs(paths)
        entries.append(Entry(name=f"{name} ({len(runs)} seeds)", runs=runs, kind="seeds"))
    v = versus_entries(entries, str(entries[0].runs[0].path), split="test")
    lines = ["| vs " + v.base + " | " + " | ".join(v.columns) + " |", "|---|" + "---:|" * len(v.columns)]
    for name, cells in v.rows:
        lines.append(f"| {name} | " + " | ".join(
            "{0:.{3}f} [{1:.{3}f}, {2:.{3}f}] ".format(c.diff.estimate, c.diff.low, c.diff.high,
                                                       3 if col in ("SRCC", "PLCC") else 2)
            + f"{c.agree}/{c.seeds}" for col, c in zip(v.columns, cells)) + " |")
        out[f"versus {name}"] = {col: {"estimate": c.diff.estimate, "low": c.diff.low, "high": c.diff.high,
                                       "seeds_agreeing": c.agree, "seeds": c.seeds} for col, c in zip(v.columns, cells)}
    return "\n".join(lines), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stacks", default="1,8,32,64", help="stack sizes K")
    ap.add_argument("--steps", type=int, default=2, help="training steps per timing")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timings per variant (median kept)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the MAE comparison")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--skip-mae", action="store_true")
    ap.add_argument("--skip-timing", action="store_true", help="only the test MAE comparison")
    ap.add_argument("--quick", action="store_true", help="K = 1, 8; 1 step; 2 epochs, 2 seeds")
    ap.add_argument("--threads", type=int, help="torch CPU threads [torch's default]; 1 avoids OpenMP stalls when "
                    "other processes hold the cores")
    ap.add_argument("--note", default="", help="printed with the numbers, e.g. 'machine shared with 4 others'")
    args = ap.parse_args()
    if args.quick:
        args.stacks, args.steps, args.repeats, args.epochs, args.seeds = "1,8", 1, 1, 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = cpu_flags()
    print(f"CPU: {info['cpu']}; flags: {' '.join(info['flags'])}; AMX: {info['amx']}")
    print(f"torch {info['torch']}, CPU capability {info['torch_cpu_capability']}, {info['threads']} threads; "
          f"ATEN_CPU_CAPABILITY={info['ATEN_CPU_CAPABILITY'] or '-'} ONEDNN_MAX_CPU_ISA="
          f"{info['ONEDNN_MAX_CPU_ISA'] or '-'}; load average {info['load_average'][0]:.1f}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else ""))
    print(f"--precision auto resolves to {resolve_precision('auto', device)} here")
    if args.note:
        print(f"note: {args.note}")
    data = koniq_like_features(0)
    dev = to_device(data, device)
    result: dict = {"machine": info, "device": device, "note": args.note, "steps": args.steps,
                    "repeats": args.repeats, "hidden": args.hidden, "s_per_config_epoch": {}}
    print(f"\ns per configuration-epoch (training steps, batch 256, {len(dev.tr)} training rows, hidden "
          f"{args.hidden}; median of {args.repeats} interleaved timings of {args.steps} steps)")
    names = [f"{p}/{'shared' if s else 'bmm'}" for p, s in VARIANTS]
    print(f"{'K':>4} " + " ".join(f"{n:>12}" for n in names) + "   speed-up vs fp32/bmm: "
          + " ".join(f"{n:>11}" for n in names[1:]))
    for k in ([] if args.skip_timing else (int(s) for s in args.stacks.split(","))):
        t = time_steps(data, dev, k, args.steps, args.repeats, args.hidden)
        result["s_per_config_epoch"][k] = t
        base = t["fp32/bmm"]
        print(f"{k:>4} " + " ".join(f"{t[n]:>12.4f}" for n in names) + "   " + " " * 21
              + " ".join(f"{base / t[n]:>10.2f}x" for n in names[1:]), flush=True)
    if not args.skip_mae:
        with tempfile.TemporaryDirectory() as tmp:
            text, mae = mae_versus(data, device, args.epochs, args.seeds, args.hidden, Path(tmp))
        result["mae"] = mae
        print(f"\ntest MAE, {args.seeds} seeds x {args.epochs} epochs (one stack per group, --shuffle rows):")
        for name in ("fp32", "bf16", "fp32, other seeds"):
            v = mae[name]["test_mae"]
            print(f"  {name:>17}: " + " ".join(f"{x:.4f}" for x in v) + f"   mean {np.mean(v):.4f} sd "
                  f"{np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}   ({mae[name]['seconds']:.1f} s)")
        print("\nMAE(row) - MAE(fp32) of the seed-averaged predictions, 95 % paired bootstrap over the test "
              "images, seeds agreeing (iqa report --versus); the 'other seeds' row is the noise of drawing "
              "seeds alone:\n" + text)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()

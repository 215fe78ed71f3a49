"""RankSim's per-step cost with the official row pick against the same
regulariser over rows already picked, side by side in one process: one
forward and backward of a stack of K configurations at batch 256 (the
head's 512-d last hidden layer), labels continuous (KonIQ-like MOS: every
row kept) and discrete (0-4 integers: five rows kept).  The pick adds two
sorts of [K, B] and K draws of B random numbers per step, and a gather of
the features where a batch repeats a label.  Also
times GAI's mixture fit (scikit-learn, once per run) on 7,058 labels.

    python bench/ranksim_bench.py            # K = 10, 30 steps each
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from iqa_cache.train.priors import fit_gmm  # noqa: E402
from iqa_cache.train.stacked.methods import pick_rows, ranksim_kept, ranksim_loss  # noqa: E402
from tests.conftest import koniq_like_labels  # noqa: E402


def interleaved(fns, steps: int) -> list[float]:
    """Median seconds of each of ``fns``, called in turn (so a busy machine slows all alike)."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(steps):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    k, b, h = args.configs, args.batch, 512
    g = torch.Generator().manual_seed(0)
    z = torch.randn(k, b, h, generator=g).relu().requires_grad_(True)
    lam = torch.full((k,), 2.0)
    print(f"ranksim bench: K = {k}, batch {b}, {h}-d features, median of {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'labels':<12} {'picked s':>10} {'pre-picked s':>13} {'ratio':>7}")
    for name, target in (("continuous", torch.from_numpy(koniq_like_labels(b * k, seed=1).reshape(k, b))),
                         ("0-4 integer", torch.randint(0, 5, (k, b), generator=g).float())):
        keys = torch.rand(k, b, generator=g)
        perm, sel = pick_rows(target, keys)
        zp, tp = z.detach().gather(1, perm.unsqueeze(2).expand_as(z)).requires_grad_(True), target.gather(1, perm)

        def picked():
            ks = torch.stack([torch.rand(b) for _ in range(k)])  # as StackLoss draws them
            torch.autograd.grad(ranksim_loss(z, target, target, lam, ks).sum(), z)

        def pre_picked():
            torch.autograd.grad(ranksim_kept(zp, tp, sel, lam).sum(), zp)

        a, c = interleaved([picked, pre_picked], args.steps)
        print(f"{name:<12} {a:>10.4f} {c:>13.4f} {a / c:>7.3f}")
    labels = koniq_like_labels(7058, seed=2).astype(np.float32)
    t0 = time.perf_counter()
    fit_gmm(labels, 8)
    t1 = time.perf_counter()
    fit_gmm(labels, 8)
    t2 = time.perf_counter()
    print(f"GAI mixture fit (scikit-learn, K = 8, 7,058 labels, once per stack): {t2 - t1:.3f} s "
          f"({t1 - t0:.3f} s the first time, importing scikit-learn)")


if __name__ == "__main__":
    main()

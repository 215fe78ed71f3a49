#!/usr/bin/env python3
"""Reading a grid with many values of one key: the duplicate check.

A grid key's values are checked for duplicates before the grid is counted
(issue 30: a grid is refused above MAX_GRID_CONFIGS before it is expanded).
The check used to compare each value with all before it (``v in
values[:i]``: quadratic, 149 s for ``seed=0..99999``); it now keeps a set.
This script times both checks side by side in one process on the same
values, and the whole ``parse_grid`` of this checkout:

    python bench/grid_bench.py --n 20000

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import time

from iqa_cache.train.grid.spec import format_value, parse_grid, parse_value


def pairwise(values: tuple) -> list[str]:
    """The former check: each value against every value before it."""
    return [format_value(v) for i, v in enumerate(values) if v in values[:i]]


def with_set(values: tuple) -> list[str]:
    """The check parse_grid now makes."""
    given: set = set()
    dup = []
    for v in values:
        if v in given:
            dup.append(format_value(v))
        given.add(v)
    return dup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="seeds in the grid (0..n-1)")
    args = ap.parse_args()
    values = tuple(parse_value("seed", str(i)) for i in range(args.n))
    out = {"n": args.n}
    for name, fn in (("pairwise", pairwise), ("set", with_set)):
        t = time.perf_counter()
        assert fn(values) == []
        out[f"{name}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    parse_grid(f"seed=0..{args.n - 1}")
    out["parse_grid_s"] = time.perf_counter() - t
    out["pairwise_over_set"] = out["pairwise_s"] / max(out["set_s"], 1e-9)
    print(f"{'check':<12}{'seconds':>10}")
    for name in ("pairwise", "set", "parse_grid"):
        print(f"{name:<12}{out[name + '_s']:>10.3f}")
    print(f"pairwise / set: {out['pairwise_over_set']:.0f}x  ({args.n:,} seed values)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How long the `iqa` commands take to start, side by side with an older checkout.

Most of a short command's wall time is imports (torch alone is about a second
warm, open_clip several cold).  This script runs, interleaved and repeated:

  help    iqa --help
  report  iqa report RUN              (a finished run)
  train   iqa train-head --epochs 1   (a 40-image cache, the fixtures' size)

for this checkout and, with ``--before DIR``, for an older checkout of the
project (e.g. ``git worktree add /tmp/before c911763``), and prints the median
wall seconds of each, the ratio before/after, and which heavy libraries each
command imported (from ``python -X importtime``).  Both checkouts run with
this interpreter; each is put first on PYTHONPATH and run as ``python -m
<its cli package>`` (``cli`` before the CLI moved into ``iqa_cache.cli``).
Times are warm (files in the page cache): run ``--repeat`` >= 3 and read the
medians; the first, cold start of a fresh machine is slower for both.

    python bench/cli_bench.py --before /tmp/before --repeat 5

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "timm", "h5py", "pandas", "scipy", "matplotlib")


def cli_module(checkout: Path) -> str:
    return "iqa_cache.cli" if (checkout / "iqa_cache" / "cli" / "__main__.py").exists() else "cli"


def command(checkout: Path, args: list[str], importtime: bool = False) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    py = [sys.executable] + (["-X", "importtime"] if importtime else [])
    return py + ["-m", cli_module(checkout), *args], env


def run(checkout: Path, args: list[str], cwd: Path) -> float:
    cmd, env = command(checkout, args)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return dt


def heavy_imports(checkout: Path, args: list[str], cwd: Path) -> list[str]:
    cmd, env = command(checkout, args, importtime=True)
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    names = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
             if line.startswith("import time:")}
    return [m for m in HEAVY if m in names]


def make_fixture(work: Path) -> tuple[Path, Path]:
    """A 40-image KonIQ-layout dataset, its cache (random ViT-B-32 weights:
    embedding is not what is timed) and one finished run, made with this checkout."""
    sys.path.insert(0, str(REPO))
    from iqa_cache.sources.synth import SynthSpec, make_dataset

    root = work / "koniq"
    make_dataset(root, SynthSpec(n=40, size=(512, 384), seed=3))
    cache, run_dir = work / "c.h5", work / "run"
    for args in (["embed", "--dataset", "koniq", "--root", str(root), "--pretrained", "none", "--out", str(cache),
                  "--no-progress", "--device", "cpu"],
                 ["train-head", "--cache", str(cache), "--epochs", "2", "--out", str(run_dir), "--no-progress"]):
        cmd, env = command(REPO, args)
        subprocess.run(cmd, env=env, cwd=work, check=True, capture_output=True)
    return cache, run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="an older checkout of the project to compare with")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iqa-cli-bench-") as tmp:
        work = Path(tmp)
        cache, run_dir = make_fixture(work)
        variants = {"after": REPO} | ({"before": a.before.resolve()} if a.before else {})
        cases = {
            "help": lambda v: ["--help"],
            "report": lambda v: ["report", str(run_dir)],
            "train": lambda v: ["train-head", "--cache", str(cache), "--epochs", "1", "--out",
                                str(work / f"t_{v}"), "--overwrite", "--no-progress"],
        }
        times: dict[str, dict[str, list[float]]] = {c: {v: [] for v in variants} for c in cases}
        for name, checkout in variants.items():  # warm-up: page cache, .pyc files
            for case in cases.values():
                run(checkout, case(name), work)
        for _ in range(a.repeat):
            for c, case in cases.items():
                for name, checkout in variants.items():
                    times[c][name].append(run(checkout, case(name), work))
        imports = {c: {name: heavy_imports(checkout, case(name), work) for name, checkout in variants.items()}
                   for c, case in cases.items()}
    med = {c: {v: statistics.median(ts) for v, ts in per.items()} for c, per in times.items()}
    print(f"{'command':<8} {'before s':>9} {'after s':>8} {'ratio':>6}  heavy imports (before -> after)")
    for c in cases:
        b, af = med[c].get("before"), med[c]["after"]
        ratio = f"{b / af:5.1f}x" if b else "   - "
        before_imp = ",".join(imports[c].get("before", [])) or "-"
        after_imp = ",".join(imports[c]["after"]) or "-"
        print(f"{c:<8} {b if b else float('nan'):9.2f} {af:8.2f} {ratio:>6}  {before_imp} -> {after_imp}")
    print(json.dumps({"median_s": med, "all_s": times, "heavy_imports": imports, "repeat": a.repeat,
                      "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()

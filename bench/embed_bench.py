#!/usr/bin/env python3
"""Stage one, side by side: how fast the same images become features.

Generates N KonIQ-sized (1024x768) JPEGs with ``iqa_cache.sources.synth`` (seeded,
kept in --data for reuse) and runs, in this one process, on the same images:

  a  one image at a time, fp32: PIL open + OpenCLIP transform + a batch-1
     forward (a typical research script); on a subset (--a-images)
  a-1thread  the same with one intra-op thread (CPU only, informational: batch-1
     forwards with several OpenMP threads slow down several-fold when another
     process takes a core; this one does not)
  b  a DataLoader with one PIL worker process per core and fp32 batches of 64
  c  ours on the CPU: `embed(device=cpu)`, the pil pipeline (the default there)
  c-tensor   ours on the CPU with the tensor pipeline (informational)
  c-draft    ours on the CPU with Pillow draft decoding (opt-in; fidelity shown)
  d-fp32 / d-bf16 / d-fp16   ours on the GPU (tensor pipeline: threads + nvJPEG),
     when CUDA is present

For every variant: images/s, the ratios to (a) and (b), and the fidelity of
its features against the reference (OpenCLIP's own PIL preprocessing, fp32,
computed on the CPU for the first --fidelity-images images): the minimum
cosine similarity over those images.  ``ours`` times the embedding loop
(reading, decoding, encoding, writing the HDF5 cache) without model loading,
as (a) and (b) are timed without it.  Encoder weights are random
(``--pretrained none``): the same cost as trained ones.

The last line printed is JSON with every figure.

    python bench/embed_bench.py --quick            # CPU smoke run, ~2 minutes on 2 cores
    python bench/embed_bench.py --n 4000           # on a GPU machine (see bench/gpu_check.sh)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iqa_cache import cache  # noqa: E402
from iqa_cache.embed.encoder import (
    EncoderConfig,
    PreprocessConfig,
    build_transform,
    load_encoder,
    preprocess_for,
    resolve_model_name,
    resolve_weights,
)
from iqa_cache.embed.loop import EmbedConfig, embed  # noqa: E402
from iqa_cache.sources.datasets import Manifest, load_csv  # noqa: E402

KONIQ_SIZE = (1024, 768)


# --------------------------------------------------------------------- data

def _make_part(args: tuple[str, int, int]) -> None:
    from iqa_cache.sources.synth import SynthSpec, ensure_dataset

    root, n, seed = args
    ensure_dataset(root, SynthSpec(n=n, size=KONIQ_SIZE, seed=seed, layout="csv"))


def make_images(data: Path, n: int, seed: int, procs: int) -> Manifest:
    """N seeded KonIQ-sized JPEGs in parts of 250 (generated in parallel,
    reused when already there) and one CSV listing them."""
    part = 250
    jobs = [(str(data / f"part{k:03d}"), min(part, n - k * part), seed + k) for k in range((n + part - 1) // part)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, procs)) as ex:
        list(ex.map(_make_part, jobs))
    lines = ["image,label,split"]
    for root, _, _ in jobs:
        for row in (Path(root) / "labels.csv").read_text().splitlines()[1:]:
            name, label, split = row.split(",")
            lines.append(f"{Path(root).name}/{name},{label},{split}")
    (data / "all.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    log(f"{n} images of {KONIQ_SIZE[0]}x{KONIQ_SIZE[1]} ready in {data} ({time.perf_counter() - t0:.1f} s)")
    return load_csv(data, data / "all.csv", label_range=(0.0, 100.0))


# ----------------------------------------------------------------- variants

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one_at_a_time(m: Manifest, n: int, model: str, device: str) -> tuple[float, np.ndarray]:
    """(a): what a typical research script does."""
    from PIL import Image

    name, _ = resolve_model_name(model)
    pre = preprocess_for(name, resolve_weights(name, "none"), "squash")
    enc = load_encoder(EncoderConfig(model=model, pretrained="none", preprocess=pre), device)
    tf = build_transform(pre)
    feats = []
    with torch.no_grad():
        x = tf(Image.open(m.abspath(0)).convert("RGB"))[None].to(device)
        enc.visual(x)  # warm-up (kernels, allocator)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(n):
            x = tf(Image.open(m.abspath(i)).convert("RGB"))[None].to(device)
            feats.append(enc.visual(x).cpu().numpy()[0])
        _sync(device)
        t = time.perf_counter() - t0
    return t, np.stack(feats)


class _Folder(torch.utils.data.Dataset):
    def __init__(self, m: Manifest, n: int, tf):
        self.m, self.n, self.tf = m, n, tf

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from PIL import Image

        return self.tf(Image.open(self.m.abspath(i)).convert("RGB"))


def dataloader(m: Manifest, n: int, model: str, device: str, workers: int, batch: int = 64
               ) -> tuple[float, np.ndarray]:
    """(b): the usual recipe, one PIL worker process per core, fp32 batches."""
    name, _ = resolve_model_name(model)
    pre = preprocess_for(name, resolve_weights(name, "none"), "squash")
    enc = load_encoder(EncoderConfig(model=model, pretrained="none", preprocess=pre), device)
    loader = torch.utils.data.DataLoader(_Folder(m, n, build_transform(pre)), batch_size=batch, num_workers=workers,
                                         pin_memory=device.startswith("cuda"))
    feats = []
    with torch.no_grad():
        enc.visual(torch.zeros(2, 3, pre.image_size, pre.image_size, device=device))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for x in loader:
            feats.append(enc.visual(x.to(device, non_blocking=True)).cpu().numpy())
        _sync(device)
        t = time.perf_counter() - t0
    return t, np.concatenate(feats)


def ours(m: Manifest, n: int, model: str, device: str, out: Path, **kw) -> tuple[float, np.ndarray, dict]:
    """(c)/(d): `embed()` into a fresh cache; the embedding loop's time."""
    precision = kw.pop("precision", "fp32")
    cfg = EmbedConfig(encoder=EncoderConfig(model=model, pretrained="none", precision=precision,
                                            preprocess=PreprocessConfig(resize_mode="squash")),
                      device=device, overwrite=True, **kw)
    s = embed(m.head(n), cfg, out, progress=False)
    feats = cache.load(out).features
    out.unlink()
    return s.embed_seconds, feats, {"routes": s.routes, "pipeline": s.pipeline, "batch_size": s.attrs["batch_size"]}


def reference(m: Manifest, n: int, model: str) -> np.ndarray:
    """OpenCLIP's own PIL preprocessing, fp32, on the CPU: the fidelity reference."""
    from PIL import Image

    name, _ = resolve_model_name(model)
    pre = preprocess_for(name, resolve_weights(name, "none"), "squash")
    enc = load_encoder(EncoderConfig(model=model, pretrained="none", preprocess=pre), "cpu")
    tf = build_transform(pre)
    out = []
    with torch.no_grad():
        for k in range(0, n, 16):
            x = torch.stack([tf(Image.open(m.abspath(i)).convert("RGB")) for i in range(k, min(n, k + 16))])
            out.append(enc.visual(x).numpy())
    return np.concatenate(out)


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    k = min(len(a), len(b))
    a, b = a[:k].astype(np.float64), b[:k].astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


# -------------------------------------------------------------------- main

def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__}
    import open_clip
    import PIL
    import torchvision

    info.update(torchvision=torchvision.__version__, open_clip=open_clip.__version__, pillow=PIL.__version__,
                torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="images (default 2000 on a GPU, 256 on a CPU, 48 quick)")
    ap.add_argument("--quick", action="store_true", help="CPU-only smoke run on a few images")
    ap.add_argument("--a-images", type=int, default=None, help="images for (a) (default min(n, 200 GPU / 32 CPU))")
    ap.add_argument("--cpu-images", type=int, default=None,
                    help="images for the CPU variants on a GPU machine (default min(n, 512))")
    ap.add_argument("--fidelity-images", type=int, default=64, help="images compared with the reference")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "iqa-embed-bench",
                    help="where the generated JPEGs are kept (reused by later runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="a,a-1thread,b,c,c-tensor,c-draft,d-fp32,d-bf16,d-fp16")
    ap.add_argument("--note", default="", help="free text recorded in the JSON (e.g. 'machine shared')")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    cuda = torch.cuda.is_available() and not args.quick
    cores = os.cpu_count() or 1
    n = args.n or (48 if args.quick else 2000 if cuda else 256)
    n_a = min(n, args.a_images or (8 if args.quick else 200 if cuda else 32))
    n_cpu = min(n, args.cpu_images or (512 if cuda else n))
    n_fid = min(n, args.fidelity_images, n_a)
    want = set(args.variants.split(","))
    if not cuda:
        want = {v for v in want if not v.startswith("d")}
    else:
        want.discard("a-1thread")
    dev_ab = "cuda" if cuda else "cpu"
    info = machine()
    log(f"machine: {info}")
    m = make_images(args.data, n, args.seed, min(cores, 16))

    out_dir = Path(tempfile.mkdtemp(prefix="iqa-bench-"))
    results: dict[str, dict] = {}
    log(f"reference features (PIL + OpenCLIP transform, fp32, CPU) for {n_fid} images")
    ref = reference(m, n_fid, args.model)

    def record(name, images, seconds, feats, **extra):
        results[name] = {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2),
                         "min_cos_vs_reference": round(min_cos(feats, ref), 6), **extra}
        log(f"  {name}: {images} images in {seconds:.2f} s = {images / seconds:.1f} images/s, "
            f"min cos {results[name]['min_cos_vs_reference']:.6f}")

    if "a" in want:
        log(f"(a) one image at a time, fp32, {dev_ab}: {n_a} images")
        t, f = one_at_a_time(m, n_a, args.model, dev_ab)
        record("a_one_at_a_time", n_a, t, f, device=dev_ab)
    if "a-1thread" in want:
        log(f"(a-1thread) one image at a time, fp32, one thread, cpu: {n_a} images")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t, f = one_at_a_time(m, n_a, args.model, "cpu")
        finally:
            torch.set_num_threads(threads)
        record("a_one_at_a_time_1thread", n_a, t, f, device="cpu")
    n_b = n if cuda else n_cpu
    if "b" in want:
        log(f"(b) DataLoader, {cores} PIL worker processes, fp32 batches of 64, {dev_ab}: {n_b} images")
        t, f = dataloader(m, n_b, args.model, dev_ab, workers=cores)
        record("b_dataloader", n_b, t, f, device=dev_ab, workers=cores)
    for name, key, kw in (("c_ours_cpu", "c", {"pipeline": "pil"}),
                          ("c_ours_cpu_tensor", "c-tensor", {"pipeline": "tensor"}),
                          ("c_ours_cpu_draft", "c-draft", {"pipeline": "pil", "draft": True})):
        if key in want:
            log(f"({key}) ours on the CPU, {kw}: {n_cpu} images")
            t, f, extra = ours(m, n_cpu, args.model, "cpu", out_dir / f"{key}.h5", **kw)
            record(name, n_cpu, t, f, device="cpu", **extra)
    if cuda:
        d_variants = [v for v in ("d-fp32", "d-bf16", "d-fp16") if v in want]
        if d_variants:
            log("warm-up of the GPU path (nvJPEG handle, kernels)")
            ours(m, min(n, 256), args.model, "cuda", out_dir / "warmup.h5", pipeline="tensor")
        for key in d_variants:
            precision = key.split("-")[1]
            log(f"({key}) ours on the GPU, tensor pipeline, {precision}: {n} images")
            t, f, extra = ours(m, n, args.model, "cuda", out_dir / f"{key}.h5", pipeline="tensor",
                               precision=precision)
            record(f"d_ours_gpu_{precision}", n, t, f, device="cuda", precision=precision, **extra)

    a = results.get("a_one_at_a_time", {}).get("images_per_s")
    b = results.get("b_dataloader", {}).get("images_per_s")
    for r in results.values():
        r["x_a"] = round(r["images_per_s"] / a, 2) if a else None
        r["x_b"] = round(r["images_per_s"] / b, 2) if b else None

    print(f"\nstage one on {n} KonIQ-sized JPEGs ({KONIQ_SIZE[0]}x{KONIQ_SIZE[1]}), {args.model} (random weights)")
    print(f"machine: {info['cpu']}, {info['cores']} cores" + (f", {info['gpu']}" if "gpu" in info else ", no GPU")
          + (f"; {args.note}" if args.note else ""))
    print(f"{'variant':<24}{'images':>8}{'s':>9}{'images/s':>11}{'x (a)':>8}{'x (b)':>8}{'min cos':>11}")
    for name, r in results.items():
        xa = f"{r['x_a']:.2f}" if r["x_a"] else "-"
        xb = f"{r['x_b']:.2f}" if r["x_b"] else "-"
        print(f"{name:<24}{r['images']:>8}{r['seconds']:>9.2f}{r['images_per_s']:>11.1f}{xa:>8}{xb:>8}"
              f"{r['min_cos_vs_reference']:>11.6f}")
    targets = {}
    if "c_ours_cpu" in results and a:
        targets["cpu_path_x_a>=1.5"] = results["c_ours_cpu"]["x_a"] >= 1.5
        a1 = results.get("a_one_at_a_time_1thread", {}).get("images_per_s")
        if a1:
            targets["cpu_path_x_a_1thread>=1.5"] = results["c_ours_cpu"]["images_per_s"] / a1 >= 1.5
    gpu = [r for k, r in results.items() if k.startswith("d_")]
    if gpu:
        best = max(gpu, key=lambda r: r["images_per_s"])
        targets.update({"gpu_images_per_s>=2000": best["images_per_s"] >= 2000,
                        "gpu_x_a>=50": bool(best["x_a"] and best["x_a"] >= 50),
                        "gpu_x_b>=5": bool(best["x_b"] and best["x_b"] >= 5)})
        for k, r in results.items():
            if k.startswith("d_"):
                targets[f"{k}_min_cos>=0.999"] = r["min_cos_vs_reference"] >= 0.999
    print("targets: " + (", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()) or "none"))
    info["load_avg_at_end"] = os.getloadavg()[0]
    report = {"bench": "embed", "n_images": n, "image_size": list(KONIQ_SIZE), "model": args.model,
              "weights": "random (--pretrained none)", "fidelity_images": n_fid, "machine": info, "note": args.note,
              "variants": results, "targets": targets}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

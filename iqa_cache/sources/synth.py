"""Synthetic IQA datasets in the exact on-disk form of real ones.

Scenes are drawn procedurally (sky gradient, ground, shapes, textures), then
degraded by known distortions: Gaussian blur, sensor noise, JPEG compression
and contrast loss.  The quality label is a fixed function of how strong the
applied distortions are, so it is *learnable from the pixels*.  Target
qualities are drawn from KonIQ-10k's MOS histogram, so the label distribution
has KonIQ's shape: most images between 40 and 80, rare very low and very high
ones.  With ``test_per_range`` the test split is instead balanced over the
label ranges (as the DIR benchmarks' test sets are), so that a per-range
table has enough test images in the rare ranges to say something.

Used by ``iqa demo``, the tests and the benchmarks; never by real datasets.
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .datasets import KONIQ_SETS_CSV, seeded_split

log = logging.getLogger(__name__)

# KonIQ-10k MOS histogram, 20 bins of width 5 over [0, 100] (all 10,073 images).
KONIQ_MOS_HIST = np.array([5, 20, 53, 105, 174, 252, 349, 414, 549, 703,
                           780, 1049, 1334, 1525, 1630, 919, 200, 12, 0, 0], dtype=np.float64)
MAX_QUALITY = 90.0  # an undistorted synthetic scene; KonIQ's best images score ~88
DISTORTIONS = ("blur", "noise", "jpeg", "contrast")


def sample_koniq_like_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels on 0-100 following KonIQ-10k's MOS histogram."""
    p = KONIQ_MOS_HIST / KONIQ_MOS_HIST.sum()
    b = rng.choice(len(p), size=n, p=p)
    return (b + rng.random(n)) * (100.0 / len(p))


def _draw_scene(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top = rng.uniform(0, 255, 3).astype(np.float32)
    bottom = rng.uniform(0, 255, 3).astype(np.float32)
    arr = np.broadcast_to(top * (1 - yy) + bottom * yy, (h, w, 3)).copy()
    # textured ground
    horizon = int(h * rng.uniform(0.4, 0.75))
    xx = np.arange(w, dtype=np.float32)[None, :]
    fy, fx = rng.uniform(0.02, 0.3, 2)
    tex = 0.5 + 0.5 * np.sin(fx * xx + fy * np.arange(h - horizon, dtype=np.float32)[:, None] * 3.0)
    ground = rng.uniform(30, 220, 3).astype(np.float32)
    arr[horizon:] = ground * (0.6 + 0.4 * tex[..., None])
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.1, 1.0) * w, rng.uniform(-0.1, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.45) * w, y0 + rng.uniform(0.05, 0.45) * h
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=color, outline=(0, 0, 0), width=2)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=color, outline=(255, 255, 255), width=2)
        else:
            pts = [(float(x0 + rng.uniform(0, 0.4) * w), float(y0 + rng.uniform(0, 0.4) * h)) for _ in range(3)]
            draw.polygon(pts, fill=color)
    # fine detail: stripes and dots, which blur and noise visibly destroy
    for _ in range(int(rng.integers(20, 60))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(1, 4)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def _split_degradation(total: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """Split a total degradation D into k per-distortion strengths d_i with
    1 - prod(1 - d_i) = D."""
    share = rng.dirichlet(np.ones(k))
    keep = (1.0 - total) ** share  # prod(keep) = 1 - D
    return 1.0 - keep


def distort(img: Image.Image, strengths: dict[str, float], rng: np.random.Generator) -> tuple[Image.Image, int]:
    """Apply the distortions at the given strengths (0 = none, 1 = worst).
    Returns the image and the JPEG quality to save it with."""
    s = strengths
    if s.get("blur", 0) > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.2 + 7.0 * s["blur"]))
    if s.get("contrast", 0) > 0:
        a = np.asarray(img, dtype=np.float32)
        mean = a.mean(axis=(0, 1), keepdims=True)
        a = mean + (a - mean) * (1.0 - 0.85 * s["contrast"])
        img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
    if s.get("noise", 0) > 0:
        a = np.asarray(img, dtype=np.float32)
        a = a + rng.normal(0.0, 70.0 * s["noise"], a.shape).astype(np.float32)
        img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
    quality = int(round(95 - 92 * s.get("jpeg", 0.0)))
    return img, max(3, quality)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.  ``layout='koniq'`` writes ``root/<W>x<H>/*.jpg`` and
    ``root/koniq10k_distributions_sets.csv``; ``layout='csv'`` writes
    ``root/images/*.jpg`` and ``root/labels.csv`` (columns image,label,split)."""

    n: int = 600
    size: tuple[int, int] = (512, 384)
    seed: int = 0
    layout: str = "koniq"
    label_noise: float = 1.5
    # > 0: the n KonIQ-like images form train and val only (KonIQ's 7058:1000), and the
    # test split is a balanced one: this many images per label range of TEST_RANGES
    test_per_range: int = 0


# Label ranges of the balanced test split (those of the report's per-range table).
# Drawn targets stay inside what the distortions can reach (a clean scene is
# MAX_QUALITY, the strongest degradation ~3) and a rater-noise width from the edges.
TEST_RANGES = ((3.0, 18.0), (22.0, 38.0), (42.0, 58.0), (62.0, 78.0), (82.0, 89.0))


def balanced_test_labels(per_range: int, rng: np.random.Generator) -> np.ndarray:
    """``per_range`` target qualities drawn uniformly inside each test range."""
    return np.concatenate([rng.uniform(lo, hi, per_range) for lo, hi in TEST_RANGES])


def _train_val_split(n: int, seed: int) -> np.ndarray:
    """A seeded train/val split of ``n`` rows in KonIQ's 7058:1000 proportion."""
    n_val = max(1, int(round(n * 1000 / 8058))) if n > 1 else 0
    split = np.array(["train"] * n, dtype=object)
    split[np.random.default_rng(seed).permutation(n)[:n_val]] = "val"
    return split


def _koniq_votes(mos: float, rng: np.random.Generator) -> tuple[list[float], int, float]:
    """Plausible c1..c5 vote fractions, count and SD for a MOS on 0-100."""
    mean5 = 1.0 + 4.0 * mos / 100.0
    sd = float(rng.uniform(0.45, 0.7))
    grid = np.arange(1, 6, dtype=np.float64)
    p = np.exp(-0.5 * ((grid - mean5) / sd) ** 2)
    p /= p.sum()
    total = int(rng.integers(100, 125))
    return [float(x) for x in p], total, sd


def make_dataset(root: str | os.PathLike, spec: SynthSpec = SynthSpec(), *, progress: bool = False) -> Path:
    """Generate the dataset under ``root`` (created) and return the CSV path.
    Seeded: the same spec gives the same files."""
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    w, h = spec.size
    if spec.layout == "koniq":
        img_dir = root / f"{w}x{h}"
    elif spec.layout == "csv":
        img_dir = root / "images"
    else:
        raise ValueError(f"layout '{spec.layout}' is not one of koniq, csv")
    img_dir.mkdir(parents=True, exist_ok=True)
    targets = sample_koniq_like_labels(spec.n, rng)
    split = seeded_split(spec.n, spec.seed)
    if spec.test_per_range > 0:
        targets = np.concatenate([targets, balanced_test_labels(spec.test_per_range, rng)])
        split = np.concatenate([_train_val_split(spec.n, spec.seed),
                                np.array(["test"] * (len(targets) - spec.n), dtype=object)])
    rows = []
    it = range(len(targets))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="generating images", unit="img", leave=False)
    for i in it:
        scene = _draw_scene(rng, (w, h))
        total = float(np.clip(1.0 - targets[i] / MAX_QUALITY, 0.0, 0.97))
        k = int(rng.integers(1, 3))
        kinds = rng.choice(len(DISTORTIONS), size=k, replace=False)
        d = _split_degradation(total, k, rng)
        strengths = {DISTORTIONS[j]: float(x) for j, x in zip(kinds, d)}
        img, q = distort(scene, strengths, rng)
        # the label: what the distortions did, plus a little rater noise
        achieved = 1.0 - np.prod([1.0 - x for x in strengths.values()])
        mos = float(np.clip(MAX_QUALITY * (1.0 - achieved) + rng.normal(0, spec.label_noise), 1.0, 99.0))
        name = f"{1000000 + i * 7919}.jpg"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        (img_dir / name).write_bytes(buf.getvalue())
        rows.append((name, mos, split[i], strengths))
    if spec.layout == "koniq":
        csv_path = root / KONIQ_SETS_CSV
        set_names = {"train": "training", "val": "validation", "test": "test"}
        with open(csv_path, "w", encoding="utf-8", newline="") as f:
            f.write("image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n")
            for name, mos, s, _ in rows:
                c, total_votes, sd = _koniq_votes(mos, rng)
                f.write(f"{name},{','.join(f'{x:.6f}' for x in c)},{total_votes},{mos:.6f},{sd:.6f},{set_names[s]}\n")
    else:
        csv_path = root / "labels.csv"
        with open(csv_path, "w", encoding="utf-8", newline="") as f:
            f.write("image,label,split\n")
            for name, mos, s, _ in rows:
                f.write(f"images/{name},{mos:.6f},{s}\n")
    with open(root / "distortions.jsonl", "w", encoding="utf-8") as f:
        for name, mos, s, strengths in rows:
            f.write(json.dumps({"image": name, "label": round(mos, 6), "split": s, "distortions": strengths}) + "\n")
    (root / "SYNTH.json").write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    return csv_path


def ensure_dataset(root: str | os.PathLike, spec: SynthSpec = SynthSpec(), *, progress: bool = False) -> Path:
    """Generate the dataset unless ``root`` already holds one made from the
    same spec; return its CSV path."""
    root = Path(root)
    marker = root / "SYNTH.json"
    csv_path = root / (KONIQ_SETS_CSV if spec.layout == "koniq" else "labels.csv")
    if marker.is_file() and csv_path.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == json.loads(json.dumps(asdict(spec))):
                return csv_path
        except ValueError:
            pass
    log.info("generating %d synthetic images in %s", spec.n + 5 * spec.test_per_range, root)
    return make_dataset(root, spec, progress=progress)

"""`iqa demo`: generate a small synthetic IQA dataset, embed it, train a
vanilla, an LDS and an LDS+FDS head, and compare them per label range."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import cache as cache_mod
from .cache import default_cache_path
from .datasets import load_koniq
from .embed import EmbedConfig, embed
from .encoder import EncoderConfig, PreprocessConfig, resolve_weights
from .errors import WeightsUnavailable
from .imbalance import FDSConfig, LDSConfig
from .report import Report, ReportConfig, build_report, format_report
from .runs import load_run, write_run
from .synth import SynthSpec, ensure_dataset
from .train import OptimConfig, TrainConfig, train_head

log = logging.getLogger(__name__)

DEFAULT_TAG = "laion2b_s34b_b79k"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("cache") / "demo-data"
    cache_dir: Path = Path("cache")
    runs_dir: Path = Path("runs") / "demo"
    n_images: int = 600
    model: str = "ViT-B-32"
    pretrained: str = DEFAULT_TAG
    offline: bool = False
    device: str = "auto"
    batch_size: int = 32
    epochs: int = 200
    lr: float = 1e-3
    seed: int = 0


@dataclass
class DemoResult:
    report: Report
    pretrained_used: str
    seconds: dict[str, float]


def choose_weights(cfg: DemoConfig) -> str:
    """The tag when its weights can be had, else 'none' (said in one line)."""
    if cfg.offline or cfg.pretrained == "none":
        return "none"
    try:
        resolve_weights(cfg.model, cfg.pretrained)
        return cfg.pretrained
    except WeightsUnavailable as e:
        log.warning("%s; continuing with --pretrained none (random weights): the demo's numbers show the "
                    "pipeline, not CLIP", str(e).split(";")[0])
        return "none"


def run_demo(cfg: DemoConfig = DemoConfig(), *, progress: bool = True) -> DemoResult:
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ensure_dataset(cfg.workdir, SynthSpec(n=cfg.n_images, seed=cfg.seed), progress=progress)
    manifest = replace(load_koniq(cfg.workdir), name="demo")
    seconds["generate"] = time.perf_counter() - t

    pretrained = choose_weights(cfg)
    t = time.perf_counter()
    out = default_cache_path(cfg.cache_dir, "demo", cfg.model, pretrained, "squash")
    ecfg = EmbedConfig(encoder=EncoderConfig(model=cfg.model, pretrained=pretrained,
                                             preprocess=PreprocessConfig(resize_mode="squash")),
                       device=cfg.device, batch_size=cfg.batch_size)
    embed(manifest, ecfg, out, progress=progress)
    seconds["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    data = cache_mod.load(out)
    base = TrainConfig(optim=OptimConfig(lr=cfg.lr), epochs=cfg.epochs, seed=cfg.seed, device=cfg.device)
    lds = LDSConfig(enabled=True, reweight="sqrt_inv", kernel="gaussian", ks=5, sigma=2.0)
    variants = {
        "vanilla": base,
        "lds": replace(base, lds=lds),
        "lds+fds": replace(base, lds=lds, fds=FDSConfig(enabled=True, kernel="gaussian", ks=5, sigma=2.0)),
    }
    runs = []
    for name, tcfg in variants.items():
        result = train_head(data, tcfg, progress=progress)
        runs.append(write_run(cfg.runs_dir / name, result, data.attrs, out, overwrite=True))
        log.info("trained %s in %.1f s (best epoch %d)", name, result.seconds, result.best_epoch)
    seconds["train"] = time.perf_counter() - t
    report = build_report([load_run(r) for r in runs], ReportConfig(tables=("ranges",), baseline=True))
    return DemoResult(report=report, pretrained_used=pretrained, seconds=seconds)


def demo_text(result: DemoResult) -> str:
    return format_report(result.report, "markdown")

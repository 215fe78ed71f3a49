"""The configuration objects of stage two, in one torch-free module: the
choice enums, the head, LDS, FDS, optimiser and training configs, and the
paper's presets.  The CLI, the presets and the ablation grid all build a
:class:`TrainConfig` through :meth:`TrainConfig.from_flat`; options and
their defaults are defined here once.

Semantics of LDS and FDS: ``docs/method.md``.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any, Sequence

import numpy as np

from ..binning import Bins
from ..errors import ConfigError, clip
from ..seeds import check_seed
from .kernels import KERNELS, REWEIGHTS, Kernel, Reweight, even_kernel_message, lds_weights
from .methods import CLOSED_FORM_METHODS, METHODS, Method, MethodConfig, method_conflict

log = logging.getLogger(__name__)

__all__ = ["Kernel", "Reweight", "KERNELS", "REWEIGHTS", "EMPTY_BINS", "HeadConfig", "LDSConfig", "FDSConfig",
           "OptimConfig", "OrderConfig", "TrainConfig", "PRESETS", "Preset", "LOSSES", "SCHEDULES",
           "ACTIVATION_NAMES", "EmptyBins", "Loss", "Schedule", "Shuffle", "SHUFFLES", "FLAT_FIELDS",
           "FLAT_DEFAULTS", "DEFAULT_BINS", "BMSE_SIGMA_FRACTION", "default_reweight", "run_tag", "SplitConfig",
           "run_name", "GRID_KEYS", "SUMMARY_FILE", "PLAN_FILE", "LOG_EVERY",
           "Method", "METHODS", "MethodConfig", "Precision", "PRECISIONS"]


class EmptyBins(str, Enum):
    """FDS statistics of bins without training samples (:class:`FDSConfig`)."""

    fill = "fill"
    keep = "keep"


class Loss(str, Enum):
    l1 = "l1"
    mse = "mse"
    huber = "huber"


class Shuffle(str, Enum):
    """The order of the training rows in an epoch (:class:`OrderConfig`)."""

    rows = "rows"
    chunks = "chunks"


class Precision(str, Enum):
    """The matrix products of stage two (:attr:`TrainConfig.precision`):
    fp32, or bf16 / fp16 autocast (weights, optimiser state, losses, FDS
    statistics and metrics stay float32); ``auto``: bf16 where the device
    runs it fast (a CUDA GPU with bf16, a CPU with AMX or AVX-512 bf16), else fp32
    (:func:`iqa_cache.device.resolve_precision`)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    auto = "auto"


class Schedule(str, Enum):
    """Learning-rate schedule (:class:`OptimConfig`)."""

    constant = "constant"
    cosine = "cosine"
    step = "step"


EMPTY_BINS = tuple(e.value for e in EmptyBins)
LOSSES = tuple(e.value for e in Loss)
SCHEDULES = tuple(e.value for e in Schedule)
SHUFFLES = tuple(e.value for e in Shuffle)
PRECISIONS = tuple(e.value for e in Precision)
ACTIVATION_NAMES = ("relu", "gelu", "silu")
# The head's size is bounded, and checked before anything is allocated (--hidden, --blocks, a run's config.json)
MAX_HIDDEN_DIM = 16_384
MAX_BLOCKS = 256
MAX_IN_DIM = 65_536  # features wider than any encoder's
MAX_HEAD_PARAMS = 200_000_000  # 800 MB of float32 weights; training holds about four times that


def _plain(value: Any) -> Any:
    """An enum member's value (the CLI passes enums), anything else as is."""
    return value.value if isinstance(value, Enum) else value


def _check_window(opt: str, kernel: str, ks: int, sigma: float) -> None:
    """A kernel window's settings, each error naming its option
    (``--{opt}-kernel``, ``--{opt}-ks``, ``--{opt}-sigma``)."""
    if kernel not in KERNELS:
        raise ConfigError(f"--{opt}-kernel '{kernel}' is not one of {', '.join(KERNELS)}")
    if isinstance(ks, bool) or int(ks) != ks or ks < 1:
        raise ConfigError(f"--{opt}-ks must be a positive odd integer, got {ks}")
    if ks % 2 == 0:
        raise ConfigError(f"--{opt}-ks {ks}: " + even_kernel_message(kernel, int(ks), "the kernel"))
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"--{opt}-sigma must be a positive number, got {sigma}")


@dataclass(frozen=True)
class HeadConfig:
    """Head shape.  Defaults: 768 → 512, two residual blocks, ReLU, no
    dropout (``dropout``: on the features after FDS, before the final layer)."""

    in_dim: int = 768
    hidden_dim: int = 512
    n_blocks: int = 2
    dropout: float = 0.0
    activation: str = "relu"

    def __post_init__(self) -> None:
        for name, value in (("in_dim", self.in_dim), ("hidden_dim", self.hidden_dim), ("n_blocks", self.n_blocks)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"head setting {name} must be a whole number, got {clip(repr(value))}")
        if not 1 <= self.in_dim <= MAX_IN_DIM:
            raise ConfigError(f"the head's input width must be from 1 to {MAX_IN_DIM:,}, got {self.in_dim:,}")
        if not 1 <= self.hidden_dim <= MAX_HIDDEN_DIM:
            raise ConfigError(f"--hidden must be from 1 to {MAX_HIDDEN_DIM:,}, got {self.hidden_dim:,}")
        if not 0 <= self.n_blocks <= MAX_BLOCKS:
            raise ConfigError(f"--blocks must be from 0 to {MAX_BLOCKS:,}, got {self.n_blocks:,}")
        if self.n_params > MAX_HEAD_PARAMS:
            raise ConfigError(f"a head with --hidden {self.hidden_dim:,} and --blocks {self.n_blocks} has "
                              f"{self.n_params:,} parameters ({self.in_dim:,}-d input), over the limit of "
                              f"{MAX_HEAD_PARAMS:,} (MAX_HEAD_PARAMS); lower --hidden or --blocks")
        if not isinstance(self.dropout, numbers.Real) or isinstance(self.dropout, bool):
            raise ConfigError(f"--dropout must be a number, got {clip(repr(self.dropout))}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATION_NAMES:
            raise ConfigError(f"activation '{clip(self.activation)}' is not one of {', '.join(ACTIVATION_NAMES)}")

    @property
    def n_params(self) -> int:
        """The head's number of weights (without FDS's statistics)."""
        h = self.hidden_dim
        return self.in_dim * h + h + self.n_blocks * 2 * (h * h + h) + h + 1


@dataclass(frozen=True)
class FDSConfig:
    """FDS settings (docs/method.md, "FDS").  Statistics are updated from the training
    features at the end of each epoch >= ``start_update`` and used for
    calibration from epoch ``start_smooth`` on (the reference's first
    effective calibration comes one epoch later: see docs/deviations.md).

    ``empty_bins``: what the statistics of bins without training samples
    are before smoothing.  ``fill`` (default, as the reference's
    continuous-label variant sts-b-dir): taken from the neighbouring bins
    (:func:`empty_bin_plan`); ``keep``: left at mean 0 / variance 1 (the
    reference's discrete-label variants), which drags the smoothed statistics
    of the bins next to them, i.e. of the rare tail bins."""

    enabled: bool = False
    kernel: str = "gaussian"
    ks: int = 5
    sigma: float = 2.0
    momentum: float = 0.9
    start_update: int = 0
    start_smooth: int = 1
    clip_min: float = 0.1
    clip_max: float = 10.0
    empty_bins: str = "fill"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", str(_plain(self.kernel)))
        object.__setattr__(self, "empty_bins", str(_plain(self.empty_bins)))
        if self.empty_bins not in EMPTY_BINS:
            raise ConfigError(f"--fds-empty-bins '{self.empty_bins}' is not one of {', '.join(EMPTY_BINS)}")
        _check_window("fds", self.kernel, self.ks, self.sigma)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--fds-momentum must be in [0, 1), got {self.momentum}")
        if self.start_update < 0 or self.start_smooth < 0:
            raise ConfigError("--fds-start-update and --fds-start-smooth must be 0 or more")
        if self.start_smooth <= self.start_update:
            raise ConfigError(f"--fds-start-smooth ({self.start_smooth}) must come after --fds-start-update "
                              f"({self.start_update}): calibration needs statistics from an earlier epoch")
        if not 0 < self.clip_min <= 1 <= self.clip_max:
            raise ConfigError(f"FDS clip range [{self.clip_min}, {self.clip_max}] must contain 1")



@dataclass(frozen=True)
class LDSConfig:
    """LDS settings (docs/method.md, "LDS").  ``reweight`` 'none' means no loss
    weights; with ``enabled`` the bin values are smoothed by the kernel
    first (LDS), without it they are inverted as they are."""

    enabled: bool = False
    reweight: str = "none"
    kernel: str = "gaussian"
    ks: int = 5
    sigma: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reweight", str(_plain(self.reweight)))
        object.__setattr__(self, "kernel", str(_plain(self.kernel)))
        if self.reweight not in REWEIGHTS:
            raise ConfigError(f"--reweight '{self.reweight}' is not one of {', '.join(REWEIGHTS)}")
        if self.enabled and self.reweight == "none":
            raise ConfigError("--lds needs --reweight inverse or sqrt_inv (LDS smooths the label density that "
                              "the weights invert)")
        _check_window("lds", self.kernel, self.ks, self.sigma)

    def weights(self, labels: Sequence[float], bins: Bins) -> np.ndarray:
        return lds_weights(labels, bin_size=bins.size, lo=bins.lo, hi=bins.hi, reweight=self.reweight,
                           kernel=self.kernel, ks=self.ks, sigma=self.sigma, lds=self.enabled)



@dataclass(frozen=True)
class OptimConfig:
    """Adam.  ``schedule``: constant; cosine (to 0 at the last epoch); or
    step (×0.1 at 60 % and 80 % of the epochs, as the DIR reference)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "schedule", str(_plain(self.schedule)))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"Adam betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"Adam eps must be a positive number, got {self.eps}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule '{self.schedule}' is not one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class OrderConfig:
    """The order of the training rows in each epoch.  ``rows``: each
    configuration its own permutation of all rows (from its seed).
    ``chunks``: the rows in chunks of ``chunk_rows`` consecutive training rows
    (in file order); each epoch shuffles the chunks, then the rows within
    each window of ``buffer`` chunks (:func:`iqa_cache.train.order.chunk_windows`).
    That order can be read from a file chunk by chunk (``--stream``), and it
    is the same whether the cache is streamed or in memory."""

    shuffle: str = "rows"
    chunk_rows: int = 4096
    buffer: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "shuffle", str(_plain(self.shuffle)))
        if self.shuffle not in SHUFFLES:
            raise ConfigError(f"--shuffle '{self.shuffle}' is not one of {', '.join(SHUFFLES)}")
        for opt, v in (("--chunk-rows", self.chunk_rows), ("--shuffle-buffer", self.buffer)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{opt} must be a whole number of at least 1, got {v!r}")

    @property
    def chunked(self) -> bool:
        return self.shuffle == Shuffle.chunks.value


DEFAULT_SPLIT_RATIOS = "0.7,0.1,0.2"


@dataclass(frozen=True)
class SplitConfig:
    """Which train/val/test split a run trains on (:mod:`iqa_cache.train.splits`).
    ``seed`` None: the cache's own split (``split=official``); a number:
    parts drawn from the cache's labelled rows with that seed, stratified by
    label range, in the proportions ``ratios`` (train,val,test, e.g.
    ``0.7,0.1,0.2``; kept as text, as given on the command line)."""

    seed: int | None = None
    ratios: str = DEFAULT_SPLIT_RATIOS

    def __post_init__(self) -> None:
        if self.seed is not None:
            object.__setattr__(self, "seed", check_seed(self.seed, "--split-seed"))
        text = ",".join(f"{x:g}" for x in self.ratios) if isinstance(self.ratios, (tuple, list)) else str(self.ratios)
        try:
            parts = [float(x) for x in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or not all(math.isfinite(x) and x >= 0 for x in parts) or parts[0] <= 0 \
                or parts[1] + parts[2] <= 0:
            raise ConfigError(f"--split-ratios '{text}' must be three numbers TRAIN,VAL,TEST of 0 or more, train "
                              f"above 0, e.g. {DEFAULT_SPLIT_RATIOS}")
        object.__setattr__(self, "ratios", ",".join(f"{x:g}" for x in parts))

    @property
    def fractions(self) -> tuple[float, float, float]:
        """The ratios as fractions of 1."""
        parts = [float(x) for x in self.ratios.split(",")]
        return tuple(x / sum(parts) for x in parts)  # type: ignore[return-value]

    @property
    def official(self) -> bool:
        return self.seed is None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json``.

    Settings in label units default to None, "from the cache"
    (:meth:`resolved`): ``label_range`` the cache's recorded range (KonIQ:
    0-100), ``bin_size`` that range in :data:`DEFAULT_BINS` bins (KonIQ: 1),
    ``method.bmse_sigma`` :data:`BMSE_SIGMA_FRACTION` of it (KonIQ: 10).
    Training resolves them and records the numbers it used.

    ``patience`` N stops training N epochs after the best validation epoch
    (None: every epoch is trained).  ``precision``: see :class:`Precision`; a
    trained run records the one it ran with (``auto`` resolved, as ``device``)."""

    head: HeadConfig = field(default_factory=HeadConfig)
    lds: LDSConfig = field(default_factory=LDSConfig)
    fds: FDSConfig = field(default_factory=FDSConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    order: OrderConfig = field(default_factory=OrderConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    bin_size: float | None = None
    label_range: tuple[float, float] | None = None
    epochs: int = 200
    patience: int | None = None
    batch_size: int = 256
    loss: str = "l1"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", str(_plain(self.loss)))
        object.__setattr__(self, "device", str(_plain(self.device)))
        object.__setattr__(self, "precision", str(_plain(self.precision)))
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.patience is not None and (isinstance(self.patience, bool) or int(self.patience) != self.patience
                                          or self.patience < 1):
            raise ConfigError(f"--patience must be a whole number of epochs, at least 1, got {self.patience!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        object.__setattr__(self, "seed", check_seed(self.seed, "--seed"))
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss '{self.loss}' is not one of {', '.join(LOSSES)}")
        if self.label_range is not None:
            object.__setattr__(self, "label_range", tuple(float(x) for x in self.label_range))
            lo, hi = self.label_range if len(self.label_range) == 2 else (math.nan, math.nan)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"--label-range must be LO,HI with LO below HI, got "
                                  f"{','.join(f'{x:g}' for x in self.label_range)}")
        if self.bin_size is not None and not (math.isfinite(self.bin_size) and self.bin_size > 0):
            raise ConfigError(f"--bin-size must be a positive number, got {self.bin_size}")
        if self.method.name in (Method.vanilla.value, Method.lds.value):  # the plain loss, LDS-weighted or not
            plain = Method.lds.value if self.lds.enabled else Method.vanilla.value
            object.__setattr__(self, "method", replace(self.method, name=plain))
        conflict = method_conflict(self.method.name, self.lds.enabled, self.lds.reweight)
        if conflict:
            raise ConfigError(conflict)
        if self.fds.enabled and self.method.name in CLOSED_FORM_METHODS:
            raise ConfigError(f"--method {self.method.name} fits a linear map on the features: it has no hidden "
                              "layer for FDS; drop --fds")
        if self.fds.enabled and self.fds.start_smooth >= self.epochs:
            log.warning("FDS starts smoothing at epoch %d but training stops after %d epochs: FDS will have "
                        "no effect", self.fds.start_smooth, self.epochs)

    def bins(self, label_range: tuple[float, float]) -> Bins:
        """The label bins on a cache whose recorded range is ``label_range``."""
        r = self.resolved(label_range)
        return Bins(*r.label_range, r.bin_size)

    def resolved(self, label_range: tuple[float, float], in_dim: int | None = None) -> "TrainConfig":
        """This configuration on a cache whose recorded label range is
        ``label_range`` (and whose features have ``in_dim`` dimensions, when
        given): every setting left to the cache (None) as the number it
        stands for there.  Idempotent; what training records."""
        lo, hi = self.label_range or tuple(float(x) for x in label_range)
        span = hi - lo
        bin_size = self.bin_size if self.bin_size is not None else span / DEFAULT_BINS
        sigma = self.method.bmse_sigma if self.method.bmse_sigma is not None else span * BMSE_SIGMA_FRACTION
        head = replace(self.head, in_dim=int(in_dim)) if in_dim is not None else self.head
        return replace(self, label_range=(lo, hi), bin_size=bin_size, head=head,
                       method=replace(self.method, bmse_sigma=sigma))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        sub = {"head": HeadConfig, "lds": LDSConfig, "fds": FDSConfig, "optim": OptimConfig, "method": MethodConfig,
               "order": OrderConfig, "split": SplitConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        kw = {}
        for k, v in d.items():
            if k in sub:
                sub_known = {f.name for f in fields(sub[k])}
                bad = set(v) - sub_known
                if bad:
                    raise ConfigError(f"unknown {k} setting(s): {', '.join(sorted(bad))}")
                kw[k] = sub[k](**v)
            else:
                kw[k] = tuple(v) if k == "label_range" and v is not None else v
        return cls(**kw)

    def to_flat(self) -> dict[str, Any]:
        """The settings under their flat option names (:data:`FLAT_FIELDS`:
        the train-head options and grid keys), the inverse of
        :meth:`from_flat`."""
        return {name: getattr(getattr(self, part), attr) if part else getattr(self, attr)
                for name, (part, attr) in FLAT_FIELDS.items()}

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: "TrainConfig | None" = None, *,
                  preset: str | None = None) -> "TrainConfig":
        """A configuration from flat option names (``lr``, ``lds_ks``,
        ``fds_momentum``, ...: :data:`FLAT_FIELDS`): ``values`` win over the
        ``preset``'s values, which win over ``base`` (default: the library's
        defaults).  Settings without a flat name (the head's input width,
        FDS clipping) are ``base``'s.

        ``reweight`` None, or absent without a ``base``, follows LDS
        (:func:`default_reweight`: ``sqrt_inv`` with LDS on, else ``none``);
        absent with a ``base``, it is ``base``'s.  Every value is checked by
        the config objects (ConfigError naming the option)."""
        unknown = sorted(set(values) - set(FLAT_FIELDS))
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        given = dict(preset_values(preset)) if preset is not None else {}
        given.update(values)
        flat = (base if base is not None else cls()).to_flat()
        flat.update({k: _plain(v) for k, v in given.items()})
        if "method" in given and "lds" in given:
            conflict = method_conflict(str(_plain(given["method"])), bool(given["lds"]), "none")
            if conflict and _plain(given["method"]) == Method.lds.value:
                raise ConfigError(conflict)
        if "method" in given and "lds" not in given:  # --method lds turns LDS on, any other off
            flat["lds"] = flat["method"] == Method.lds.value
        elif "lds" in given and flat["method"] in (Method.vanilla.value, Method.lds.value):
            flat["method"] = Method.lds.value if flat["lds"] else Method.vanilla.value
        # a method given without weights: the weights LDS on/off implies (with LDS on, a base's own are kept)
        method_weights = ("method" in given and "reweight" not in given
                          and not (flat["lds"] and flat["reweight"] != default_reweight(False)))
        if given.get("reweight") is None and ("reweight" in given or base is None or method_weights):
            flat["reweight"] = default_reweight(bool(flat["lds"]))
        if flat["label_range"] is not None:
            flat["label_range"] = tuple(flat["label_range"])
        start = base if base is not None else cls()
        parts: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, (part, attr) in FLAT_FIELDS.items():
            (parts.setdefault(part, {}) if part else top)[attr] = flat[name]
        return replace(start, **{p: replace(getattr(start, p), **kw) for p, kw in parts.items()}, **top)

    @property
    def tag(self) -> str:
        """What is trained, in a few characters (:func:`run_tag`)."""
        return run_tag(self)


# Defaults in label units, as fractions of the label range: on KonIQ's 0-100,
# bins of 1 (the paper's r = 1, m = 100) and a Balanced MSE noise sigma of 10
# (the official code's initial sigma for ages, a scale like KonIQ's); on 0-5,
# bins of 0.05 and sigma 0.5; on 0-1, 0.01 and 0.1.
DEFAULT_BINS = 100
BMSE_SIGMA_FRACTION = 0.1

# The flat option names (train-head's options, the grid's keys, the presets'
# keys) and where each lives in a TrainConfig: (sub-config or '', field).
FLAT_FIELDS: dict[str, tuple[str, str]] = {
    "lds": ("lds", "enabled"), "reweight": ("lds", "reweight"), "lds_kernel": ("lds", "kernel"),
    "lds_ks": ("lds", "ks"), "lds_sigma": ("lds", "sigma"),
    "fds": ("fds", "enabled"), "fds_kernel": ("fds", "kernel"), "fds_ks": ("fds", "ks"),
    "fds_sigma": ("fds", "sigma"), "fds_momentum": ("fds", "momentum"), "fds_start_update": ("fds", "start_update"),
    "fds_start_smooth": ("fds", "start_smooth"), "fds_empty_bins": ("fds", "empty_bins"),
    "bin_size": ("", "bin_size"), "label_range": ("", "label_range"), "epochs": ("", "epochs"),
    "patience": ("", "patience"),
    "lr": ("optim", "lr"), "weight_decay": ("optim", "weight_decay"), "schedule": ("optim", "schedule"),
    "betas": ("optim", "betas"), "eps": ("optim", "eps"), "batch_size": ("", "batch_size"), "loss": ("", "loss"),
    "hidden": ("head", "hidden_dim"), "blocks": ("head", "n_blocks"), "dropout": ("head", "dropout"),
    "seed": ("", "seed"), "device": ("", "device"), "precision": ("", "precision"),
    "method": ("method", "name"), "bmse_sigma": ("method", "bmse_sigma"), "bmse_sigma_lr": ("method", "bmse_sigma_lr"),
    "bmse_fix_sigma": ("method", "bmse_fix_sigma"), "gai_components": ("method", "gai_components"),
    "bni_lds": ("method", "bni_lds"), "bni_sigma": ("method", "bni_sigma"), "dist_weight": ("method", "dist_weight"),
    "dist_bw": ("method", "dist_bw"),
    "ranksim_gamma": ("method", "ranksim_gamma"), "ranksim_lambda": ("method", "ranksim_lambda"),
    "ranksim_rows": ("method", "ranksim_rows"),
    "dw_alpha": ("method", "dw_alpha"), "dw_eps": ("method", "dw_eps"),
    "ridge_min": ("method", "ridge_min"), "ridge_max": ("method", "ridge_max"),
    "ridge_steps": ("method", "ridge_steps"),
    "shuffle": ("order", "shuffle"), "chunk_rows": ("order", "chunk_rows"), "shuffle_buffer": ("order", "buffer"),
    "split": ("split", "seed"), "split_ratios": ("split", "ratios"),
}


def default_reweight(lds: bool) -> str:
    """The loss weights when none are chosen: ``sqrt_inv`` with LDS (the
    paper's), else ``none``."""
    return Reweight.sqrt_inv.value if lds else Reweight.none.value


# The library's default of every flat option; ``reweight`` None: it follows LDS.
FLAT_DEFAULTS: dict[str, Any] = {**TrainConfig().to_flat(), "reweight": None}


def run_tag(cfg: TrainConfig) -> str:
    """What a configuration trains: ``lds`` (with the default reweighting,
    else ``lds-inverse``), ``rw-inverse`` / ``rw-sqrt_inv`` (reweighting
    without LDS), the method when it is neither vanilla nor lds (``bmc``,
    ``ranksim``, ...), ``fds``, joined by ``+``; ``vanilla`` for none of them."""
    rw = cfg.lds.reweight
    parts = []
    if cfg.lds.enabled:
        parts.append("lds" if rw == default_reweight(True) else f"lds-{rw}")
    elif rw != default_reweight(False):
        parts.append(f"rw-{rw}")
    if cfg.method.name not in (Method.vanilla.value, Method.lds.value):
        parts.append(cfg.method.name)
    if cfg.fds.enabled:
        parts.append("fds")
    return "+".join(parts) or "vanilla"


def run_name(cfg: TrainConfig) -> str:
    """train-head's default run directory name: ``<tag>_s<seed>``, with a
    drawn split ``<tag>_split<N>_s<seed>``."""
    split = "" if cfg.split.official else f"_split{cfg.split.seed}"
    return f"{run_tag(cfg)}{split}_s{cfg.seed}"


def reweight_note(cfg: TrainConfig) -> str | None:
    """The reweighting when it is not what LDS on/off implies
    (:func:`default_reweight`), so that a name has to say it; else None."""
    rw = cfg.lds.reweight
    return None if rw == default_reweight(cfg.lds.enabled) else rw


# The paper's settings (Nguyen et al. 2024): Adam (§4.1: lr 0.1 on KonIQ-10k,
# 0.01 on the 0-4 internal set; betas 0.9/0.999, eps 1e-8, no weight decay;
# 200 epochs), LDS r = 1, m = 100, w(x) = sqrt(1/x) (``sqrt_inv``, the default
# reweighting with --lds), kernel N(12, 10), and FDS u = 0, s = 1, kernel
# N(5, 2) (§3.2.2).  N(12, 10) is run as gaussian ks 11, sigma 10: the
# reference builds its window from a half width (ks - 1) // 2 = 5, so its ks
# 12 *is* an 11-bin window, identical to ks 11 here.  m = 100 is a number of
# bins (the reference's max target / bucket count): on KonIQ's 0-100 scale
# r = 1 gives exactly those 100 bins; on the 0-4 internal scale the same 100
# bins are bins of 0.04, so that both kernels (given in bins) cover the same
# fraction of the scale as on KonIQ.  Integer labels 0-4 then fall in bins 0,
# 25, 50, 75 and 99, each value its own bin (a bin of 1 over 0-4 would
# merge 3 and 4, the rare values the paper's Table 2 separates).
PAPER_LDS = {"lds_kernel": "gaussian", "lds_ks": 11, "lds_sigma": 10.0}
PAPER_FDS = {"fds_kernel": "gaussian", "fds_ks": 5, "fds_sigma": 2.0, "fds_start_update": 0, "fds_start_smooth": 1}
PAPER_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "epochs": 200}
PRESETS: dict[str, dict[str, Any]] = {
    "paper-koniq": {"lr": 0.1, **PAPER_ADAM, "bin_size": 1.0, "label_range": (0.0, 100.0), **PAPER_LDS,
                    **PAPER_FDS},
    "paper-internal": {"lr": 0.01, **PAPER_ADAM, "bin_size": 0.04, "label_range": (0.0, 4.0), **PAPER_LDS,
                       **PAPER_FDS},
}
Preset = Enum("Preset", {name: name for name in PRESETS}, type=str)  # the --preset choices
Preset.__doc__ = "A settings preset (:data:`PRESETS`)."


def preset_values(preset: str | None) -> dict[str, Any]:
    """A preset's flat values (ConfigError naming the presets when unknown)."""
    if preset is None:
        return {}
    preset = str(_plain(preset))
    if preset not in PRESETS:
        raise ConfigError(f"--preset '{preset}' is not one of {', '.join(PRESETS)}")
    return PRESETS[preset]


# Without progress bars (--no-progress), training logs a line every LOG_EVERY
# epochs of a stack (--log-every) and one when a stack is done.
LOG_EVERY = 10

# The ablation grid's keys (flat option names) and its output files: here so
# that the CLI declares `iqa ablate` without importing the training engine.
GRID_KEYS = ("lds", "reweight", "lds_kernel", "lds_ks", "lds_sigma", "fds", "fds_kernel", "fds_ks", "fds_sigma",
             "bin_size", "lr", "seed", "method", "bmse_sigma", "bmse_fix_sigma", "gai_components", "bni_lds",
             "bni_sigma", "dist_weight", "dist_bw", "ranksim_gamma", "ranksim_lambda", "ranksim_rows", "dw_alpha",
             "split", "precision")
SUMMARY_FILE = "summary.csv"
PLAN_FILE = "ablation.json"
assert set(GRID_KEYS) <= set(FLAT_FIELDS) and all(set(p) <= set(FLAT_FIELDS) for p in PRESETS.values())



"""The imbalance methods a head can be trained with, as one choice
(:class:`Method`) with its hyper-parameters (:class:`MethodConfig`):
torch-free, part of every :class:`~iqa_cache.train.config.TrainConfig`.

* ``vanilla``: the plain loss.
* ``lds``: the plain loss weighted by LDS (Yang et al. 2021; the
  :class:`~iqa_cache.train.config.LDSConfig` settings).
* ``bmc``, ``gai``, ``bni``: Balanced MSE (Ren et al. 2022) with a
  batch-based, a Gaussian-mixture or a histogram label prior; a learnable
  noise sigma per head.
* ``dist``: Dist Loss (Nie et al. 2025): the sorted batch predictions are
  pulled towards pseudo-labels drawn from the label density.
* ``ranksim``: RankSim (Gong et al. 2022): a ranking-similarity regulariser
  on the head's last hidden layer.
* ``denseweight``: DenseWeight (Steininger et al. 2021): loss weights from a
  kernel density estimate of the labels.
* ``ridge``: the linear probe of the frozen-feature IQA papers (ARNIQA,
  Re-IQA): closed-form ridge regression on the features, its strength chosen
  on the validation split over a log grid (:mod:`iqa_cache.train.ridge`); no
  head, no epochs.

FDS composes with every method; the formulas, defaults and deviations are
in ``docs/method.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from ..errors import ConfigError

__all__ = ["Method", "METHODS", "RankSimRows", "RANKSIM_ROWS", "BMSE_METHODS", "WEIGHTING_METHODS",
           "CLOSED_FORM_METHODS", "MethodConfig", "method_conflict", "uses", "PARAMETER_METHODS"]


class Method(str, Enum):
    """An imbalance method (:class:`MethodConfig`)."""

    vanilla = "vanilla"
    lds = "lds"
    bmc = "bmc"
    gai = "gai"
    bni = "bni"
    dist = "dist"
    ranksim = "ranksim"
    denseweight = "denseweight"
    ridge = "ridge"


METHODS = tuple(m.value for m in Method)


class RankSimRows(str, Enum):
    """Which rows of a batch RankSim keeps: one per distinct label (the
    official code) or one per label bin."""

    label = "label"
    bin = "bin"


RANKSIM_ROWS = tuple(r.value for r in RankSimRows)
# Balanced MSE: the loss itself corrects for the label distribution (noise sigma learnt per head).
BMSE_METHODS = ("bmc", "gai", "bni")
# The methods that replace the loss weights or the loss: LDS/--reweight weights on top are not meaningful.
WEIGHTING_METHODS = (*BMSE_METHODS, "denseweight")
# Closed-form methods: no head, no epochs (the stacked engine hands them to their solver).
CLOSED_FORM_METHODS = ("ridge",)

_WHY = {
    "bmc": "Balanced MSE already balances the loss by its batch-based label prior",
    "gai": "Balanced MSE already balances the loss by its Gaussian-mixture label prior",
    "bni": "Balanced MSE already balances the loss by its label-histogram prior",
    "denseweight": "DenseWeight's loss weights replace the LDS/--reweight weights",
}


@dataclass(frozen=True)
class MethodConfig:
    """The method and its hyper-parameters (each used only by its method).

    Balanced MSE (``bmc``, ``gai``, ``bni``): ``bmse_sigma`` the initial
    noise sigma in label units (None: a tenth of the label range, resolved
    from the cache by :meth:`~iqa_cache.train.config.TrainConfig.resolved`:
    10 on KonIQ's 0-100, as the official IMDB-WIKI runs on ages), learnt in
    log space (it stays positive) with Adam at the constant ``bmse_sigma_lr``
    unless ``bmse_fix_sigma``; ``gai_components`` the
    Gaussian mixture's size; ``bni_lds`` smooths the label histogram with the
    LDS kernel and size (``--lds-kernel/--lds-ks``) and ``bni_sigma`` (the
    official default 1).  Dist Loss:
    ``dist_weight`` the weight of the distribution term next to the plain
    loss, ``dist_bw`` the label KDE's bandwidth as a factor of the labels'
    std (scipy's ``bw_method``).  RankSim: ``ranksim_gamma`` the regulariser's weight,
    ``ranksim_lambda`` the ranker's interpolation strength, ``ranksim_rows``
    one row per distinct label (``label``, official) or per label bin.  DenseWeight:
    ``dw_alpha`` the strength, ``dw_eps`` the smallest weight.  Ridge: the
    strengths tried are ``ridge_steps`` values from ``ridge_min`` to
    ``ridge_max``, evenly spaced in log, each times the mean eigenvalue of
    the centred training features' Gram matrix (so the grid does not depend
    on the features' scale); the one with the lowest validation MAE is kept."""

    name: str = "vanilla"
    bmse_sigma: float | None = None
    bmse_sigma_lr: float = 1e-2
    bmse_fix_sigma: bool = False
    gai_components: int = 8
    bni_lds: bool = False
    bni_sigma: float = 1.0
    dist_weight: float = 1.0
    dist_bw: float = 0.5
    ranksim_gamma: float = 100.0
    ranksim_lambda: float = 2.0
    ranksim_rows: str = "label"
    dw_alpha: float = 1.0
    dw_eps: float = 1e-6
    ridge_min: float = 1e-6
    ridge_max: float = 1e3
    ridge_steps: int = 19

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.name.value if isinstance(self.name, Enum) else self.name))
        if self.name not in METHODS:
            raise ConfigError(f"--method '{self.name}' is not one of {', '.join(METHODS)}")
        if self.bmse_sigma is not None and not (math.isfinite(self.bmse_sigma) and self.bmse_sigma > 0):
            raise ConfigError(f"--bmse-sigma must be a positive number, got {self.bmse_sigma}")
        for opt, value, low in (("bmse-sigma-lr", self.bmse_sigma_lr, 0.0),
                                ("ranksim-lambda", self.ranksim_lambda, 0.0), ("dw-eps", self.dw_eps, 0.0),
                                ("dist-bw", self.dist_bw, 0.0), ("bni-sigma", self.bni_sigma, 0.0)):
            if not (math.isfinite(value) and value > low):
                raise ConfigError(f"--{opt} must be a positive number, got {value}")
        for opt, value in (("dist-weight", self.dist_weight), ("ranksim-gamma", self.ranksim_gamma),
                           ("dw-alpha", self.dw_alpha)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{opt} must be 0 or more, got {value}")
        if isinstance(self.gai_components, bool) or int(self.gai_components) != self.gai_components \
                or self.gai_components < 1:
            raise ConfigError(f"--gai-components must be a positive integer, got {self.gai_components}")
        object.__setattr__(self, "gai_components", int(self.gai_components))
        for opt, value in (("ridge-min", self.ridge_min), ("ridge-max", self.ridge_max)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{opt} must be a positive number, got {value}")
        if self.ridge_min > self.ridge_max:
            raise ConfigError(f"--ridge-min {self.ridge_min:g} is above --ridge-max {self.ridge_max:g}")
        if isinstance(self.ridge_steps, bool) or int(self.ridge_steps) != self.ridge_steps or self.ridge_steps < 1:
            raise ConfigError(f"--ridge-steps must be a positive integer, got {self.ridge_steps}")
        object.__setattr__(self, "ridge_steps", int(self.ridge_steps))
        rows = str(self.ranksim_rows.value if isinstance(self.ranksim_rows, Enum) else self.ranksim_rows)
        if rows not in RANKSIM_ROWS:
            raise ConfigError(f"--ranksim-rows '{rows}' is not one of {', '.join(RANKSIM_ROWS)}")
        object.__setattr__(self, "ranksim_rows", rows)

    @property
    def bmse(self) -> bool:
        """Balanced MSE (a learnt noise sigma)."""
        return self.name in BMSE_METHODS


# Which methods read each hyper-parameter of MethodConfig.
PARAMETER_METHODS: dict[str, tuple[str, ...]] = {
    "bmse_sigma": BMSE_METHODS, "bmse_sigma_lr": BMSE_METHODS, "bmse_fix_sigma": BMSE_METHODS,
    "gai_components": ("gai",), "bni_lds": ("bni",), "bni_sigma": ("bni",), "dist_weight": ("dist",),
    "dist_bw": ("dist",), "ranksim_gamma": ("ranksim",), "ranksim_lambda": ("ranksim",), "ranksim_rows": ("ranksim",),
    "dw_alpha": ("denseweight",), "dw_eps": ("denseweight",), "ridge_min": ("ridge",), "ridge_max": ("ridge",),
    "ridge_steps": ("ridge",),
}


def uses(method: str, parameter: str) -> bool:
    """Whether ``method`` reads the MethodConfig field ``parameter``."""
    return method in PARAMETER_METHODS.get(parameter, ())


def method_conflict(method: str, lds: bool, reweight: str) -> str | None:
    """Why ``method`` cannot run with these LDS settings (one line), or None."""
    if method == "lds" and not lds:
        return "--method lds trains with LDS loss weights: it needs LDS on (drop --no-lds / lds=off)"
    if method in CLOSED_FORM_METHODS and (lds or reweight != "none"):
        used = "--lds" if lds else f"--reweight {reweight}"
        return f"--method {method} is unweighted closed-form least squares: drop {used}"
    if method in WEIGHTING_METHODS and (lds or reweight != "none"):
        used = "--lds" if lds else f"--reweight {reweight}"
        return f"--method {method} with {used} is not meaningful: {_WHY[method]}; drop {used}"
    return None

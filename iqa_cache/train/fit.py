"""Stage two: train the residual MLP head on cached features.

:func:`train_head` trains one head with the stacked engine of
:mod:`iqa_cache.train.stacked` (a stack of one configuration): the whole split on
the device, index batches, one fused Adam call per step, vectorised FDS.
The same training as one readable loop (nanoGPT style: the learning rate
from a pure :func:`~iqa_cache.train.stacked.get_lr`, evaluation under
``torch.no_grad()``, the best validation-MAE epoch kept) is
``train_head_simple`` in ``tests/reference.py``, the reference the engine is
tested against (same results for the same seed, to float rounding).  The
config is saved with the weights so the head can be rebuilt from it.  The
config types (:mod:`iqa_cache.train.config`), the result
(:mod:`iqa_cache.train.results`) and ``get_lr`` are importable from here too.
"""
from __future__ import annotations

import torch

from ..cache import CacheData
from ..errors import TrainingDiverged
from .config import LOG_EVERY, LOSSES, PRESETS, SCHEDULES, FDSConfig, HeadConfig, LDSConfig, OptimConfig, TrainConfig
from .head import ResidualMLPHead
from .results import TrainResult, summarize
from .stacked import get_lr, train_stack

__all__ = ["LOSSES", "PRESETS", "SCHEDULES", "FDSConfig", "HeadConfig", "LDSConfig", "OptimConfig",
           "TrainConfig", "TrainResult", "get_lr", "predict", "summarize", "train_head"]


@torch.no_grad()
def predict(head: ResidualMLPHead, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x.new_zeros(0)


def train_head(data: CacheData, cfg: TrainConfig, *, progress: bool = False, log_every: int = LOG_EVERY
               ) -> TrainResult:
    """Train one head on ``data`` (a loaded cache) and return the head of the
    best validation-MAE epoch, its predictions for every cached image and
    its metrics.  Raises :class:`TrainingDiverged` on a non-finite loss.
    Without ``progress``: a log line every ``log_every`` epochs."""
    (result,) = train_stack(data, [cfg], progress=progress, log_every=log_every)
    if isinstance(result, TrainingDiverged):
        raise result
    return result

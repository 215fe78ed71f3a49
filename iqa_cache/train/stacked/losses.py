"""The per-example losses of a stack."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_terms(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Unweighted elementwise loss (l1, mse or huber with beta 1)."""
    if kind == "l1":
        return (pred - target).abs()
    if kind == "mse":
        return (pred - target) ** 2
    return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)

"""The residual MLP regression head (paper Fig. 2).

    x (D) → Linear(D, H) → act → [ResidualBlock(H)] × n_blocks → FDS → Dropout → Linear(H, 1)

A residual block is ``act(h + Linear(act(Linear(h))))``.  FDS (when
enabled) recalibrates the final hidden features during training only;
dropout (when ``dropout > 0``) acts on the calibrated features, as in the
DIR reference (its ``encoding → FDS.smooth → dropout → linear``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .config import ACTIVATION_NAMES, FDSConfig, HeadConfig
from .imbalance import FDS

_ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
ACTIVATIONS = {name: _ACTIVATION_MODULES[name] for name in ACTIVATION_NAMES}  # the names: config.py


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.act = ACTIVATIONS[activation]()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h + self.fc2(self.act(self.fc1(h))))


class ResidualMLPHead(nn.Module):
    def __init__(self, cfg: HeadConfig, fds: FDSConfig | None = None, n_bins: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.in_dim, cfg.hidden_dim)
        self.act = ACTIVATIONS[cfg.activation]()
        self.blocks = nn.ModuleList(ResidualBlock(cfg.hidden_dim, cfg.activation) for _ in range(cfg.n_blocks))
        if fds is not None and fds.enabled:
            if n_bins is None:
                raise ConfigError("FDS needs the number of label bins")
            self.fds: FDS | None = FDS(cfg.hidden_dim, n_bins, fds)
        else:
            self.fds = None
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden features that FDS calibrates (before the final layer)."""
        h = self.act(self.proj(x))
        for block in self.blocks:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor, bins: torch.Tensor | None = None, epoch: int | None = None) -> torch.Tensor:
        z = self.features(x)
        if self.fds is not None:
            z = self.fds(z, bins, epoch)
        return self.fc(self.drop(z)).squeeze(-1)

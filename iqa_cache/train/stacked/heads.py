"""K residual MLP heads of one shape as stacked tensors, run by batched
matrix products."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import HeadConfig, TrainConfig
from ..head import ACTIVATIONS, ResidualMLPHead

# Elements of one activation tensor [K, rows, H] in evaluation passes: bounds
# memory when many configurations evaluate all cached images at once.
EVAL_BUDGET = 1 << 25


def _linear_names(head_cfg: HeadConfig) -> list[str]:
    names = ["proj"]
    for j in range(head_cfg.n_blocks):
        names += [f"blocks.{j}.fc1", f"blocks.{j}.fc2"]
    return names + ["fc"]


class HeadStack:
    """K residual MLP heads of one shape as stacked tensors: for each linear
    layer (in head order) a weight ``[K, in, out]`` and a bias ``[K, 1, out]``."""

    def __init__(self, head_cfg: HeadConfig, params: list[torch.Tensor]):
        self.cfg = head_cfg
        self.params = params
        self.act = ACTIVATIONS[head_cfg.activation]()
        self.names = _linear_names(head_cfg)

    @property
    def k(self) -> int:
        return int(self.params[0].shape[0])

    @classmethod
    def from_heads(cls, heads: Sequence[ResidualMLPHead], device: str) -> "HeadStack":
        cfg = heads[0].cfg
        params = []
        for name in _linear_names(cfg):
            mods = [h.get_submodule(name) for h in heads]
            params.append(torch.stack([m.weight.detach().t() for m in mods]).to(device).contiguous())
            params.append(torch.stack([m.bias.detach().view(1, -1) for m in mods]).to(device).contiguous())
        for p in params:
            p.requires_grad_(True)
        return cls(cfg, params)

    def state_dict_of(self, k: int, params: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Configuration ``k``'s weights as ``ResidualMLPHead`` names them."""
        params = self.params if params is None else params
        out = {}
        for i, name in enumerate(self.names):
            out[f"{name}.weight"] = params[2 * i][k].detach().t().cpu().contiguous()
            out[f"{name}.bias"] = params[2 * i + 1][k].detach().reshape(-1).cpu().clone()
        return out

    def features(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden features ``[K, B, H]`` (what FDS calibrates) for
        per-configuration inputs ``[K, B, D]`` or shared inputs ``[B, D]``."""
        p = self.params if params is None else params
        k = int(p[0].shape[0])
        if x.dim() == 2:
            x = x.expand(k, *x.shape)
        h = self.act(torch.baddbmm(p[1], x, p[0]))
        for j in range(self.cfg.n_blocks):
            w1, b1, w2, b2 = p[2 + 4 * j: 6 + 4 * j]
            h = self.act(h + torch.baddbmm(b2, self.act(torch.baddbmm(b1, h, w1)), w2))
        return h

    def output(self, z: torch.Tensor, params: Sequence[torch.Tensor] | None = None, *,
               train: bool = False) -> torch.Tensor:
        """The final layer on (calibrated) features ``z`` [K, B, H], after
        dropout when ``train`` (as ``ResidualMLPHead``: FDS, dropout, FC)."""
        p = self.params if params is None else params
        if train and self.cfg.dropout > 0:
            z = F.dropout(z, self.cfg.dropout, training=True)
        return torch.baddbmm(p[-1], z, p[-2]).squeeze(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Predictions ``[K, N]`` for shared inputs ``[N, D]`` (FDS is the
        identity at evaluation), in chunks that bound memory."""
        p = self.params if params is None else params
        k = int(p[0].shape[0])
        chunk = max(1, EVAL_BUDGET // (k * max(self.cfg.hidden_dim, self.cfg.in_dim)))
        if len(x) == 0:
            return x.new_zeros(k, 0)
        return torch.cat([self.output(self.features(x[i:i + chunk], p), p) for i in range(0, len(x), chunk)], 1)


def init_stack(cfgs: Sequence[TrainConfig], head_cfg: HeadConfig, y_mean: float | Sequence[float],
               device: str) -> HeadStack:
    """Each configuration's head initialised for its seed, its output bias at
    the mean training label (one, or each configuration's own), stacked."""
    heads = []
    means = [float(y_mean)] * len(cfgs) if isinstance(y_mean, (int, float)) else list(y_mean)
    for c, mean in zip(cfgs, means):
        torch.manual_seed(c.seed)  # the same draws as the plain loop: init, then dropout
        h = ResidualMLPHead(head_cfg)
        with torch.no_grad():
            h.fc.bias.fill_(mean)
        heads.append(h)
    return HeadStack.from_heads(heads, device)

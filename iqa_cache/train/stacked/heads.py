"""K residual MLP heads of one shape as stacked tensors, run by batched
matrix products, in float32 or with the products under autocast."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import HeadConfig, TrainConfig
from ..head import ACTIVATIONS, ResidualMLPHead

# Elements of one activation tensor [K, rows, H] in evaluation passes: bounds
# memory when many configurations evaluate all cached images at once.
EVAL_BUDGET = 1 << 25
# --precision (resolved: iqa_cache.device.resolve_precision) -> the dtype of the autocast products
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _linear_names(head_cfg: HeadConfig) -> list[str]:
    names = ["proj"]
    for j in range(head_cfg.n_blocks):
        names += [f"blocks.{j}.fc1", f"blocks.{j}.fc2"]
    return names + ["fc"]


class HeadStack:
    """K residual MLP heads of one shape as stacked tensors: for each linear
    layer (in head order) a weight and a bias ``[K, 1, out]``; the weights
    ``[K, in, out]``, except the first layer's, ``[K, H, in]`` (as
    ``nn.Linear`` stores it), so that its K weights are one ``[K*H, in]``
    matrix for the shared GEMM.

    ``dtype``: the matrix products run under autocast to it (None: float32);
    the weights, what :meth:`features` and :meth:`output` return, and so
    the losses, optimiser and FDS statistics stay float32, and so does the
    final layer (:meth:`output`): its product is cheap and a lower-precision
    output would round the predictions in proportion to the labels' size.  ``shared_gemm``:
    shared inputs ``[B, in]`` go through the first layer as one product
    ``[B, in] @ [in, K*H]`` instead of K (False: the batched product, as for
    per-configuration inputs)."""

    def __init__(self, head_cfg: HeadConfig, params: list[torch.Tensor], dtype: torch.dtype | None = None,
                 shared_gemm: bool = True):
        self.cfg = head_cfg
        self.params = params
        self.act = ACTIVATIONS[head_cfg.activation]()
        self.names = _linear_names(head_cfg)
        self.dtype = dtype
        self.shared_gemm = shared_gemm

    def autocast(self) -> contextlib.AbstractContextManager:
        """The products' precision: autocast to :attr:`dtype` on the
        parameters' device, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.params[0].device.type, dtype=self.dtype)

    @property
    def k(self) -> int:
        return int(self.params[0].shape[0])

    @classmethod
    def from_heads(cls, heads: Sequence[ResidualMLPHead], device: str, **kw) -> "HeadStack":
        """The heads' weights stacked on ``device``; ``kw``: ``dtype``,
        ``shared_gemm``."""
        cfg = heads[0].cfg
        params = []
        for i, name in enumerate(_linear_names(cfg)):
            mods = [h.get_submodule(name) for h in heads]
            params.append(torch.stack([m.weight.detach() if i == 0 else m.weight.detach().t() for m in mods])
                          .to(device).contiguous())
            params.append(torch.stack([m.bias.detach().view(1, -1) for m in mods]).to(device).contiguous())
        for p in params:
            p.requires_grad_(True)
        return cls(cfg, params, **kw)

    def state_dict_of(self, k: int, params: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Configuration ``k``'s weights as ``ResidualMLPHead`` names them."""
        params = self.params if params is None else params
        out = {}
        for i, name in enumerate(self.names):
            w = params[2 * i][k].detach()
            out[f"{name}.weight"] = (w if i == 0 else w.t()).cpu().contiguous()
            out[f"{name}.bias"] = params[2 * i + 1][k].detach().reshape(-1).cpu().clone()
        return out

    def features(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden features ``[K, B, H]`` (what FDS calibrates) for
        per-configuration inputs ``[K, B, D]`` or shared inputs ``[B, D]``."""
        p = self.params if params is None else params
        with self.autocast():
            h = self.act(self.first_layer(x, p))
            for j in range(self.cfg.n_blocks):
                w1, b1, w2, b2 = p[2 + 4 * j: 6 + 4 * j]
                h = self.act(h + torch.baddbmm(b2, self.act(torch.baddbmm(b1, h, w1)), w2))
        return h.float()

    def first_layer(self, x: torch.Tensor, p: Sequence[torch.Tensor]) -> torch.Tensor:
        """The first linear layer ``[K, B, H]``: shared inputs ``[B, in]``
        (with :attr:`shared_gemm`) as one product with the ``[K*H, in]``
        weights and a view of the result; else K batched products."""
        k, hidden, d = p[0].shape
        if x.dim() == 2 and self.shared_gemm:
            out = torch.addmm(p[1].reshape(1, k * hidden), x, p[0].reshape(k * hidden, d).t())
            return out.view(len(x), k, hidden).transpose(0, 1)
        if x.dim() == 2:
            x = x.expand(k, *x.shape)
        return torch.baddbmm(p[1], x, p[0].transpose(1, 2))

    def output(self, z: torch.Tensor, params: Sequence[torch.Tensor] | None = None, *,
               train: bool = False) -> torch.Tensor:
        """The final layer on (calibrated) features ``z`` [K, B, H], after
        dropout when ``train`` (as ``ResidualMLPHead``: FDS, dropout, FC)."""
        p = self.params if params is None else params
        if train and self.cfg.dropout > 0:
            z = F.dropout(z, self.cfg.dropout, training=True)
        # float32 even under autocast: a bfloat16 output has 8 significant bits, so a
        # prediction near 90 would be rounded to a step of 0.5 (an error that grows
        # with the label scale); this product is H multiply-adds a row, under 0.1 % of the head's
        return torch.baddbmm(p[-1], z.float(), p[-2]).squeeze(-1)

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
               device: str, dtype: torch.dtype | None = None) -> HeadStack:
    """Each configuration's head initialised for its seed, its output bias at
    the mean training label (one, or each configuration's own), stacked;
    ``dtype``: see :class:`HeadStack`."""
    heads = []
    means = [float(y_mean)] * len(cfgs) if isinstance(y_mean, (int, float)) else list(y_mean)
    for c, mean in zip(cfgs, means):
        torch.manual_seed(c.seed)  # the same draws as the plain loop: init, then dropout
        h = ResidualMLPHead(head_cfg)
        with torch.no_grad():
            h.fc.bias.fill_(mean)
        heads.append(h)
    return HeadStack.from_heads(heads, device, dtype=dtype)

"""OpenCLIP's evaluation preprocessing, redone on tensors (CPU or GPU).

:func:`iqa_cache.embed.encoder.build_transform` is OpenCLIP's own transform: Pillow
resizes, then ``ToTensor`` and ``Normalize``.  :class:`TensorPreprocess`
computes the same thing from decoded ``uint8`` tensors, batched, on any
device:

* the same geometry: ``squash`` resizes to ``S x S``; ``shortest`` resizes
  the shorter side to ``S`` (the longer to ``int(S * long / short)``, as
  torchvision does) and center-crops with torchvision's rounding;
* Pillow's resampling: Pillow resizes in two passes with an antialiased
  bicubic (or bilinear) filter and rounds to 8 bits after each pass; so does
  this module (``antialias=True``, rounding after each pass), in the same
  order as the installed Pillow (:func:`vertical_first`).  About 99.9 % of
  pixels come out identical to Pillow's and the rest differ by one level;
* the same arithmetic: ``x / 255``, then ``(x - mean) / std`` in float32.

The EXIF orientation is applied to the decoded tensor exactly as
``ImageOps.exif_transpose`` does (:func:`orient`).
"""
from __future__ import annotations

import functools
import logging
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

# Largest group of images resized in one call, in input elements (C*H*W*B):
# bounds the float32 temporaries at about 512 MB whatever the image sizes.
MAX_GROUP_ELEMENTS = 1 << 27


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to a ``(C, H, W)`` tensor, as
    Pillow's ``ImageOps.exif_transpose`` does."""
    if orientation == 2:  # mirror horizontally
        return x.flip(-1)
    if orientation == 3:  # rotate 180
        return x.flip(-2, -1)
    if orientation == 4:  # mirror vertically
        return x.flip(-2)
    if orientation == 5:  # transpose (main diagonal)
        return x.transpose(-2, -1)
    if orientation == 6:  # rotate 90 clockwise to display
        return x.transpose(-2, -1).flip(-1)
    if orientation == 7:  # transverse (anti-diagonal)
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # rotate 90 counter-clockwise to display
        return x.transpose(-2, -1).flip(-2)
    return x


def resized_size(height: int, width: int, pre: PreprocessConfig) -> tuple[int, int]:
    """(height, width) after the resize step of OpenCLIP's transform."""
    s = pre.image_size
    if pre.resize_mode == "squash":
        return s, s
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(s * long / short)
    return (new_long, s) if width <= height else (s, new_long)


def crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's center crop of ``size`` from an image of
    ``height`` x ``width`` (both at least ``size``)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


@functools.lru_cache(maxsize=1)
def pillow_may_resize_vertically_first() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the
    height shrinks much more than the width (Pillow 13 does, older Pillows
    always start with the horizontal pass).  Found out once, on a 40x120
    image that the newer rule resizes vertically first."""
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 40, 3), dtype=np.uint8))
    full = np.asarray(img.resize((20, 20), Image.Resampling.BICUBIC))
    v_then_h = np.asarray(img.resize((40, 20), Image.Resampling.BICUBIC).resize((20, 20), Image.Resampling.BICUBIC))
    h_then_v = np.asarray(img.resize((20, 120), Image.Resampling.BICUBIC).resize((20, 20), Image.Resampling.BICUBIC))
    return bool(np.array_equal(full, v_then_h) and not np.array_equal(full, h_then_v))


def vertical_first(height: int, width: int, target_height: int, target_width: int) -> bool:
    """The order of Pillow's two resampling passes for this geometry: since
    Pillow 13, vertical first when the height shrinks by more than twice as
    many pixels as the width does (checked against Pillow on ~6,000
    geometries); horizontal first otherwise and in older Pillows."""
    return (pillow_may_resize_vertically_first() and height > target_height
            and height - target_height > 2 * (width - target_width))


class TensorPreprocess:
    """Decoded ``uint8`` images (any sizes, on ``device``) → the encoder's
    normalised float32 input ``(B, 3, S, S)``."""

    def __init__(self, pre: PreprocessConfig, device: str | torch.device = "cpu"):
        self.pre = pre
        self.device = torch.device(device)
        self.mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
        self.mean = torch.tensor(pre.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _resample(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Pillow's two-pass resize of a float batch holding 0..255 values."""
        h, w = x.shape[-2:]
        th, tw = size
        passes = [(h, tw), (th, tw)]
        if tw != w and th != h and vertical_first(h, w, th, tw):
            passes = [(th, w), (th, tw)]
        for shape in passes:
            if tuple(x.shape[-2:]) != shape:
                x = F.interpolate(x, size=shape, mode=self.mode, antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)
        return x

    def _group(self, images: list[torch.Tensor]) -> torch.Tensor:
        h, w = images[0].shape[-2:]
        th, tw = resized_size(h, w, self.pre)
        x = torch.stack(images).float()
        x = self._resample(x, (th, tw))
        s = self.pre.image_size
        if (th, tw) != (s, s):
            top, left = crop_box(th, tw, s)
            x = x[..., top:top + s, left:left + s]
        return x.div_(255.0).sub_(self.mean).div_(self.std)  # ToTensor, then Normalize

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Preprocess ``uint8`` ``(3, H, W)`` tensors; images of one size are
        resized together."""
        s = self.pre.image_size
        out = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=self.device)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3 or im.dtype != torch.uint8:
                raise ValueError(f"image {i}: expected a uint8 (3, H, W) tensor, got {im.dtype} {tuple(im.shape)}")
            groups[tuple(im.shape[-2:])].append(i)
        # images decoded on the CPU (progressive/grayscale JPEGs) join those nvJPEG decoded on the GPU
        images = [im if im.device == self.device else im.to(self.device, non_blocking=True) for im in images]
        for (h, w), idx in groups.items():
            per = max(1, MAX_GROUP_ELEMENTS // (3 * h * w))
            for k in range(0, len(idx), per):
                part = idx[k:k + per]
                out[torch.as_tensor(part, device=self.device)] = self._group([images[i] for i in part])
        return out

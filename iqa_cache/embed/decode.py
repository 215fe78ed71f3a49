"""JPEG decoding for the tensor pipeline: TorchCodec where installed, else
torchvision.

torchvision 0.29 deprecates its image decoders in favour of TorchCodec
(``torchcodec.decoders.decode_jpeg``: libjpeg-turbo on the CPU, batched
nvJPEG on a GPU, the same call shape).  ``auto`` picks TorchCodec when it
imports and falls back to torchvision otherwise; the torchvision decoder's
deprecation warning is silenced only when it is chosen on purpose (the
fallback, or ``--decoder torchvision``).  Both decoders raise
``RuntimeError`` on data they cannot decode, which sends the image to the
Pillow reference path.
"""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Callable

from ..errors import ConfigError

log = logging.getLogger(__name__)

DECODERS = ("auto", "torchcodec", "torchvision")
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


@functools.lru_cache(maxsize=1)
def torchcodec_available() -> str:
    """'' when TorchCodec's JPEG decoder imports, else the reason it does not."""
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a missing shared library (OSError/RuntimeError)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return ""


def resolve_decoder(name: str = "auto") -> str:
    """``torchcodec`` or ``torchvision``: the decoder ``name`` stands for here."""
    if name not in DECODERS:
        raise ConfigError(f"--decoder '{name}' is not one of {', '.join(DECODERS)}")
    if name == "auto":
        return "torchcodec" if not torchcodec_available() else "torchvision"
    if name == "torchcodec" and torchcodec_available():
        raise ConfigError(f"--decoder torchcodec: TorchCodec cannot be used here ({torchcodec_available()}); "
                          "install it (pip install 'iqa-cache[torchcodec]') or use --decoder torchvision")
    return name


# TorchCodec's CPU decoder applies the EXIF orientation itself (torchvision's does not); whether its nvJPEG
# path does is not checked here, so the tensor pipeline decodes EXIF-rotated JPEGs on the CPU with it.
ORIENTS = {"torchcodec": True, "torchvision": False}


def jpeg_decoder(name: str = "auto") -> tuple[str, Callable]:
    """(resolved name, ``decode(data, device="cpu")``) where ``data`` is a
    1-D uint8 tensor or a list of them and the result is RGB uint8 CHW
    (oriented by the EXIF tag when ``ORIENTS[name]``)."""
    resolved = resolve_decoder(name)
    if resolved == "torchcodec":
        from torchcodec.decoders import decode_jpeg as tc_decode

        def decode(data, device="cpu"):
            return tc_decode(data, mode="RGB", device=device)

        return resolved, decode
    if name == "auto":
        log.info("TorchCodec is not installed (%s): decoding JPEGs with torchvision's deprecated decoder",
                 torchcodec_available())
    # deliberately the deprecated decoder: its warning is known and not the user's concern
    warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode

    def decode(data, device="cpu"):
        return tv_decode(data, mode=ImageReadMode.RGB, device=device)

    return resolved, decode

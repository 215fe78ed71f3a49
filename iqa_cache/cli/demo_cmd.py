"""`iqa demo`: the whole pipeline on a generated dataset, in minutes on a CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iqa_cache.device import Device
from iqa_cache.settings import DemoConfig

from .app import app
from .common import Command, echo_out, handle_errors


@app.command("demo", cls=Command)
@handle_errors
def demo_command(
    offline: Annotated[bool, typer.Option(help="Do not try to download CLIP weights; use the packaged ImageNet "
                                               "EfficientNet-Lite0 (real features, not CLIP).")] = False,
    n_images: Annotated[int, typer.Option(min=50, max=100000, help="Synthetic train + val images (KonIQ-like "
                                                                   "labels).")] = DemoConfig.n_images,
    test_per_range: Annotated[int, typer.Option(min=1, max=10000, help="Test images per label range (the test "
                                                                       "split is balanced).")
                              ] = DemoConfig.test_per_range,
    workdir: Annotated[Path, typer.Option(help="Where the demo dataset is generated.")] = DemoConfig.workdir,
    runs_dir: Annotated[Path, typer.Option(help="Where the demo runs (variant_sSEED) are written.")
                        ] = DemoConfig.runs_dir,
    seeds: Annotated[int, typer.Option(min=1, max=100, help="Seeds per variant, all trained in one pass.")
                     ] = DemoConfig.seeds,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of each head (constant learning rate; the "
                                                    "best validation epoch is kept).")] = DemoConfig.epochs,
    device: Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")] = Device(DemoConfig.device),
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr.")] = True,
) -> None:
    """Generate a KonIQ-like dataset, embed it, train vanilla / LDS / LDS+FDS / BMC heads (several seeds), compare.

    Needs no data and, with --offline, no network.  The images are real
    JPEGs in KonIQ-10k's layout whose labels come from known distortions
    (blur, noise, JPEG, contrast); train and val follow KonIQ's skewed label
    distribution, the test split is balanced over the label ranges.  The
    table: mean ± std over the seeds; under it, each variant against vanilla
    on the seed-averaged predictions (paired bootstrap) with the number of
    seeds that agree in sign; last, what this run shows: each difference
    whose interval excludes 0.
    """
    from iqa_cache.demo import demo_text, run_demo

    cfg = DemoConfig(workdir=workdir, runs_dir=runs_dir, n_images=n_images, test_per_range=test_per_range,
                     offline=offline, epochs=epochs, device=device.value, seeds=seeds)
    result = run_demo(cfg, progress=progress)
    echo_out(demo_text(result))
    s = result.seconds
    typer.echo(f"demo: generated in {s['generate']:.1f} s, embedded in {s['embed']:.1f} s, trained "
               f"{result.n_heads} heads in {s['train']:.1f} s; runs in {runs_dir}/; compare with "
               f"`iqa report {runs_dir}/*`", err=True)

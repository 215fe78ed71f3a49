"""`iqa predict`: score new images with a trained run."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from iqa_cache.device import Device
from iqa_cache.settings import PredictConfig

from .app import app
from .common import EXIT_WITH_FAILURES, Command, echo_out, handle_errors


@app.command("predict", cls=Command)
@handle_errors
def predict_command(
    images: Annotated[Optional[List[Path]], typer.Argument(help="Image files to score.", show_default=False,
                                                           metavar="IMAGE")] = None,
    run: Annotated[Path, typer.Option("--run", "--run-dir", help="Run directory written by `iqa train-head` "
                                                                 "(under torchrun write --run-dir: torchrun "
                                                                 "takes --run for its --run-path).",
                                      metavar="DIR")] = ...,
    dir: Annotated[Optional[Path], typer.Option("--dir", help="Score every image file in this folder.")] = None,
    recursive: Annotated[bool, typer.Option(help="With --dir: also look in subfolders.")] = False,
    shards: Annotated[Optional[str], typer.Option(help="Score every image of these webdataset tar shards, "
                                                       "e.g. 'shards/{00000..00099}.tar'.", metavar="PATTERN")
                      ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write path,score here: Parquet if it ends in .parquet, "
                                                     "else CSV [default: CSV on stdout]; never one of the images "
                                                     "or a file in a run directory.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    distributed: Annotated[Optional[bool], typer.Option(
        "--distributed/--no-distributed",
        help="Split the images over torchrun ranks; rank 0 writes the scores (default: on when launched by "
             "torchrun).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        help="Checkpoint file to use instead of the one recorded in the run's cache (e.g. a moved file); its "
             "SHA-256 must equal the recorded one.")] = None,
    device: Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")] = Device(PredictConfig.device),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = PredictConfig.batch_size,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image-decoding processes [default: none (the "
                                                               "main process) for under 64 images, else a "
                                                               "few].")] = None,
    max_pixels: Annotated[Optional[int], typer.Option(min=1, help="Refuse images with more pixels.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Score images with a trained head, best (highest score) first.

    The images are embedded with exactly the encoder, weights and
    preprocessing recorded in the run's cache; weights whose SHA-256 differs
    are refused.  Images that cannot be read are named on stderr and skipped
    (exit code 3 when some were skipped).
    """
    from iqa_cache.embed import distributed as dist
    from iqa_cache.predict import (
        check_scores_out,
        check_scores_path,
        find_images,
        predict_images,
        score_distributed,
        score_images,
        scores_csv,
        write_scores,
    )

    if sum([bool(images), dir is not None, shards is not None]) != 1:
        raise typer.BadParameter("pass image files, --dir or --shards (exactly one of them)",
                                 param_hint="IMAGES / --dir / --shards")
    from iqa_cache.train.runs import refuse_ablation_folder

    refuse_ablation_folder(run)  # before any image is listed
    if out is not None:
        check_scores_path(out)
    reader = starts = None
    if shards is not None:
        from iqa_cache.sources.wds import load_webdataset

        m = load_webdataset(shards, require_labels=False)
        paths, reader, starts = list(m.path), m.reader, m.reader.shard_starts
    else:
        paths = list(images) if images else find_images(dir, recursive=recursive)
        paths = list(dict.fromkeys(Path(p) for p in paths))
    if out is not None:
        check_scores_out(out, run_dir=run, images=paths if shards is None else [], overwrite=overwrite,
                         pretrained=pretrained)
    cfg = PredictConfig(pretrained=pretrained, device=device.value, batch_size=batch_size, workers=workers,
                        max_pixels=max_pixels)
    env = dist.from_env() if distributed is not False else None
    if distributed and env is None:
        env = dist.require_env()
    if env is not None:
        res = score_distributed(run, paths, cfg, reader=reader, shard_starts=starts, env=env, progress=progress)
        if res is None:
            return  # rank 0 writes and reports
    elif reader is not None:
        res = score_images(run, paths, cfg, reader=reader, progress=progress)
    else:
        res = predict_images(run, paths, cfg, progress=progress)
    best = res.scores.iloc[0]
    if out is None:
        echo_out(scores_csv(res.scores))
    else:
        write_scores(res.scores, out)
        typer.echo(f"wrote {len(res.scores)} scores to {out} (best: {best['path']} {best['score']:.4f})", err=True)
    typer.echo(f"scored {len(res.scores)} of {len(paths)} images in {res.seconds:.1f} s on {res.device}", err=True)
    if res.failures:
        typer.echo(f"{len(res.failures)} image(s) could not be read and were skipped", err=True)
        raise typer.Exit(EXIT_WITH_FAILURES)
